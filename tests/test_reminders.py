"""Reminders (issue 12 §5): the next update of an open incident is due; a revision must not wait forever for review.
Time is passed in (``now``), never slept."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from incidents import access, reminders, workflow
from incidents.models import (
    AuditEvent,
    DraftKind,
    Notification,
    ReviewEscalation,
    UpdateReminder,
)

from .factories import IncidentFactory

pytestmark = pytest.mark.django_db

UPDATE = {"title": "", "severity": "", "description": "Still looking into it.", "stage": "identified"}
OPEN = {"title": "API errors", "severity": "major", "description": "Elevated 5xx on /v1.", "stage": "investigating"}


@pytest.fixture
def incident(api_service):
    return IncidentFactory(service=api_service, remote_id="inc-1", title="API errors")


def approve_an_update(incident, author, reviewer):
    draft = workflow.create(
        user=author, service=incident.service, kind=DraftKind.UPDATE, incident=incident, fields=UPDATE
    )
    revision = workflow.submit(draft_id=draft.pk, user=author)
    workflow.approve(draft_id=draft.pk, revision_id=revision.pk, reviewer=reviewer, sha256=revision.sha256)
    incident.refresh_from_db()
    return draft


def emails(kind: str) -> list[Notification]:
    return list(Notification.objects.filter(kind=kind).order_by("pk"))


# --- Next update due --------------------------------------------------------------------------------------------
def test_an_approved_update_sets_the_next_update_due_the_teams_interval_ahead(
    incident, responder, approver, platform, no_broker
):
    platform.update_interval_minutes = 20
    platform.save()
    before = timezone.now()
    approve_an_update(incident, responder, approver)
    assert before + timedelta(minutes=20) <= incident.next_update_due_at <= timezone.now() + timedelta(minutes=20)


def test_an_overdue_update_emails_authors_and_approvers_once_per_due_time(
    incident, responder, approver, approver2, no_broker
):
    approve_an_update(incident, responder, approver)
    due = incident.next_update_due_at
    assert reminders.run(now=due - timedelta(seconds=1)) == {"overdue_updates": 0, "escalated_reviews": 0}
    assert not emails("update_overdue")

    assert reminders.run(now=due + timedelta(seconds=1))["overdue_updates"] == 1
    (email,) = emails("update_overdue")
    assert email.recipients == ["approver2@example.com", "approver@example.com", "responder@example.com"]
    assert "API errors" in email.subject and reverse("incidents:update_new", kwargs={"pk": incident.pk}) in email.body
    event = AuditEvent.objects.filter(action="incident.update_overdue").get()
    assert event.target_id == str(incident.pk) and event.actor_id is None
    # Later checks of the same due time tell nobody again.
    assert reminders.run(now=due + timedelta(minutes=5))["overdue_updates"] == 0
    assert len(emails("update_overdue")) == 1

    # A new approved update sets a new due time; when that one passes, they hear again.
    approve_an_update(incident, responder, approver)
    assert incident.next_update_due_at > due
    assert reminders.run(now=incident.next_update_due_at + timedelta(seconds=1))["overdue_updates"] == 1
    assert UpdateReminder.objects.filter(incident=incident).count() == 2


def test_an_incident_without_a_due_time_gets_one_from_its_last_activity(incident, approver, no_broker):
    assert incident.next_update_due_at is None
    reminders.run(now=incident.last_activity_at + timedelta(minutes=29))
    incident.refresh_from_db()
    assert incident.next_update_due_at == incident.last_activity_at + timedelta(minutes=30)
    assert not emails("update_overdue")
    assert reminders.run(now=incident.last_activity_at + timedelta(minutes=31))["overdue_updates"] == 1


def test_a_resolved_incident_is_never_overdue(incident, approver, no_broker):
    incident.resolved = True
    incident.next_update_due_at = timezone.now() - timedelta(hours=1)
    incident.save()
    assert reminders.run()["overdue_updates"] == 0
    assert not reminders.is_overdue(incident)


def test_a_responder_moves_the_next_update_and_it_is_audited(incident, responder, no_broker):
    now = timezone.now()
    reminders.set_next_update_due(incident_id=incident.pk, user=responder, minutes=45, now=now)
    incident.refresh_from_db()
    assert incident.next_update_due_at == now + timedelta(minutes=45)
    event = AuditEvent.objects.order_by("-seq").first()
    assert event.action == "incident.next_update_due_set" and event.actor_id == responder.pk


def test_an_auditor_cannot_move_the_next_update(incident, auditor):
    with pytest.raises(access.RoleRequired):
        reminders.set_next_update_due(incident_id=incident.pk, user=auditor, minutes=45)


@pytest.mark.parametrize("minutes", [0, 24 * 60 + 1])
def test_the_next_update_stays_within_a_day(incident, responder, minutes):
    with pytest.raises(reminders.ReminderError, match="between 1 minute and 24 hours"):
        reminders.set_next_update_due(incident_id=incident.pk, user=responder, minutes=minutes)


def test_the_incident_page_and_dashboard_show_an_overdue_update(incident, responder, as_user, no_broker):
    incident.next_update_due_at = timezone.now() - timedelta(minutes=3)
    incident.save()
    client = as_user(responder)
    page = client.get(reverse("incidents:incident_detail", kwargs={"pk": incident.pk})).content.decode()
    assert 'id="overdue-flag"' in page
    dashboard = client.get(reverse("incidents:dashboard")).content.decode()
    assert 'id="banner-overdue"' in dashboard and "API errors" in dashboard


def test_the_form_on_the_incident_page_moves_the_next_update(incident, responder, as_user):
    response = as_user(responder).post(
        reverse("incidents:incident_next_update_due", kwargs={"pk": incident.pk}), {"minutes": "15"}
    )
    assert response.status_code == 302
    incident.refresh_from_db()
    assert incident.next_update_due_at > timezone.now() + timedelta(minutes=14)


# --- Escalation of a waiting review ------------------------------------------------------------------------------
@pytest.fixture
def waiting(responder, api_service, no_broker):
    draft = workflow.create(user=responder, service=api_service, kind=DraftKind.OPEN, fields=OPEN)
    return workflow.submit(draft_id=draft.pk, user=responder)


def test_a_revision_waiting_too_long_is_escalated_to_every_approver_once(waiting, approver, approver2):
    assert reminders.escalate_waiting_reviews(now=waiting.created_at + timedelta(minutes=9)) == 0
    assert reminders.escalate_waiting_reviews(now=waiting.created_at + timedelta(minutes=11)) == 1
    (email,) = emails("review_escalated")
    assert email.recipients == ["approver2@example.com", "approver@example.com"]
    assert "11 minutes" in email.body
    event = AuditEvent.objects.filter(action="review.escalated").get()
    assert event.target_id == str(waiting.draft_id)
    assert reminders.escalate_waiting_reviews(now=waiting.created_at + timedelta(minutes=30)) == 0
    assert ReviewEscalation.objects.count() == 1


def test_the_team_setting_decides_how_long_a_review_may_wait(waiting, approver, platform):
    platform.review_escalation_minutes = 3
    platform.save()
    assert reminders.escalate_waiting_reviews(now=waiting.created_at + timedelta(minutes=4)) == 1


def test_a_withdrawn_or_decided_revision_is_not_escalated(waiting, responder, approver):
    workflow.withdraw(draft_id=waiting.draft_id, user=responder)
    assert reminders.escalate_waiting_reviews(now=waiting.created_at + timedelta(hours=1)) == 0


def test_a_resubmitted_draft_is_escalated_for_its_new_revision(waiting, responder, approver):
    reminders.escalate_waiting_reviews(now=waiting.created_at + timedelta(minutes=11))
    workflow.withdraw(draft_id=waiting.draft_id, user=responder)
    second = workflow.submit(draft_id=waiting.draft_id, user=responder)
    assert reminders.escalate_waiting_reviews(now=second.created_at + timedelta(minutes=11)) == 1
    assert set(ReviewEscalation.objects.values_list("revision", flat=True)) == {waiting.pk, second.pk}


# --- Beat ----------------------------------------------------------------------------------------------------------
def test_beat_schedules_the_reminder_check():
    from isdown_admin.celery import app

    entry = settings.CELERY_BEAT_SCHEDULE["check-reminders"]
    assert entry["task"] == "incidents.tasks.check_reminders"
    assert entry["schedule"] == settings.REMINDER_INTERVAL
    app.loader.import_default_modules()
    assert "incidents.tasks.check_reminders" in app.tasks
