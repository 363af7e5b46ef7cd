"""The only way work reaches the broker. A leaf: it names tasks instead of importing them, so workflow.py,
publishing.py, notifications.py and tasks.py all call it without an import cycle.

Redis holds messages, never state: every message here stands for a row in Postgres that is due anyway. A
message that never reaches the broker (Redis down) is logged and dropped; the beat sweepers find the row
and enqueue it again, so a lost message costs time, never an effect. Call after commit only (``*_on_commit``).
"""

from __future__ import annotations

import logging

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import KombuError, OperationalError

from .models import Publication

logger = logging.getLogger(__name__)

PUBLISH_TASK = "incidents.tasks.publish"
DELIVER_TASK = "incidents.tasks.deliver_notification"
AUDIT_EXPORT_TASK = "incidents.tasks.build_audit_export"
AUDIT_VERIFY_TASK = "incidents.tasks.verify_audit_log"
# A broker that is down must not hold a web request for long: one quick retry, then the sweeper's turn.
RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


def _send(task: str, object_id: int, *, queue: str | None = None, countdown: float | None = None) -> bool:
    try:
        current_app.send_task(
            task, args=[object_id], queue=queue, countdown=countdown, retry=True, retry_policy=RETRY_POLICY
        )
    except (OperationalError, KombuError, OSError) as exc:
        logger.warning("could not enqueue %s(%s) (%s); a sweep will pick it up", task, object_id, exc)
        return False
    return True


def publication(publication_id: int, *, countdown: float | None = None) -> bool:
    """Ask a worker to take the next step of this publication (now, or in ``countdown`` seconds)."""
    # The sweeper leaves a recently enqueued publication alone for a while. Marked before the message leaves: a
    # worker that takes the message at once would otherwise find the row locked by this UPDATE, and its claim
    # skips locked rows (the publication then waited for a sweep).
    Publication.objects.filter(pk=publication_id).update(last_enqueued_at=timezone.now())
    sent = _send(PUBLISH_TASK, publication_id, queue=settings.CELERY_PUBLISH_QUEUE, countdown=countdown)
    if not sent:
        Publication.objects.filter(pk=publication_id).update(last_enqueued_at=None)  # the sweeper's turn, at once
    return sent


def publication_on_commit(publication_id: int) -> None:
    transaction.on_commit(lambda: publication(publication_id))


def notification(notification_id: int) -> bool:
    return _send(DELIVER_TASK, notification_id, queue=settings.CELERY_TASK_DEFAULT_QUEUE)


def notification_on_commit(notification_id: int) -> None:
    transaction.on_commit(lambda: notification(notification_id))


def audit_export(export_id: int) -> bool:
    return _send(AUDIT_EXPORT_TASK, export_id, queue=settings.CELERY_TASK_DEFAULT_QUEUE)


def audit_export_on_commit(export_id: int) -> None:
    transaction.on_commit(lambda: audit_export(export_id))


def audit_verification(verification_id: int) -> bool:
    return _send(AUDIT_VERIFY_TASK, verification_id, queue=settings.CELERY_TASK_DEFAULT_QUEUE)


def audit_verification_on_commit(verification_id: int) -> None:
    transaction.on_commit(lambda: audit_verification(verification_id))
