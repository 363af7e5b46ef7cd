"""Celery tasks: thin wrappers over publishing.py and sync.py. Arguments are ids only.

Every task is safe to run twice or late: publishing claims rows under ``skip_locked`` and re-checks state, so
a duplicate message (sweeper plus broker redelivery) costs a query, never a second request.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings
from kombu.exceptions import KombuError, OperationalError

from . import publishing, sync

logger = logging.getLogger(__name__)

# A broker that is down must not hold a web request for long: one quick retry, then the sweeper's turn.
ENQUEUE_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


def enqueue_publication(publication_id: int, *, countdown: float | None = None) -> None:
    """Send a ``publish`` message for this publication. A broker error is logged and swallowed: the row stays
    due in Postgres and the sweeper enqueues it again. Call after commit only."""
    try:
        publish.apply_async(
            args=[publication_id],
            queue=settings.CELERY_PUBLISH_QUEUE,
            countdown=countdown,
            retry=True,
            retry_policy=ENQUEUE_RETRY_POLICY,
        )
    except (OperationalError, KombuError, OSError) as exc:
        logger.warning("could not enqueue publication %s (%s); the sweeper will pick it up", publication_id, exc)
        return
    publishing.note_enqueued(publication_id=publication_id)


@shared_task(name="incidents.tasks.publish", bind=True, acks_late=True, ignore_result=True)
def publish(self, publication_id: int) -> str:
    step = publishing.process(publication_id=publication_id, task_id=self.request.id or "")
    if step.run_again_in is not None:
        enqueue_publication(publication_id, countdown=step.run_again_in)
    return step.state


@shared_task(name="incidents.tasks.sweep", bind=True, acks_late=True, ignore_result=True)
def sweep(self) -> int:
    ids = publishing.sweep(task_id=self.request.id or "")
    for publication_id in ids:
        enqueue_publication(publication_id)
    return len(ids)


@shared_task(name="incidents.tasks.sync_open_incidents", bind=True, acks_late=True, ignore_result=True)
def sync_open_incidents(self) -> dict[str, int]:
    report = sync.sync_open_incidents(task_id=self.request.id or "")
    return {"synced": len(report.synced), "drifted": len(report.drifted), "missing": len(report.missing)}


@shared_task(name="incidents.tasks.sync_incident", bind=True, acks_late=True, ignore_result=True)
def sync_incident(self, incident_id: int) -> dict[str, int]:
    report = sync.sync_incident(incident_id=incident_id, task_id=self.request.id or "")
    return {"synced": len(report.synced), "drifted": len(report.drifted), "missing": len(report.missing)}
