"""Shared fixtures: the personas of every test, on two teams, against the real PostgreSQL and Redis.

Platform team: `responder`, `approver`, `approver2`, `auditor`; its services API (1001) and Dashboard (1002).
Data team: `outsider` (a responder there), service Pipeline (2001). `staff` is a Django staff user.

The database roles are production's: the owner (DATABASE_OWNER_URL) creates, migrates, flushes and drops the
test database; every test runs as the app's least-privilege role (DATABASE_URL). A test that must go around the
audit log's protections says so and uses ``admin_db`` (a superuser) or the owner.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.db import connections
from django.test import Client, TransactionTestCase
from django.test.utils import override_settings
from kombu.exceptions import OperationalError
from pytest_django.fixtures import _disable_migrations, _get_databases_for_setup

from incidents import enqueue
from incidents.models import Role
from isdown_admin import preflight

from .factories import PASSWORD, MembershipFactory, ServiceFactory, TeamFactory, UserFactory

APP_URL, OWNER_URL, ADMIN_URL = preflight.urls()
# The suite reads the events it records at once: each is sealed inside its own transaction (audit.py), in this
# process and in every worker or server a test starts. Tests of the sealer itself use ``deferred_sealing``.
os.environ["AUDIT_SEAL_INLINE"] = "1"


def use_role(url: str) -> None:
    """Point the default connection at another role of the same database (the next query reconnects)."""
    connection = connections["default"]
    connection.close()
    role = preflight.params(url)
    connection.settings_dict["USER"] = role["user"]
    connection.settings_dict["PASSWORD"] = role["password"] or ""


@contextmanager
def as_owner() -> Iterator[None]:
    use_role(OWNER_URL)
    try:
        yield
    finally:
        use_role(APP_URL)


@pytest.fixture(scope="session")
def django_db_setup(
    request,
    django_test_environment,
    django_db_blocker,
    django_db_use_migrations,
    django_db_keepdb,
    django_db_createdb,
    django_db_modify_db_settings,
):
    """pytest-django's set-up, as the owner; then every test runs as the app's role."""
    from django.test.utils import setup_databases, teardown_databases

    if not django_db_use_migrations:
        _disable_migrations()
    keep = {"keepdb": True} if django_db_keepdb and not django_db_createdb else {}
    aliases, serialized_aliases = _get_databases_for_setup(request.session.items)
    with django_db_blocker.unblock():
        use_role(OWNER_URL)
        config = setup_databases(
            verbosity=request.config.option.verbose,
            interactive=False,
            aliases=aliases,
            serialized_aliases=serialized_aliases,
            **keep,
        )
        use_role(APP_URL)
    yield
    with django_db_blocker.unblock():
        use_role(OWNER_URL)
        if not django_db_keepdb:
            teardown_databases(config, verbosity=request.config.option.verbose)


@pytest.fixture(scope="session", autouse=True)
def fast_password_hashing() -> Iterator[list[str]]:
    """Passwords hashed with MD5 in this process: every persona has one and many tests sign in, and PBKDF2 costs
    a noticeable fraction of a second each time. The live server runs in this process and checks them the same
    way; the processes tests start (workers, gunicorn, the chaos soak) hash as the settings say. Yields the
    settings' own hashers, for ``real_password_hashing``."""
    own = list(settings.PASSWORD_HASHERS)
    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        yield own


@pytest.fixture
def real_password_hashing(fast_password_hashing: list[str]) -> Iterator[None]:
    """The settings' own password hashers for this test: for passwords another process must check (a production
    server started by the test), and for tests of how passwords are stored."""
    with override_settings(PASSWORD_HASHERS=fast_password_hashing):
        yield


def tamper_as_owner(sql: str, params: list, *, table: str = "incidents_auditevent") -> None:
    """Change audit rows (or checkpoint rows: ``table``) as only the table's owner can: switch the append-only
    trigger off, change, switch it back on. Committed: call it from transactional tests only."""
    with as_owner(), connections["default"].cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER {table}_append_only")
        try:
            cursor.execute(sql, params)
        finally:
            cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER {table}_append_only")


_flush = TransactionTestCase._fixture_teardown


INSERT_ONLY_TABLES = ("incidents_auditevent", "incidents_auditcheckpoint", "incidents_auditentry")


def _flush_as_owner(self) -> None:
    """Transactional tests end with a flush: only the owner may empty the audit and checkpoint tables, and only
    with their TRUNCATE triggers switched off for the moment (the one place the tests go around them)."""
    with as_owner():
        with connections["default"].cursor() as cursor:
            for table in INSERT_ONLY_TABLES:
                cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER {table}_no_truncate")
        try:
            _flush(self)
        finally:
            with connections["default"].cursor() as cursor:
                for table in INSERT_ONLY_TABLES:
                    cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER {table}_no_truncate")


