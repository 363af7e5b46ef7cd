"""Chaos soak: the publishing promise, tried end to end under faults, and judged on the sandbox's own record.

    .venv/bin/python -m tests.chaos.soak --n 300 [--seed S] [--workers 4] [--db NAME] [--minutes-limit M] [--keep-db]

Every approved change must reach IsDown (here the sandbox) exactly once, as approved, in approval order per
incident, and each incident must end as its last approved change left it; or a human is told: the publication
is failed, needs attention or a detected duplicate, and its email is in the notification outbox.

The soak runs in a world of its own, all real processes: a fresh PostgreSQL database (``isdown_admin_chaos_<pid>``,
migrated with ``manage.py migrate``, dropped at the end unless ``--keep-db``), a Redis on a spare port, the sandbox
served by gunicorn over real HTTP, ``--workers`` Celery workers (solo pool, queues publish and default) and one
beat. This process acts as the people, through the app's own code: a responder drafts and submits
(``workflow.create`` / ``workflow.submit``), three approvers approve from threads of their own
(``workflow.approve``), and publishing is enqueued on commit by the app itself.

The mix: creates on several services; updates (description and stage, sometimes a new title or severity) of
published incidents, several of one incident approved back to back by concurrent approvers; resolves, and now
and then a reopening. Every change carries a unique token (``[chx-00042]``) in its words (a create's title and
description, an update's description) so its effect can be counted on the sandbox.

The chaos, seeded (``--seed``; timing still varies run to run): sandbox faults of every kind on POST, PATCH, GET or
any request (429 with Retry-After, 500, 502, 503 with and without Retry-After, an occasional 422; latency shorter
than the client's timeout, between the timeout and the end of the reconcile window, and longer than that window,
so the change is sent again and its late twin is for the watch to find; dropped connections; hangs after
processing), SIGKILLs of workers (restarted at once), and restarts of the soak's Redis (all its messages lost).
Every timing setting is shrunk together (``TIMING``), and the faults are sized against it: no latency is longer
than the reconcile window plus the watch window. A copy that still lands after the watch ended (the watch counts
from publishing, not from the last send) is outside the promise (README, Guarantees): it is shown and counted
apart, and does not fail the run.

After the last approval the chaos stops, leftover faults are cleared, and the soak waits (polling the database)
until every publication has settled: none queued, sending, waiting to retry or reconciling, none still watching
for a twin, no email pending. A publication queued behind a failed or needs-attention one of the same incident
is settled too: it waits for a human, who has been told. Then it judges, prints a table, and exits:

- 0: no undetected duplicate, no lost change, no incident out of order, no wrong final state, nothing
  misdirected, nothing stuck, and the audit chain verifies;
- 1: otherwise, listing each offending change with its attempts, its audit trail and the sandbox requests that
  carry its token;
- 2: the world could not be set up, the run was interrupted, or the chaos itself failed (a kill or a restart
  that did not happen proves nothing).

People meet the app's errors too: an action that fails on a database error (a deadlock) is clicked again, and
each such error is counted in the table and named in a note.

Logs of every process (and of this one) are kept in a temporary directory whose path is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
POSTGRES = {"host": "127.0.0.1", "port": 5432, "user": "root"}
SANDBOX_KEY = "sandbox-key"

# Every timing setting shrunk together, for every process (the workers, beat, gunicorn and this one).
TIMING = {
    "ISDOWN_TIMEOUT": "1",
    "PUBLISH_LEASE_SECONDS": "5",
    "PUBLISH_RECONCILE_WINDOWS": "0.3,1,3",
    "PUBLISH_WATCH_WINDOWS": "0.3,1,3",
    "PUBLISH_BACKOFF_BASE": "0.2",
    "PUBLISH_BACKOFF_CAP": "5",
    "PUBLISH_CHECK_PATIENCE": "20",
    "PUBLISH_MAX_ATTEMPTS": "8",
    "SWEEP_INTERVAL": "1",
    "SYNC_INTERVAL": "5",
    "HEARTBEAT_INTERVAL": "0.5",
    "HEARTBEAT_SILENT_AFTER": "5",
    "NOTIFY_BACKOFF_BASE": "0.5",
    "NOTIFY_BACKOFF_CAP": "5",
    "EMAIL_TIMEOUT": "2",
    "EMAIL_URL": "console://",
    "CELERY_VISIBILITY_TIMEOUT": "60",
}
CLIENT_TIMEOUT = float(TIMING["ISDOWN_TIMEOUT"])
# An unknown outcome is looked for until about this long after the send started; a change landing later is
# sent again, and the watch after the resend (as long again, at most) finds the late twin.
RECONCILE_END = CLIENT_TIMEOUT + float(TIMING["PUBLISH_RECONCILE_WINDOWS"].split(",")[-1])
# After a resend, a late twin is watched for until this long after the publication was published.
WATCH_END = float(TIMING["PUBLISH_WATCH_WINDOWS"].split(",")[-1])

TOKEN_RE = re.compile(r"\[chx-\d{5}\]")
SERVICES = (("API", 4001), ("Dashboard", 4002), ("Pipeline", 4003))
APPROVERS = 3
CREATE_SHARE = 0.25  # of the approved changes, about this many open an incident
BATCH_SIZES = (1, 1, 2, 2, 3, 4)  # updates of one incident submitted back to back
FAULTS_QUEUED_AT_MOST = 3  # faults waiting in the sandbox at any time
WORDS = (
    "elevated error rates on checkout",
    "a database failover is under way",
    "latency is back to normal in eu-west",
    "we rolled back the deploy",
    "a subset of customers cannot sign in",
    "queue consumers are catching up",
    "the upstream provider confirmed the issue",
    "webhooks are delayed by a few minutes",
)
TITLES = ("API errors", "Slow dashboard", "Delayed pipeline runs", "Login failures", "Partial outage")

STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:7.1f} s] {message}", flush=True)


class SetupError(Exception):
    """The world could not be built (a process did not start, a port did not answer)."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT: clean up and leave. A KeyboardInterrupt, so psycopg cancels a query it interrupts."""


# Set by the signal handler: code that turns errors into retries (a person clicking again) checks it, since cleanup
# of an interrupted query can surface as a database error instead of the interrupt.
STOP_REQUESTED = threading.Event()


def stop_if_requested() -> None:
    if STOP_REQUESTED.is_set():
        raise Interrupted("stop requested")


