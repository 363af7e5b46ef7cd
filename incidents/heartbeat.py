"""Is anyone publishing? Workers and beat write a heartbeat to Postgres (``SystemMark``), and ``status`` says when
either has been silent too long: then nothing is published and nobody is emailed, so /healthz and the
dashboard say so.

- Each worker process (the main one, whatever the pool) runs a daemon thread that marks ``worker:<hostname>``
  every HEARTBEAT_INTERVAL seconds, so a worker busy with a long task still counts as alive.
- Beat's scheduler (``Scheduler`` below, set as CELERY_BEAT_SCHEDULER) marks ``beat`` from its own loop, so
  the mark proves that schedules are being sent, not merely that a process exists.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery.beat import PersistentScheduler
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from django.db.models import Max, Q
from django.utils import timezone

from .models import SystemMark

logger = logging.getLogger(__name__)

WORKER_PREFIX = "worker:"
BEAT = "beat"


def mark(name: str, detail: str = "") -> None:
    SystemMark.objects.update_or_create(name=name[:200], defaults={"at": timezone.now(), "detail": detail[:300]})


@dataclass(frozen=True)
class Status:
    worker_seen_at: datetime | None
    beat_seen_at: datetime | None
    silent_after: timedelta

    def _silent(self, seen: datetime | None, now: datetime) -> bool:
        return seen is None or now - seen > self.silent_after

    def worker_silent(self, now: datetime | None = None) -> bool:
        return self._silent(self.worker_seen_at, now or timezone.now())

    def beat_silent(self, now: datetime | None = None) -> bool:
        return self._silent(self.beat_seen_at, now or timezone.now())

    def describe(self, seen: datetime | None, now: datetime | None = None) -> str:
        now = now or timezone.now()
        if not self._silent(seen, now):
            return "ok"
        if seen is None:
            return "never seen"
        return f"silent for {int((now - seen).total_seconds())} s"


def status() -> Status:
    # One query for both (the dashboard reads it on every load): the latest worker's mark and beat's.
    marks = SystemMark.objects.aggregate(
        worker=Max("at", filter=Q(name__startswith=WORKER_PREFIX)), beat=Max("at", filter=Q(name=BEAT))
    )
    return Status(
        worker_seen_at=marks["worker"],
        beat_seen_at=marks["beat"],
        silent_after=timedelta(seconds=settings.HEARTBEAT_SILENT_AFTER),
    )


# --- Workers -------------------------------------------------------------------------------------------------
def start_worker_heartbeat(hostname: str) -> threading.Thread:
    """Mark ``worker:<hostname>`` now and every HEARTBEAT_INTERVAL seconds, from a daemon thread."""

    def beat_forever() -> None:
        while True:
            try:
                close_old_connections()
                mark(f"{WORKER_PREFIX}{hostname}")
            except DatabaseError as exc:  # the database is away: the silence itself is the signal
                logger.warning("worker heartbeat not written: %s", exc)
                connection.close()
            time.sleep(settings.HEARTBEAT_INTERVAL)

    thread = threading.Thread(target=beat_forever, name="isdown-admin heartbeat", daemon=True)
    thread.start()
    return thread


# --- Beat ----------------------------------------------------------------------------------------------------
class Scheduler(PersistentScheduler):
    """Celery's default scheduler, marking ``beat`` at most every HEARTBEAT_INTERVAL seconds as it ticks, and
    never sleeping longer than that between ticks."""

    _last_mark = 0.0

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval = super().tick(*args, **kwargs)
        if time.monotonic() - self._last_mark >= settings.HEARTBEAT_INTERVAL:
            try:
                close_old_connections()
                mark(BEAT)
                self._last_mark = time.monotonic()
            except DatabaseError as exc:
                logger.warning("beat heartbeat not written: %s", exc)
                connection.close()
        return min(interval, settings.HEARTBEAT_INTERVAL)
