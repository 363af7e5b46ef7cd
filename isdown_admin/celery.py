"""The Celery app: Redis carries messages, Postgres holds every bit of state.

Queues, routes, the beat schedule and every limit come from settings (CELERY_* names). A worker refuses to
start when its time limits (from settings or its command line) would let a task outlive a publication's
lease, and writes a heartbeat once it is ready.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_ready

from .limits import time_limit_problem

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "isdown_admin.settings")

app = Celery("isdown_admin")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def refuse_unsafe_time_limits(sender: Any = None, **_: Any) -> None:
    from django.conf import settings

    problem = time_limit_problem(
        soft=getattr(sender, "soft_time_limit", None),
        hard=getattr(sender, "time_limit", None),
        lease=settings.PUBLISH_LEASE_SECONDS,
        call=settings.ISDOWN_TIMEOUT,
    )
    if problem:
        # A signal handler's exception is only logged; SystemExit stops the worker.
        raise SystemExit(f"isdown-admin worker refuses to start: {problem}")


@worker_ready.connect
def start_heartbeat(sender: Any = None, **_: Any) -> None:
    from incidents.heartbeat import start_worker_heartbeat

    start_worker_heartbeat(getattr(sender, "hostname", None) or "worker")
