"""Publishing fixtures: the sandbox over real HTTP (pytest-django's live_server), real Celery worker processes
on a queue of their own, and a deadline-bound wait for conditions in the database.

Worker processes read the TEST database (pytest-django's ``test_`` + NAME), so tests that use them need
``transactional_db``: everything a test writes is committed and visible to the worker and the live server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connection

from incidents.models import Role
from sandbox.models import SandboxIncident, SandboxRequest
from sandbox.registry import register_service
from tests.factories import MembershipFactory, ServiceFactory, TeamFactory, UserFactory
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
CELERY = Path(sys.executable).with_name("celery")

# Every timing setting shrunk together, so each fault test takes seconds: the client's deadline, the lease
# and the time limits under it, the reconcile and watch windows, backoff, and the faults the tests inject (a
# latency or hang fault is a few seconds: longer than the deadline, shorter or longer than the windows).
FAST = {
    "ISDOWN_TIMEOUT": "1",
    "PUBLISH_LEASE_SECONDS": "5",
    "PUBLISH_BACKOFF_BASE": "0.2",
    "PUBLISH_BACKOFF_CAP": "5",
    "PUBLISH_MAX_ATTEMPTS": "5",
    "PUBLISH_RECONCILE_WINDOWS": "0.3,1,3",
    "PUBLISH_WATCH_WINDOWS": "0.3,1,3",
    "PUBLISH_CHECK_PATIENCE": "10",
    "SWEEP_INTERVAL": "1",
    "HEARTBEAT_INTERVAL": "0.5",
    "HEARTBEAT_SILENT_AFTER": "5",
}


def _seconds(raw: str) -> list[float]:
    return [float(item) for item in raw.split(",")]


SETTINGS_TYPES = {
    "ISDOWN_TIMEOUT": float,
    "PUBLISH_LEASE_SECONDS": float,
    "PUBLISH_BACKOFF_BASE": float,
    "PUBLISH_BACKOFF_CAP": float,
    "PUBLISH_MAX_ATTEMPTS": int,
    "PUBLISH_RECONCILE_WINDOWS": _seconds,
    "PUBLISH_WATCH_WINDOWS": _seconds,
    "PUBLISH_CHECK_PATIENCE": float,
    "SWEEP_INTERVAL": float,
    "HEARTBEAT_INTERVAL": float,
    "HEARTBEAT_SILENT_AFTER": float,
}

if not django_settings.SANDBOX_ENABLED:  # pragma: no cover - only when run against real IsDown
    pytest.skip("the sandbox is not mounted (SANDBOX_ENABLED is off)", allow_module_level=True)


def sandbox_requests(method: str | None = None, path_prefix: str = "/sandbox/api/v2/incidents") -> list[SandboxRequest]:
    queryset = SandboxRequest.objects.filter(path__startswith=path_prefix).order_by("id")
    if method:
        queryset = queryset.filter(method=method)
    return list(queryset)


def sandbox_incidents() -> list[SandboxIncident]:
    return list(SandboxIncident.objects.order_by("id"))


def database_url() -> str:
    data = connection.settings_dict
    user = data.get("USER") or ""
    password = f":{data['PASSWORD']}" if data.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{data.get('HOST') or '127.0.0.1'}:{data.get('PORT') or 5432}/{data['NAME']}"


# --- People and services --------------------------------------------------------------------------------
@pytest.fixture
def team(transactional_db):
    return TeamFactory(name="Platform")


@pytest.fixture
def author(team):
    user = UserFactory(username="responder")
    MembershipFactory(user=user, team=team, role=Role.RESPONDER)
    return user


@pytest.fixture
def approver_user(team):
    user = UserFactory(username="approver")
    MembershipFactory(user=user, team=team, role=Role.APPROVER)
    return user


@pytest.fixture
def service(team):
    """Service 1001 "API", known to the sandbox."""
    register_service(1001, "API")
    return ServiceFactory(team=team, name="API", isdown_service_id=1001)


# --- Sandbox over HTTP, fast settings, a queue of our own ---------------------------------------------------
@pytest.fixture
def publish_queue() -> str:
    return f"publish-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def fast_settings(settings, live_server, publish_queue):
    """In-process settings matching the workers': the sandbox at the live server, short timeouts."""
    settings.ISDOWN_API_URL = live_server.url + "/sandbox"
    settings.CELERY_PUBLISH_QUEUE = publish_queue
    settings.CELERY_TASK_DEFAULT_QUEUE = publish_queue
    for name, raw in FAST.items():
        setattr(settings, name, SETTINGS_TYPES[name](raw))
    return settings


@dataclass
class Worker:
    process: subprocess.Popen
    log: Path
    name: str

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no cleanup, no ack, the message and the row stay as they were mid-call."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def start_worker(fast_settings, live_server, publish_queue, tmp_path) -> Iterator[Callable[..., Worker]]:
    """``start_worker(*args, **env)`` runs ``celery -A isdown_admin worker`` (solo pool) on this test's queue
    and waits until it is ready (``wait_ready=False``: returns at once). Every worker is stopped at teardown,
    before the database is flushed."""
    workers: list[Worker] = []

    def start(*extra_args: str, wait_ready: bool = True, **extra_env: str) -> Worker:
        name = f"w{len(workers)}-{uuid.uuid4().hex[:6]}"
        log = tmp_path / f"{name}.log"
        env = {
            **os.environ,
            **FAST,
            "DATABASE_URL": database_url(),
            "REDIS_URL": django_settings.REDIS_URL,
            "ISDOWN_API_URL": live_server.url + "/sandbox",
            "CELERY_PUBLISH_QUEUE": publish_queue,
            "CELERY_DEFAULT_QUEUE": publish_queue,
            "DJANGO_SETTINGS_MODULE": "isdown_admin.settings",
            "PYTHONUNBUFFERED": "1",
            **extra_env,
        }
        env.pop("ISDOWN_API_KEY", None)
        handle = log.open("w")
        process = subprocess.Popen(
            [
                str(CELERY),
                "-A",
                "isdown_admin",
                "worker",
                "--pool=solo",
                f"--queues={publish_queue}",
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
                "--loglevel=INFO",
                f"--hostname={name}@%h",
                *extra_args,
            ],
            cwd=REPO,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        worker = Worker(process=process, log=log, name=name)
        workers.append(worker)
        if not wait_ready:
            return worker
        wait_for(lambda: " ready." in worker.log_text() or process.poll() is not None, timeout=30, what="worker ready")
        if process.poll() is not None:
            pytest.fail(f"worker exited at start:\n{worker.log_text()[-3000:]}")
        return worker

    start.started = workers  # type: ignore[attr-defined]
    yield start
    for worker in workers:
        worker.stop()
        # Shown by pytest only when the test failed: what the worker did.
        print(f"--- {worker.name} ---\n{worker.log_text()[-6000:]}")
