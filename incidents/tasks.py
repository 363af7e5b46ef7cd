"""Celery tasks: thin wrappers over publishing.py, sync.py, notifications.py and checkpoints.py. Arguments are ids
only; work is enqueued only through enqueue.py.

Every task is safe to run twice or late: publishing claims rows under ``skip_locked`` and re-checks state, so a
duplicate message (sweeper plus broker redelivery) costs a query, never a second request. A task that meets a
database error (the server refused a connection, a failover) is retried with backoff, never acknowledged and
forgotten; past its retries the row is still due in Postgres and the sweeper enqueues it again.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from celery.signals import worker_process_init, worker_process_shutdown, worker_shutdown
from django.db import DatabaseError, InterfaceError

from . import audit, checkpoints, enqueue, exports, isdown, notifications, publishing, reminders, sync, verifications

logger = logging.getLogger(__name__)

DATABASE_ERRORS = (DatabaseError, InterfaceError)
RETRY_ON_DATABASE_ERROR: dict[str, Any] = {
    "autoretry_for": DATABASE_ERRORS,
    "retry_backoff": 1,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 12,
}

# One client per worker process, made on its first task (after the fork: sockets are never shared between
# processes); its connections stay alive between publications, and it is closed when the process shuts down.
_client: isdown.IsDownClient | None = None


def worker_client() -> isdown.IsDownClient:
    global _client
    if _client is None:
        _client = publishing.make_client()
    return _client


@worker_process_init.connect
def _forget_inherited_client(**_: Any) -> None:
    # A client the parent made before forking holds the parent's sockets: the child makes its own.
    global _client
    _client = None


@worker_process_shutdown.connect
@worker_shutdown.connect  # the solo pool (no child processes) sends only this one
def _close_client(**_: Any) -> None:
    global _client
    if _client is not None:
        _client.close()
        _client = None


@shared_task(name="incidents.tasks.publish", bind=True, acks_late=True, ignore_result=True, **RETRY_ON_DATABASE_ERROR)
def publish(self: Task[[int], str], publication_id: int) -> str:
    step = publishing.process(publication_id=publication_id, task_id=self.request.id or "", client=worker_client())
    if step.run_again_in is not None:
        enqueue.publication(publication_id, countdown=step.run_again_in)
    return step.state


@shared_task(name="incidents.tasks.sweep", bind=True, acks_late=True, ignore_result=True, **RETRY_ON_DATABASE_ERROR)
def sweep(self: Task[[], int]) -> int:
    due = publishing.sweep(task_id=self.request.id or "")
    for publication_id, countdown in due:
        enqueue.publication(publication_id, countdown=countdown or None)
    return len(due)


@shared_task(
    name="incidents.tasks.deliver_notification",
    bind=True,
    acks_late=True,
    ignore_result=True,
    **RETRY_ON_DATABASE_ERROR,
)
def deliver_notification(self: Task[[int], str], notification_id: int) -> str:
    return notifications.deliver(notification_id)


@shared_task(
    name="incidents.tasks.deliver_notifications",
    bind=True,
    acks_late=True,
    ignore_result=True,
    **RETRY_ON_DATABASE_ERROR,
)
def deliver_notifications(self: Task[[], dict[str, int]]) -> dict[str, int]:
    return notifications.deliver_due()


@shared_task(name="incidents.tasks.sync_open_incidents", bind=True, acks_late=True, ignore_result=True)
def sync_open_incidents(self: Task[[], dict[str, int]]) -> dict[str, int]:
    report = sync.sync_open_incidents(task_id=self.request.id or "")
    return {"synced": len(report.synced), "drifted": len(report.drifted), "missing": len(report.missing)}


@shared_task(name="incidents.tasks.sync_incident", bind=True, acks_late=True, ignore_result=True)
def sync_incident(self: Task[[int], dict[str, int]], incident_id: int) -> dict[str, int]:
    report = sync.sync_incident(incident_id=incident_id, task_id=self.request.id or "")
    return {"synced": len(report.synced), "drifted": len(report.drifted), "missing": len(report.missing)}


@shared_task(
    name="incidents.tasks.check_reminders", bind=True, acks_late=True, ignore_result=True, **RETRY_ON_DATABASE_ERROR
)
def check_reminders(self: Task[[], dict[str, int]]) -> dict[str, int]:
    """Overdue updates and reviews waiting too long (reminders.py): each told once, so a redelivery is harmless."""
    return reminders.run()


@shared_task(
    name="incidents.tasks.checkpoint_audit_log",
    bind=True,
    acks_late=True,
    ignore_result=True,
    **RETRY_ON_DATABASE_ERROR,
)
def checkpoint_audit_log(self: Task[[], int | None]) -> int | None:
    """Beat's signed checkpoint of the chain's head (skipped when the head has not moved since the last one)."""
    checkpoint = checkpoints.sign_head("interval", only_if_moved=True)
    return checkpoint.pk if checkpoint is not None else None


@shared_task(
    name="incidents.tasks.seal_audit_log",
    bind=True,
    acks_late=True,
    ignore_result=True,
    # A run that finds nothing is cheap, and the next one comes within AUDIT_SEAL_INTERVAL: no retries.
    expires=10,
)
def seal_audit_log(self: Task[[], int]) -> int:
    """Beat's sealer run: chain the committed audit entries that no post-commit run sealed (audit.seal)."""
    return audit.seal()


@shared_task(
    name="incidents.tasks.build_audit_export",
    bind=True,
    acks_late=True,
    ignore_result=True,
    **RETRY_ON_DATABASE_ERROR,
)
def build_audit_export(self: Task[[int], str], export_id: int) -> str:
    """Write the file of an audit export too big to stream (exports.build)."""
    return exports.build(export_id)


@shared_task(
    name="incidents.tasks.verify_audit_log",
    bind=True,
    acks_late=True,
    ignore_result=True,
    **RETRY_ON_DATABASE_ERROR,
)
def verify_audit_log(self: Task[[int], str], verification_id: int) -> str:
    """Verify the audit chain against every checkpoint, with progress (verifications.run)."""
    return verifications.run(verification_id)