def wait_until(condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SetupError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def token_of(number: int) -> str:
    return f"[chx-{number:05d}]"


# --- Processes --------------------------------------------------------------------------------------------------
class Process:
    """One subprocess in a session of its own (so a kill takes its children too), logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self._handle = self.log.open("ab")
        try:
            self.popen = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except FileNotFoundError:
            self._handle.close()
            raise SetupError(f"{argv[0]} is not installed (or not on PATH)") from None
        self.killed = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL to the whole group: no clean-up, no acknowledgement, whatever it was doing stops mid-way."""
        self.killed = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        self._handle.close()


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def http_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - our own gunicorn on 127.0.0.1
            return True
    except urllib.error.HTTPError:
        return True  # any status: the server is up
    except OSError:
        return False


class World:
    """The soak's own PostgreSQL database, Redis, gunicorn, workers and beat; everything stopped by ``close``."""

    def __init__(self, *, db_name: str, workers: int, keep_db: bool, log_dir: Path) -> None:
        self.db_name = db_name
        self.keep_db = keep_db
        self.log_dir = log_dir
        self.worker_count = workers
        self.redis_port = free_port()
        self.web_port = free_port()
        self.site_url = f"http://127.0.0.1:{self.web_port}"
        self.db_created = False
        self.lock = threading.RLock()
        self.redis: Process | None = None
        self.web: Process | None = None
        self.beat: Process | None = None
        self.workers: list[Process | None] = [None] * workers
        self.generation = Counter()  # per process slot: how many times it was started
        self.all_processes: list[Process] = []
        self.closed = False
        self.env = self._environment()

    def _environment(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"ISDOWN_API_KEY", "ISDOWN_API_URL", "SANDBOX_ENABLED", "CELERY_PUBLISH_QUEUE"}
            and not key.startswith(("CELERY_TASK_", "PUBLISH_"))
        }
        env.update(TIMING)
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "isdown_admin.settings",
                "DEBUG": "1",
                "ALLOWED_HOSTS": "127.0.0.1,localhost",
                "SANDBOX_ENABLED": "1",
                "SANDBOX_API_KEY": SANDBOX_KEY,
                "SITE_URL": self.site_url,
                "ISDOWN_API_URL": f"{self.site_url}/sandbox",
                "DATABASE_URL": f"postgres://{POSTGRES['user']}@{POSTGRES['host']}:{POSTGRES['port']}/{self.db_name}",
                "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                "CELERY_DEFAULT_QUEUE": "default",
                "LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def _start(self, slot: str, argv: list[str]) -> Process:
        if self.closed:
            raise SetupError(f"not starting {slot}: the world is closing")
        self.generation[slot] += 1
        process = Process(f"{slot}.{self.generation[slot]}", argv, self.env, self.log_dir)
        self.all_processes.append(process)
        return process

    # --- PostgreSQL
    def _admin(self):
        import psycopg

        return psycopg.connect(dbname="postgres", autocommit=True, connect_timeout=5, **POSTGRES)

    def create_database(self) -> None:
        import psycopg

        try:
            admin = self._admin()
        except psycopg.OperationalError as exc:
            raise SetupError(f"PostgreSQL does not answer at {POSTGRES['host']}:{POSTGRES['port']}: {exc}") from None
        with admin as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [self.db_name]).fetchone():
                raise SetupError(f"database {self.db_name} already exists: the soak only uses a fresh one")
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        self.db_created = True
        with (self.log_dir / "migrate.log").open("wb") as log:
            done = subprocess.run(
                [sys.executable, "manage.py", "migrate", "--noinput"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if done.returncode != 0:
            raise SetupError(f"manage.py migrate failed; see {self.log_dir / 'migrate.log'}")

    def drop_database(self) -> None:
        if not self.db_created or self.keep_db:
            return
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    # --- Redis
    def start_redis(self) -> None:
        with self.lock:
            self.redis = self._start(
                "redis",
                [
                    "redis-server",
                    "--port",
                    str(self.redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                ],
            )
        wait_until(lambda: redis_answers(self.redis_port), timeout=15, what=f"Redis on port {self.redis_port}")

    def kill_redis(self) -> None:
        with self.lock:
            if self.redis is not None:
                self.redis.kill()

    # --- The sandbox over HTTP
    def start_web(self) -> None:
        with self.lock:
            self.web = self._start(
                "gunicorn",
                [
                    str(BIN / "gunicorn"),
                    "isdown_admin.wsgi:application",
                    "--worker-class",
                    "gthread",
                    "--threads",
                    "32",
                    "--workers",
                    "1",
                    "--timeout",
                    "120",
                    "--bind",
                    f"127.0.0.1:{self.web_port}",
                    "--log-level",
                    "warning",
                ],
            )
        wait_until(lambda: http_answers(f"{self.site_url}/healthz"), timeout=30, what="gunicorn")

    # --- Celery
    def start_worker(self, index: int, *, wait: bool = False) -> Process:
        slot = f"worker{index}"
        with self.lock:
            process = self._start(
                slot,
                [
                    str(BIN / "celery"),
                    "-A",
                    "isdown_admin",
                    "worker",
                    "--pool=solo",
                    "--queues=publish,default",
                    "--loglevel=INFO",
                    f"--hostname=chaos-{slot}.{self.generation[slot] + 1}@%h",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ],
            )
            self.workers[index] = process
        if wait:
            self.wait_ready(process)
        return process

    @staticmethod
    def wait_ready(process: Process) -> None:
        wait_until(
            lambda: " ready." in process.log_text() or not process.alive(), timeout=60, what=f"{process.name} ready"
        )
        if not process.alive():
            raise SetupError(f"{process.name} exited at start; see {process.log}")

    def start_beat(self) -> None:
        with self.lock:
            self.beat = self._start(
                "beat",
                [
                    str(BIN / "celery"),
                    "-A",
                    "isdown_admin",
                    "beat",
                    "--loglevel=INFO",
                    f"--schedule={self.log_dir / 'celerybeat-schedule'}",
                ],
            )

    def start_all(self) -> None:
        self.create_database()
        say(f"database {self.db_name} created and migrated")
        self.start_redis()
        self.start_web()
        say(f"Redis on port {self.redis_port}; the sandbox at {self.site_url}/sandbox (gunicorn)")
        started = [self.start_worker(index) for index in range(self.worker_count)]
        self.start_beat()
        for process in started:
            self.wait_ready(process)
        say(f"{self.worker_count} worker(s) and beat running")

    def close(self) -> None:
        with self.lock:
            self.closed = True  # from now on nothing starts (a chaos action may still be under way)
            processes = list(reversed(self.all_processes))
        for process in processes:
            process.kill()
        try:
            self.drop_database()
        except Exception as exc:
            print(f"could not drop database {self.db_name}: {exc}", file=sys.stderr)


# --- The people ---------------------------------------------------------------------------------------------------
@dataclass
class People:
    team: Any
    responder: Any
    approvers: list[Any]
    services: list[Any]


def seed_people() -> People:
    from django.contrib.auth import get_user_model

    from incidents.models import Membership, Role, Service, Team
    from sandbox.registry import register_service

    user_model = get_user_model()
    team = Team.objects.create(name="Chaos")

    def member(username: str, role: str) -> Any:
        # An address each: "told" means an email in the outbox, and nobody without an address gets one.
        user = user_model.objects.create_user(username=username, email=f"{username}@chaos.example")
        Membership.objects.create(user=user, team=team, role=role)
        return user

    responder = member("chaos-responder", Role.RESPONDER)
    approvers = [member(f"chaos-approver{n}", Role.APPROVER) for n in range(1, APPROVERS + 1)]
    services = []
    for name, service_id in SERVICES:
        register_service(service_id, name)
        services.append(Service.objects.create(team=team, name=name, isdown_service_id=service_id))
    return People(team=team, responder=responder, approvers=approvers, services=services)


# --- Publications as the soak sees them -------------------------------------------------------------------------
MOVING = ("queued", "sending", "retry_wait", "reconciling")
HOLDING_FOR_A_HUMAN = ("failed", "needs_attention")
TOLD_STATES = ("failed", "needs_attention", "abandoned")


def moving_publications():
    """Publications that will still move without a human: queued (unless a failed or needs-attention one of the
    same incident holds it), sending, waiting to retry, reconciling."""
    from django.db.models import Exists, OuterRef, Q

    from incidents.models import Publication

    held = Publication.objects.filter(
        target_remote_id=OuterRef("target_remote_id"), pk__lt=OuterRef("pk"), state__in=HOLDING_FOR_A_HUMAN
    ).exclude(target_remote_id="")
    return Publication.objects.filter(state__in=MOVING).exclude(Q(state="queued") & Exists(held))


def still_watching():
    from incidents.models import Publication

    return Publication.objects.filter(watch_until__isnull=False)


def emails_pending() -> int:
    from incidents.models import Notification

    return Notification.objects.filter(state="pending").count()


# --- The scenario: a responder drafts, approvers approve -------------------------------------------------------
@dataclass
class Change:
    number: int
    token: str
    kind: str  # "create" or "update"
    draft_id: int
    revision_id: int
    sha256: str


@dataclass
class IncidentPlan:
    """One incident as the responder sees it."""

    service: Any
    create_draft_id: int
    incident_id: int | None = None
    dead: bool = False  # its create failed or needs a human: it never gets an IsDown id here
    blocked: bool = False  # one of its publications waits for a human: no more updates
    resolved: bool = False
    finished: bool = False


@dataclass
class Progress:
    n: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    submitted: int = 0
    approved: int = 0
    creates: int = 0
    updates: int = 0
    resolves: int = 0
    approval_errors: list[str] = field(default_factory=list)
    # What people met and clicked through again (a deadlock, a refused connection): the app's, not the soak's.
    database_errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    no_more: threading.Event = field(default_factory=threading.Event)

    def fraction(self) -> float:
        with self.lock:
            return self.approved / self.n if self.n else 1.0


def as_a_person(progress: Progress, what: str, action: Callable[[], Any], *, done: Callable[[], bool] | None = None):
    """Do ``action`` as a person would: an error from the database (the transaction rolled back) is met by
    clicking again, a few times; each one is recorded. ``done`` says whether the action committed after all."""
    from django.db import DatabaseError, InterfaceError, connection

    for attempt in range(1, 6):
        try:
            return action()
        except (DatabaseError, InterfaceError) as exc:
            stop_if_requested()
            connection.close()
            with progress.lock:
                progress.database_errors[(what, f"{type(exc).__name__}: {str(exc).splitlines()[0]}")] += 1
            if done is not None and done():
                return None
            if attempt == 5:
                raise
            time.sleep(0.2 * attempt)  # the person reads the error page, then clicks again
    return None


class Approver(threading.Thread):
    """One approver at their desk: approves whatever is put in front of them, as soon as it arrives."""

    def __init__(self, user: Any, inbox: queue.Queue[Change], progress: Progress) -> None:
        super().__init__(name=f"approver {user.username}", daemon=True)
        self.user = user
        self.inbox = inbox
        self.progress = progress

    def run(self) -> None:
        from django.db import connection

        try:
            while True:
                try:
                    change = self.inbox.get(timeout=0.1)
                except queue.Empty:
                    if self.progress.no_more.is_set():
                        return
                    continue
                try:
                    self.approve(change)
                finally:
                    self.inbox.task_done()
        finally:
            connection.close()

    def approve(self, change: Change) -> None:
        from incidents import workflow
        from incidents.models import Review

        try:
            as_a_person(
                self.progress,
                "approve",
                lambda: workflow.approve(
                    draft_id=change.draft_id, revision_id=change.revision_id, reviewer=self.user, sha256=change.sha256
                ),
                done=lambda: Review.objects.filter(revision_id=change.revision_id, decision="approve").exists(),
            )
        except Exception as exc:
            with self.progress.lock:
                self.progress.approval_errors.append(f"change {change.token} (draft #{change.draft_id}): {exc!r}")
            return
        with self.progress.lock:
            self.progress.approved += 1


class Responder:
    """Drafts and submits the N changes, pacing itself by what is still moving, and hands them to the approvers."""

    def __init__(
        self, *, people: People, rng: random.Random, progress: Progress, inbox: queue.Queue, max_in_flight: int
    ) -> None:
        self.people = people
        self.rng = rng
        self.progress = progress
        self.inbox = inbox
        self.max_in_flight = max_in_flight
        self.plans: list[IncidentPlan] = []
        self.numbers = iter(range(1, 100_000))

    def run(self, deadline: float) -> None:
        n = self.progress.n
        target_creates = max(2, round(n * CREATE_SHARE))
        last_report = time.monotonic()
        while self.progress.submitted < n:
            stop_if_requested()
            if time.monotonic() > deadline:
                say(f"minutes limit reached while submitting: {self.progress.submitted} of {n} submitted")
                break
            if time.monotonic() - last_report > 15:
                last_report = time.monotonic()
                self.report()
            if self.in_flight() >= self.max_in_flight:
                time.sleep(0.05)
                continue
            self.refresh()
            ready = [p for p in self.plans if p.incident_id and not (p.finished or p.blocked)]
            waiting = [p for p in self.plans if p.incident_id is None and not p.dead]
            create = self.progress.creates < target_creates and (not ready or self.rng.random() < 0.3)
            if not ready and not create:
                if waiting:
                    time.sleep(0.05)  # an update needs its incident on IsDown first
                    continue
                create = True  # every incident is finished or held: open another one
            if create:
                self.submit_create()
            else:
                self.submit_updates(self.rng.choice(ready))
        self.progress.no_more.set()

    def report(self) -> None:
        say(
            f"submitted {self.progress.submitted}, approved {self.progress.approved} of {self.progress.n}; "
            f"{moving_publications().count()} publication(s) moving"
        )

    def in_flight(self) -> int:
        return moving_publications().count() + self.inbox.qsize()

    def refresh(self) -> None:
        """Learn which creates are on IsDown (their incident can take updates) and which incidents wait for a
        human (no more updates for them)."""
        from incidents.models import Publication

        waiting = {p.create_draft_id: p for p in self.plans if p.incident_id is None and not p.dead}
        if waiting:
            rows = Publication.objects.filter(draft_id__in=waiting).values_list("draft_id", "state", "incident_id")
            for draft_id, state, incident_id in rows:
                plan = waiting[draft_id]
                if state in ("published", "duplicate_detected") and incident_id:
                    plan.incident_id = incident_id
                elif state in TOLD_STATES:
                    plan.dead = True
        live = {p.incident_id: p for p in self.plans if p.incident_id and not p.blocked}
        if live:
            held = Publication.objects.filter(incident_id__in=live, state__in=HOLDING_FOR_A_HUMAN)
            for incident_id in held.values_list("incident_id", flat=True):
                live[incident_id].blocked = True

    def _words(self, token: str) -> str:
        words = self.rng.sample(WORDS, k=self.rng.choice((1, 2)))
        separator = self.rng.choice((" ", ". ", ".\n", ".\r\n"))
        return f"{token} " + separator.join(words)

    def _submit(self, *, kind: str, token: str, draft: Any) -> None:
        from incidents import workflow

        revision = as_a_person(
            self.progress,
            "submit a draft",
            lambda: workflow.submit(draft_id=draft.pk, user=self.people.responder),
        )
        change = Change(
            number=int(token[5:10]),
            token=token,
            kind=kind,
            draft_id=draft.pk,
            revision_id=revision.pk,
            sha256=revision.sha256,
        )
        self.progress.submitted += 1
        self.inbox.put(change)

    def submit_create(self) -> None:
        from incidents import workflow
        from incidents.models import DraftKind

        token = token_of(next(self.numbers))
        service = self.rng.choice(self.people.services)
        fields = {
            "title": f"{token} {self.rng.choice(TITLES)}",
            "severity": self.rng.choice(("minor", "major")),
            "description": self._words(token),
            "stage": self.rng.choice(("investigating", "investigating", "identified")),
        }
        draft = as_a_person(
            self.progress,
            "create a draft",
            lambda: workflow.create(user=self.people.responder, service=service, kind=DraftKind.OPEN, fields=fields),
        )
        self.plans.append(IncidentPlan(service=service, create_draft_id=draft.pk))
        self.progress.creates += 1
        self._submit(kind="create", token=token, draft=draft)

    def submit_updates(self, plan: IncidentPlan) -> None:
        """A batch of updates of one incident, submitted back to back: the approvers take them concurrently."""
        from incidents import workflow
        from incidents.models import DraftKind, Incident

        size = min(self.rng.choice(BATCH_SIZES), self.progress.n - self.progress.submitted)
        for _ in range(size):
            incident = Incident.objects.get(pk=plan.incident_id)
            token = token_of(next(self.numbers))
            if plan.resolved:
                stage = self.rng.choice(("investigating", "monitoring"))  # reopened
                plan.resolved = False
            else:
                stage = self.rng.choices(("investigating", "identified", "monitoring", "resolved"), (1, 2, 2, 1.2))[0]
            # As the form would pre-fill them; a change is sent only when it differs from the local copy.
            fields = {"title": incident.title, "severity": incident.severity, "stage": stage}
            if self.rng.random() < 0.15:
                fields["title"] = f"{token} {self.rng.choice(TITLES)} (update)"
            if self.rng.random() < 0.15:
                fields["severity"] = "major" if incident.severity == "minor" else "minor"
            fields["description"] = self._words(token)
            draft = as_a_person(
                self.progress,
                "create an update draft",
                partial(
                    workflow.create,
                    user=self.people.responder,
                    service=plan.service,
                    kind=DraftKind.UPDATE,
                    fields=fields,
                    incident=incident,
                ),
            )
            self.progress.updates += 1
            self._submit(kind="update", token=token, draft=draft)
            if stage == "resolved":
                self.progress.resolves += 1
                plan.resolved = True
                plan.finished = self.rng.random() < 0.85
                return


# --- The chaos --------------------------------------------------------------------------------------------------
def _fault_menu(rng: random.Random) -> list[tuple[str, float, Callable[[], dict[str, Any]]]]:
    """(label, weight, arguments of sandbox.faults.add_fault) for every kind the sandbox has."""
    return [
        ("429 + Retry-After", 3, lambda: {"kind": "status", "status": 429, "retry_after": rng.choice((1, 2))}),
        ("500", 2, lambda: {"kind": "status", "status": 500}),
        ("502", 2, lambda: {"kind": "status", "status": 502}),
        ("503 + Retry-After", 2, lambda: {"kind": "status", "status": 503, "retry_after": 1}),
        ("503", 2, lambda: {"kind": "status", "status": 503}),
        ("422", 0.3, lambda: {"kind": "status", "status": 422}),
        (
            "latency < timeout",
            2,
            lambda: {"kind": "latency", "latency_ms": round(rng.uniform(0.05, 0.7) * CLIENT_TIMEOUT * 1000)},
        ),
        (
            "latency timeout..window",
            2,
            lambda: {
                "kind": "latency",
                "latency_ms": round(rng.uniform(CLIENT_TIMEOUT + 0.2, RECONCILE_END - 0.5) * 1000),
            },
        ),
        (
            "latency > window",
            1,
            lambda: {
                "kind": "latency",
                "latency_ms": round(rng.uniform(RECONCILE_END + 0.5, RECONCILE_END + 2) * 1000),
            },
        ),
        ("drop", 2, lambda: {"kind": "drop"}),
        ("hang", 2, lambda: {"kind": "hang", "hang_seconds": round(rng.uniform(1.5, 3.0), 2)}),
    ]


METHODS = (("POST", 3), ("PATCH", 3), ("GET", 2), ("", 1))


class Chaos(threading.Thread):
    """Faults at random moments; worker kills and Redis restarts at random points of the approvals' progress
    (so they happen while changes are moving, whatever the pace). Also restarts any process that died on its own,
    and says so."""

    def __init__(self, *, world: World, rng: random.Random, progress: Progress, n: int, interval: float) -> None:
        super().__init__(name="chaos", daemon=True)
        self.world = world
        self.rng = rng
        self.progress = progress
        self.interval = interval
        self.menu = _fault_menu(rng)
        kills = max(2, n // 50)
        restarts = max(1, n // 300)
        self.events = sorted(
            [(rng.uniform(0.1, 0.9), "kill") for _ in range(kills)]
            + [(rng.uniform(0.25, 0.75), "redis") for _ in range(restarts)]
        )
        self.stop = threading.Event()
        self.finishing = False  # set on the way out of a normal run: the events still due happen then
        self.faults: Counter[tuple[str, str]] = Counter()  # (kind, method)
        self.kills = 0
        self.redis_restarts = 0
        self.died_on_their_own: list[str] = []
        self.errors: list[str] = []

    def run(self) -> None:
        from django.db import connection

        try:
            while not self.stop.is_set():
                self._guarded(self.revive)
                fraction = self.progress.fraction()
                while self.events and self.events[0][0] <= fraction and not self.stop.is_set():
                    _, kind = self.events.pop(0)
                    self._guarded(self.kill_worker if kind == "kill" else self.restart_redis)
                self._guarded(self.inject)
                self.stop.wait(self.rng.uniform(0.5, 1.5) * self.interval)
            # Whatever did not happen yet happens now: every run has its kills and its Redis restart.
            for _, kind in self.events if self.finishing else ():
                self._guarded(self.kill_worker if kind == "kill" else self.restart_redis)
            self.events = []
        finally:
            connection.close()

    def _guarded(self, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception:
            self.errors.append(traceback.format_exc())
            say(f"chaos: {action.__name__} failed (continuing):\n{traceback.format_exc()}")

    def inject(self) -> None:
        from sandbox.faults import add_fault
        from sandbox.models import SandboxFault

        if SandboxFault.objects.count() >= FAULTS_QUEUED_AT_MOST:
            return
        label, _, arguments = self.rng.choices(self.menu, weights=[w for _, w, _ in self.menu])[0]
        method = self.rng.choices([m for m, _ in METHODS], weights=[w for _, w in METHODS])[0]
        add_fault(method=method, count=self.rng.choice((1, 1, 2)), **arguments())
        self.faults[(label, method or "any")] += 1

    def kill_worker(self) -> None:
        index = self.rng.randrange(self.world.worker_count)
        with self.world.lock:
            victim = self.world.workers[index]
        if victim is None:
            return
        victim.kill()
        self.kills += 1
        say(f"chaos: SIGKILL {victim.name} (pid {victim.pid}); starting a new one")
        self.world.start_worker(index)

    def restart_redis(self) -> None:
        down_for = self.rng.uniform(0.5, 3.0)
        self.world.kill_redis()
        say(f"chaos: Redis killed (every message in it lost); down for {down_for:.1f} s")
        time.sleep(down_for)  # the outage itself
        self.world.start_redis()
        self.redis_restarts += 1
        say("chaos: Redis is back, empty")

    def revive(self) -> None:
        with self.world.lock:
            workers = list(enumerate(self.world.workers))
            beat, web, redis = self.world.beat, self.world.web, self.world.redis
        if redis is not None and not redis.alive() and not redis.killed:
            self.died_on_their_own.append(f"{redis.name} (exit {redis.popen.returncode}; {redis.log})")
            self.world.start_redis()
        for index, process in workers:
            if process is not None and not process.alive() and not process.killed:
                self.died_on_their_own.append(f"{process.name} (exit {process.popen.returncode}; {process.log})")
                say(f"chaos: {process.name} exited on its own; starting a new one")
                self.world.start_worker(index)
        if beat is not None and not beat.alive() and not beat.killed:
            self.died_on_their_own.append(f"{beat.name} (exit {beat.popen.returncode}; {beat.log})")
            self.world.start_beat()
        if web is not None and not web.alive() and not web.killed:
            self.died_on_their_own.append(f"{web.name} (exit {web.popen.returncode}; {web.log})")
            self.world.start_web()


# --- Settling ---------------------------------------------------------------------------------------------------
def settle(deadline: float, *, revive: Callable[[], None]) -> bool:
    """Wait until nothing moves any more (or the deadline passes): polled, never slept for a fixed time. A process
    that dies on its own meanwhile is restarted (and reported)."""
    last_report = 0.0
    while True:
        stop_if_requested()
        revive()
        moving = moving_publications().count()
        watching = still_watching().count()
        pending = emails_pending()
        if not (moving or watching or pending):
            return True
        now = time.monotonic()
        if now > deadline:
            say(f"deadline: {moving} publication(s) still moving, {watching} watching, {pending} email(s) pending")
            return False
        if now - last_report > 10:
            last_report = now
            say(f"settling: {moving} publication(s) moving, {watching} watching for a twin, {pending} email(s) pending")
        time.sleep(0.25)


# --- The judge --------------------------------------------------------------------------------------------------
@dataclass
class Judged:
    publication: Any
    token: str
    kind: str  # create | update
    body: dict[str, Any]
    target: str  # the IsDown incident it addresses (update) or is linked to (create)
    effects: list[tuple[int, int]]  # (sandbox incident id, position in its updates) of each entry with its token
    category: str = ""
    note: str = ""


@dataclass
class Verdict:
    judged: list[Judged]
    out_of_order: list[tuple[str, list[int], list[int]]]  # (IsDown id, approved order, order on IsDown)
    wrong_final: list[tuple[str, dict[str, Any], dict[str, Any]]]  # (IsDown id, expected, actual)
    final_checked: int
    notes: list[str]

    def count(self, category: str) -> int:
        return sum(1 for j in self.judged if j.category == category)

    @property
    def failed(self) -> bool:
        bad = ("undetected duplicate", "lost", "misdirected", "stuck")
        return any(self.count(c) for c in bad) or bool(self.out_of_order or self.wrong_final)


def judge() -> Verdict:
    """Compare what was approved (Publication and its RevisionRequest) with the sandbox's own record."""
    from incidents.models import AuditEvent, Notification, Publication
    from sandbox.models import SandboxIncident

    publications = list(Publication.objects.select_related("request").order_by("pk"))
    notified = set(Notification.objects.filter(target_type="publication").values_list("target_id", flat=True))
    duplicate_audited = set(
        AuditEvent.objects.filter(action="publication.duplicate_detected").values_list("target_id", flat=True)
    )
    moving = set(moving_publications().values_list("pk", flat=True)) | set(
        still_watching().values_list("pk", flat=True)
    )
    sandbox = {incident.pk: incident for incident in SandboxIncident.objects.all()}
    effects: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for incident in sandbox.values():
        for position, entry in enumerate(incident.updates):
            for token in set(TOKEN_RE.findall(str(entry.get("description") or ""))):
                effects[token].append((incident.pk, position))

    judged: list[Judged] = []
    notes: list[str] = []
    for publication in publications:
        body = json.loads(publication.request.body)
        # A change's own token is in its description; a title may carry an older one (a draft started before a
        # newer title was published sends the title it was started with: what its approver saw and approved).
        tokens = set(TOKEN_RE.findall(str(body.get("description") or "")))
        if len(tokens) != 1:
            notes.append(f"publication #{publication.pk}: {len(tokens)} tokens in its description; not judged")
            continue
        token = tokens.pop()
        creates = publication.request.method == "POST"
        item = Judged(
            publication=publication,
            token=token,
            kind="create" if creates else "update",
            body=body,
            target=publication.remote_id if creates else publication.target_remote_id,
            effects=effects.get(token, []),
        )
        judged.append(item)

    for item in judged:
        publication, pk = item.publication, str(item.publication.pk)
        told = pk in notified
        landed = len(item.effects)
        if item.kind == "create":
            elsewhere = [e for e in item.effects if e[1] != 0] or (
                [e for e in item.effects if str(e[0]) != item.target] if landed == 1 and item.target else []
            )
        else:
            elsewhere = [e for e in item.effects if str(e[0]) != item.target]
        if publication.pk in moving:
            item.category = "stuck"
        elif elsewhere:
            item.category = "misdirected"
            item.note = f"its words are on {elsewhere}, the publication says #{item.target or '?'}"
        elif landed == 1:
            item.category = "once"
            if publication.state == "failed":
                notes.append(
                    f"publication #{pk} ({item.token}) is failed (people were told nothing was published), "
                    "yet it is on the sandbox once"
                )
            elif publication.state != "published":
                item.note = f"on the sandbox once, state {publication.state}"
        elif landed >= 2:
            detected = publication.state == "duplicate_detected" or pk in duplicate_audited
            if detected and told:
                item.category = "detected duplicate"
            elif _landed_after_the_watch(item, sandbox):
                item.category = "after the watch"
                item.note = "its last copy landed after the watch for a late twin had ended (not promised)"
            else:
                item.category = "undetected duplicate"
                if publication.state in TOLD_STATES and told:
                    item.note = f"told only as {publication.state}: {publication.last_error[:200]!r}"
        elif publication.state in TOLD_STATES and told:
            item.category = "told"
        elif publication.state == "queued" and _held_by_told(item, judged, notified):
            item.category = "held"
        else:
            item.category = "lost"

    out_of_order, wrong_final, final_checked = _per_incident(judged, sandbox)
    return Verdict(judged, out_of_order, wrong_final, final_checked, notes)


def _landed_after_the_watch(item: Judged, sandbox: dict[int, Any]) -> bool:
    """The README's limit: a copy that lands after the watch window (PUBLISH_WATCH_WINDOWS after publishing) is not
    promised to be found. Only for a publication that knew two of its sends may land (so a watch was due), and
    measured on the sandbox's own clock (the same machine's): the copy that landed last, against the window's end."""
    from datetime import datetime, timedelta

    from incidents.models import PublishAttempt

    publication = item.publication
    if publication.state != "published" or publication.published_at is None:
        return False
    maybe_landed = PublishAttempt.objects.filter(
        publication=publication, kind="send", outcome__in=("published", "unknown", "lost", "late")
    ).count()
    if maybe_landed < 2:
        return False
    if item.kind == "create":
        landed = [sandbox[incident_id].created_at for incident_id, _ in item.effects]
    else:
        landed = [
            datetime.fromisoformat(sandbox[incident_id].updates[position]["created_at"])
            for incident_id, position in item.effects
        ]
    return max(landed) > publication.published_at + timedelta(seconds=WATCH_END)


def _held_by_told(item: Judged, judged: list[Judged], notified: set[str]) -> bool:
    """Queued behind a failed or needs-attention publication of the same incident whose people were told."""
    return any(
        other.kind == "update"
        and other.target == item.target
        and other.publication.pk < item.publication.pk
        and other.publication.state in HOLDING_FOR_A_HUMAN
        and str(other.publication.pk) in notified
        for other in judged
    )


def _per_incident(judged: list[Judged], sandbox: dict[int, Any]) -> tuple[list, list, int]:
    """Order of the updates on each incident, and the final state of each incident whose changes all published."""
    creates = {j.target: j for j in judged if j.kind == "create" and j.target}
    updates: dict[str, list[Judged]] = defaultdict(list)
    for item in judged:
        if item.kind == "update":
            updates[item.target].append(item)

    out_of_order = []
    for target, items in updates.items():
        remote = sandbox.get(int(target))
        if remote is None:
            continue
        pk_of = {item.token: item.publication.pk for item in items}
        seen: list[int] = []
        for entry in remote.updates:
            for token in TOKEN_RE.findall(str(entry.get("description") or "")):
                if token in pk_of and pk_of[token] not in seen:
                    seen.append(pk_of[token])
        if seen != sorted(seen):
            out_of_order.append((target, sorted(seen), seen))

    wrong_final = []
    checked = 0
    for target, create in creates.items():
        chain = [create, *sorted(updates.get(target, []), key=lambda j: j.publication.pk)]
        if any(j.publication.state != "published" or j.category != "once" for j in chain):
            continue
        remote = sandbox.get(int(target))
        if remote is None:
            continue
        checked += 1
        expected = {
            "title": create.body["title"],
            "severity": create.body["status"],
            "stage": create.body["resolution_stage"],
        }
        for item in chain[1:]:
            expected["title"] = item.body.get("title", expected["title"])
            expected["severity"] = item.body.get("status", expected["severity"])
            expected["stage"] = item.body.get("resolution_stage", expected["stage"])
        expected["resolved"] = expected["stage"] == "resolved"
        actual = {"title": remote.title, "severity": remote.status, "stage": remote.stage, "resolved": remote.resolved}
        if actual != expected:
            expected["last publication"] = chain[-1].publication.pk
            wrong_final.append((target, expected, actual))
    return out_of_order, wrong_final, checked


def evidence(item: Judged) -> str:
    """Everything a developer needs to debug one change: its publication, attempts, audit trail, and the requests
    the sandbox received carrying its token."""
    from incidents.models import AuditEvent, PublishAttempt
    from sandbox.models import SandboxIncident, SandboxRequest

    publication = item.publication
    landed = []
    for incident_id, position in item.effects:
        incident = SandboxIncident.objects.filter(pk=incident_id).first()
        if incident is not None and position < len(incident.updates):
            landed.append(f"#{incident_id} entry {position} at {incident.updates[position]['created_at']}")
    published = f"{publication.published_at:%H:%M:%S.%f}"[:-3] if publication.published_at else "never"
    lines = [
        f"publication #{publication.pk} (draft #{publication.draft_id}, {item.kind} {item.token}, "
        f"{publication.request.method} {publication.request.path}): state {publication.state}, published {published}; "
        f"on the sandbox {len(item.effects)}x: {', '.join(landed) or '-'}; "
        f"last error: {publication.last_error[:300]!r}"
    ]
    for attempt in PublishAttempt.objects.filter(publication=publication).order_by("number"):
        finished = f"{attempt.finished_at:%H:%M:%S.%f}"[:-3] if attempt.finished_at else "(open)"
        lines.append(
            f"    attempt {attempt.number:>2} {attempt.kind:<9} {attempt.method} {attempt.path} "
            f"{attempt.started_at:%H:%M:%S.%f}"[:-3]
            + f" -> {finished} status {attempt.status_code or '-'} {attempt.outcome or '(none)'} "
            f"{attempt.error[:200]!r}"
        )
    for event in AuditEvent.objects.filter(target_type="publication", target_id=str(publication.pk)).order_by("seq"):
        lines.append(f"    audit {event.created_at:%H:%M:%S.%f}"[:-3] + f" {event.action}: {event.summary[:200]}")
    for request in SandboxRequest.objects.filter(body__contains=item.token).order_by("id"):
        fault = f" [fault: {request.fault}]" if request.fault else ""
        lines.append(
            f"    sandbox #{request.pk} {request.created_at:%H:%M:%S.%f}"[:-3]
            + f" {request.method} {request.path} -> {request.status or 'dropped'}{fault}"
        )
    return "\n".join(lines)


def audit_chain() -> tuple[bool, str]:
    """The audit log's hash chain, verified after all that chaos."""
    from incidents.audit import verify_chain

    result = verify_chain()
    return result.ok, result.message()


# --- The report ----------------------------------------------------------------------------------------------------
def report(
    *, verdict: Verdict, progress: Progress, chaos: Chaos, wall: float, settled: bool, audit: str, seed: int
) -> None:
    from incidents.models import Notification
    from sandbox.models import SandboxRequest

    count = verdict.count
    states = Counter(j.publication.state for j in verdict.judged)
    told_states = ", ".join(f"{states[s]} {s}" for s in TOLD_STATES if states[s]) or "none"
    mail = Counter(Notification.objects.filter(kind__startswith="publication_").values_list("state", flat=True))
    taken = SandboxRequest.objects.exclude(fault="").count()
    minutes, seconds = divmod(round(wall), 60)
    rows = [
        (
            "approved",
            f"{progress.approved} ({progress.creates} creates, {progress.updates} updates of which "
            f"{progress.resolves} resolves; seed {seed})",
        ),
        ("published once", count("once")),
        ("undetected duplicates", _undetected(verdict)),
        ("detected and notified duplicates", count("detected duplicate")),
        ("duplicates landed after the watch", f"{count('after the watch')} (not promised: README, Guarantees)"),
        ("lost", count("lost")),
        ("misdirected (landed elsewhere)", count("misdirected")),
        ("out of order (incidents)", len(verdict.out_of_order)),
        ("wrong final state (incidents)", f"{len(verdict.wrong_final)} of {verdict.final_checked} checked"),
        ("needs attention / failed (told)", f"{count('told')} not on IsDown ({told_states} in all)"),
        ("held behind a told publication", count("held")),
        ("stuck (not settled in time)", count("stuck")),
        ("publication emails", ", ".join(f"{n} {s}" for s, n in sorted(mail.items())) or "none"),
        ("worker kills", chaos.kills),
        ("Redis restarts", chaos.redis_restarts),
        ("processes that died on their own", len(chaos.died_on_their_own)),
        ("database errors people met", f"{sum(progress.database_errors.values())} (each clicked again; see the notes)"),
        ("faults injected", f"{sum(chaos.faults.values())} ({taken} requests met one)"),
        *_fault_rows(chaos.faults),
        ("audit chain", audit),
        ("wall time", f"{minutes}m {seconds:02d}s" + ("" if settled else " (deadline hit before settling)")),
    ]
    width = max(len(label) for label, _ in rows)
    print("\n" + "=" * 78)
    print("CHAOS SOAK")
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    print("=" * 78, flush=True)
    for line in verdict.notes:
        print(f"note: {line}")
    for text in chaos.died_on_their_own:
        print(f"note: died on its own: {text}")
    for text in progress.approval_errors:
        print(f"note: approval failed: {text}")
    for (what, error), times in progress.database_errors.most_common():
        print(f"note: {times} x {what}: {error} (the person clicked again)")


def _undetected(verdict: Verdict) -> str:
    undetected = [j for j in verdict.judged if j.category == "undetected duplicate"]
    told = sum(1 for j in undetected if j.note.startswith("told only as"))
    told_as = f" ({told} of them told, but as needs attention, not as a duplicate)" if told else ""
    return f"{len(undetected)}{told_as}"


def _fault_rows(faults: Counter[tuple[str, str]]) -> list[tuple[str, str]]:
    kinds: dict[str, Counter[str]] = defaultdict(Counter)
    for (kind, method), n in faults.items():
        kinds[kind][method] += n
    return [
        (f"  {kind}", f"{sum(methods.values())} ({', '.join(f'{m} {n}' for m, n in sorted(methods.items()))})")
        for kind, methods in sorted(kinds.items())
    ]


def print_offenders(verdict: Verdict) -> None:
    by_target: dict[str, list[Judged]] = defaultdict(list)
    for item in verdict.judged:
        by_target[item.target].append(item)
    for category in ("undetected duplicate", "lost", "misdirected", "stuck"):
        for item in (j for j in verdict.judged if j.category == category):
            print(f"\n--- {category.upper()}: {item.note}\n{evidence(item)}")
    for target, approved, seen in verdict.out_of_order:
        print(f"\n--- OUT OF ORDER on IsDown incident #{target}: approved {approved}, on the sandbox {seen}")
        for item in sorted(by_target[target], key=lambda j: j.publication.pk):
            if item.kind == "update":
                print(evidence(item))
    for target, expected, actual in verdict.wrong_final:
        print(f"\n--- WRONG FINAL STATE of IsDown incident #{target}:\n    expected {expected}\n    actual   {actual}")
        for item in sorted(by_target[target], key=lambda j: j.publication.pk):
            print(evidence(item))
    print_beyond_the_promise(verdict)
    sys.stdout.flush()


def print_beyond_the_promise(verdict: Verdict) -> None:
    """Not counted against the promise, but shown: each one is a duplicate that subscribers saw and nobody was told
    of."""
    for item in (j for j in verdict.judged if j.category == "after the watch"):
        print(f"\n--- LANDED AFTER THE WATCH (not promised): {item.note}\n{evidence(item)}")


# --- Main ---------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="approved changes (default 300)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the scenario and the chaos (default: random)")
    parser.add_argument("--workers", type=int, default=4, help="Celery worker processes (default 4)")
    parser.add_argument("--db", default=None, help="name of the fresh database (default isdown_admin_chaos_<pid>)")
    parser.add_argument("--minutes-limit", type=float, default=30.0, help="deadline of the whole run (default 30)")
    parser.add_argument("--fault-interval", type=float, default=0.5, help="mean seconds between faults (default 0.5)")
    parser.add_argument("--keep-db", action="store_true", help="keep the database for a look afterwards")
    args = parser.parse_args(argv)
    if args.n < 1 or args.workers < 1:
        parser.error("--n and --workers must be at least 1")
    return args


def _raise_interrupted(signum: int, frame: Any) -> None:
    STOP_REQUESTED.set()
    raise Interrupted(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    db_name = args.db or f"isdown_admin_chaos_{os.getpid()}"
    log_dir = Path(tempfile.mkdtemp(prefix="isdown-chaos-"))
    say(f"chaos soak: N={args.n}, seed {seed}, {args.workers} worker(s); logs in {log_dir}")
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)  # even when started with SIGINT ignored (a background job)
    deadline = STARTED + args.minutes_limit * 60
    world = World(db_name=db_name, workers=args.workers, keep_db=args.keep_db, log_dir=log_dir)
    chaos: Chaos | None = None
    approvers: list[Approver] = []
    progress = Progress(n=args.n)
    try:
        world.start_all()
        # This process is one of the world's: the same settings, read when Django sets up.
        os.environ.clear()
        os.environ.update({**world.env, "LOG_LEVEL": "WARNING"})
        import django

        django.setup()
        _log_to(log_dir / "driver.log")
        people = seed_people()
        rng = random.Random(seed)
        inbox: queue.Queue[Change] = queue.Queue()
        approvers = [Approver(user, inbox, progress) for user in people.approvers]
        chaos = Chaos(
            world=world, rng=random.Random(seed + 1), progress=progress, n=args.n, interval=args.fault_interval
        )
        for thread in (*approvers, chaos):
            thread.start()
        responder = Responder(
            people=people, rng=rng, progress=progress, inbox=inbox, max_in_flight=max(8, 3 * args.workers)
        )
        responder.run(deadline)
        for thread in approvers:
            thread.join()
        say(f"all {progress.approved} approved; stopping the chaos")
        chaos.finishing = True
        chaos.stop.set()
        chaos.join()
        from sandbox.faults import clear_faults

        clear_faults()
        settled = settle(max(deadline, time.monotonic() + 60), revive=chaos.revive)
        verdict = judge()
        audit_ok, audit_message = audit_chain()
        report(
            verdict=verdict,
            progress=progress,
            chaos=chaos,
            wall=time.monotonic() - STARTED,
            settled=settled,
            audit=audit_message,
            seed=seed,
        )
        if chaos.errors:
            print("\nThe chaos itself failed (this run proves less than it should):", *chaos.errors, sep="\n")
        if verdict.failed or not audit_ok:
            print_offenders(verdict)
            print(f"\nFAILED: the promise was broken (seed {seed}); logs in {log_dir}", flush=True)
            return 1
        if chaos.errors:
            return 2
        print_beyond_the_promise(verdict)
        print(f"\nOK: every approved change reached the sandbox once, in order, or a human was told; logs in {log_dir}")
        return 0
    except SetupError as exc:
        print(f"chaos soak could not start: {exc}; logs in {log_dir}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM (Interrupted)
        print(f"\nchaos soak interrupted; cleaning up (logs in {log_dir})", file=sys.stderr)
        return 2
    finally:
        # The clean-up below is not to be interrupted.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        progress.no_more.set()
        if chaos is not None:
            chaos.stop.set()
            if chaos.is_alive():
                chaos.join(timeout=30)
        _close_connections()
        world.close()
        say(
            "stopped every process"
            + ("" if not world.db_created else f"; database {db_name} {'kept' if args.keep_db else 'dropped'}")
        )


def _log_to(path: Path) -> None:
    """This process's own log lines (an enqueue refused while Redis is down, ...) go to a file, not the table."""
    import logging

    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)


def _close_connections() -> None:
    try:
        from django.db import connections

        connections.close_all()
    except Exception:  # Django may never have been set up
        return


if __name__ == "__main__":
    sys.exit(main())
