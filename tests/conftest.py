"""Shared fixtures: the personas of every test, on two teams, against the real PostgreSQL and Redis.

Platform team: `responder`, `approver`, `approver2`, `auditor`; its services API (1001) and Dashboard (1002).
Data team: `outsider` (a responder there), service Pipeline (2001). `staff` is a Django staff user.
"""

from __future__ import annotations

import pytest
from django.test import Client

from incidents import enqueue
from incidents.models import Role

from .factories import PASSWORD, MembershipFactory, ServiceFactory, TeamFactory, UserFactory


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


@pytest.fixture(autouse=True)
def enqueued(request, monkeypatch) -> list[tuple[str, int]]:
    """Messages the code under test sends to the broker, as ``(task name, id)``. Tests that run real workers
    (marked ``worker``) talk to the real Redis; every other test keeps the broker out of it and can look at
    what would have been sent."""
    calls: list[tuple[str, int]] = []
    if request.node.get_closest_marker("worker") is None:

        def record(task: str, object_id: int, **options) -> bool:
            calls.append((task.rsplit(".", 1)[-1], object_id))
            return True

        monkeypatch.setattr(enqueue, "_send", record)
    return calls
