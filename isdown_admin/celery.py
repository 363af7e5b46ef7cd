"""The Celery app: Redis carries messages, Postgres holds every bit of state.

Queues, routes, the beat schedule and every limit come from settings (CELERY_* names). A worker refuses to
start when its time limits (from settings or its command line) would let a task outlive a publication's
lease, and writes a heartbeat once it is ready.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import task_postrun, task_prerun, worker_init, worker_ready

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


@worker_init.connect
def persistent_database_connections(**_: Any) -> None:
    """A worker keeps its database connection between tasks (WORKER_DATABASE_CONN_MAX_AGE), checked before its
    first query in each task (CONN_HEALTH_CHECKS). Set before any connection opens (prefork children inherit it);
    the web's DATABASE_CONN_MAX_AGE is untouched."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    database["CONN_MAX_AGE"] = settings.WORKER_DATABASE_CONN_MAX_AGE
    database["CONN_HEALTH_CHECKS"] = True


@task_prerun.connect
@task_postrun.connect
def recycle_database_connections(sender: Any = None, **_: Any) -> None:
    # Django's rule between requests, applied between tasks: drop a connection that failed or outlived its age,
    # and health-check the kept one before the next query (Celery's fixup, which would close it, is told to
    # reuse it: CELERY_DB_REUSE_MAX).
    from django.db import close_old_connections

    if getattr(getattr(sender, "request", None), "is_eager", False):
        return  # a task run in the caller's process (and maybe its transaction) leaves the caller's connection be
    close_old_connections()


@worker_ready.connect
def start_heartbeat(sender: Any = None, **_: Any) -> None:
    from incidents.heartbeat import start_worker_heartbeat

    start_worker_heartbeat(getattr(sender, "hostname", None) or "worker")