TransactionTestCase._fixture_teardown = _flush_as_owner


@pytest.fixture(autouse=True)
def inline_sealing() -> Iterator[None]:
    """Every event sealed in the transaction that records it (AUDIT_SEAL_INLINE): see ``deferred_sealing``."""
    with override_settings(AUDIT_SEAL_INLINE=True):
        yield


@pytest.fixture
def deferred_sealing(inline_sealing, transactional_db) -> Iterator[None]:
    """Production's appends: an entry in the caller's transaction, sealed by ``audit.seal`` after commits (the
    post-commit run is off, so a test decides when a sealer runs)."""
    with override_settings(AUDIT_SEAL_INLINE=False, AUDIT_SEAL_ON_COMMIT=False):
        yield


@pytest.fixture(autouse=True)
def checkpoint_sink(tmp_path) -> Iterator[Path]:
    """Each test appends its signed checkpoints to a sink file of its own (the database is emptied between tests;
    a shared sink would name checkpoints that are no longer in it)."""
    path = tmp_path / "audit-checkpoints.jsonl"
    with override_settings(AUDIT_CHECKPOINT_SINK=str(path)):
        yield path


@pytest.fixture
def admin_db(transactional_db) -> Callable[..., psycopg.Connection]:
    """``admin_db()``: a superuser's connection to the test database, for tests that must show what only a
    superuser (or the owner) can do to it."""
    opened: list[psycopg.Connection] = []

    def connect(*, autocommit: bool = True) -> psycopg.Connection:
        connection = psycopg.connect(
            **{**preflight.params(ADMIN_URL), "dbname": connections["default"].settings_dict["NAME"]},
            autocommit=autocommit,
        )
        opened.append(connection)
        return connection

    yield connect
    for connection in opened:
        connection.close()


@pytest.fixture
def password() -> str:
    return PASSWORD


@pytest.fixture
def platform(db):
    return TeamFactory(name="Platform")


@pytest.fixture
def data_team(db):
    return TeamFactory(name="Data")


@pytest.fixture
def api_service(platform):
    return ServiceFactory(team=platform, name="API", isdown_service_id=1001)


@pytest.fixture
def dashboard_service(platform):
    return ServiceFactory(team=platform, name="Dashboard", isdown_service_id=1002)


@pytest.fixture
def pipeline_service(data_team):
    return ServiceFactory(team=data_team, name="Pipeline", isdown_service_id=2001)


def _member(username: str, team, role: str):
    user = UserFactory(username=username)
    MembershipFactory(user=user, team=team, role=role)
    return user


@pytest.fixture
def responder(platform):
    return _member("responder", platform, Role.RESPONDER)


@pytest.fixture
def approver(platform):
    return _member("approver", platform, Role.APPROVER)


@pytest.fixture
def approver2(platform):
    return _member("approver2", platform, Role.APPROVER)


@pytest.fixture
def auditor(platform):
    return _member("auditor", platform, Role.AUDITOR)


@pytest.fixture
def outsider(data_team):
    return _member("outsider", data_team, Role.RESPONDER)


@pytest.fixture
def staff(db):
    return UserFactory(username="staff", is_staff=True, is_superuser=True)


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def as_user():
    """``as_user(user)`` gives a test client signed in as that user."""
    return client_for


class NoBroker:
    """The broker, kept out of a test: every message the code under test sends (through ``enqueue``, or a task's
    ``apply_async``) is recorded in ``sent`` as ``(task name, id)`` instead of reaching Redis. Inside ``down()``
    every send fails as it does when Redis is down, for tests of what happens then."""

    def __init__(self, real_send_task: Callable[..., object] | None) -> None:
        self.sent: list[tuple[str, int]] = []
        self._real_send_task = real_send_task
        self._down = False

    def send_task(self, name: str, args=None, kwargs=None, **options):
        if self._down:
            raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        if self._real_send_task is not None:
            return self._real_send_task(name, args, kwargs, **options)
        self.sent.append((name.rsplit(".", 1)[-1], (args or [None])[0]))
        return None

    @contextmanager
    def down(self) -> Iterator[None]:
        self._down = True
        try:
            yield
        finally:
            self._down = False


@pytest.fixture(autouse=True)
def no_broker(request, monkeypatch) -> NoBroker:
    """Every test but those that start real workers (``start_worker``) keeps the broker out: what would have been
    sent is in ``no_broker.sent``. Tests with workers talk to the real Redis, except inside ``no_broker.down()``."""
    workers = "start_worker" in request.fixturenames
    broker = NoBroker(enqueue.current_app.send_task if workers else None)
    monkeypatch.setattr(enqueue.current_app, "send_task", broker.send_task)
    return broker
