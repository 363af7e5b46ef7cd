"""Reminders (issue 12 §5) run on a real worker: the beat task, sent through the broker, tells an overdue update."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from incidents.models import Notification, UpdateReminder
from isdown_admin.celery import app
from tests.factories import IncidentFactory
from tests.waiting import wait_for

pytestmark = pytest.mark.worker


def test_the_reminder_task_tells_an_overdue_update_on_a_real_worker(
    start_worker, publish_queue, service, approver_user
):
    incident = IncidentFactory(
        service=service, remote_id="inc-overdue", next_update_due_at=timezone.now() - timedelta(minutes=1)
    )
    start_worker()
    app.send_task("incidents.tasks.check_reminders", queue=publish_queue)
    wait_for(lambda: UpdateReminder.objects.filter(incident=incident).exists(), what="the overdue reminder")
    email = Notification.objects.get(kind="update_overdue", target_id=str(incident.pk))
    assert email.recipients == [approver_user.email]
