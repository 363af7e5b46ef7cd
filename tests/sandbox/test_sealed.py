"""The sandbox's control page and its faults are for superusers, and every fault queued or cleared is audited."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils.timezone import now

from incidents.models import AuditEvent
from sandbox import faults
from sandbox.models import SandboxFault, SandboxIncident, SandboxRequest
from sandbox.registry import register_service
from tests.factories import UserFactory

CONTROL = "/sandbox/"


@pytest.fixture
def plain_staff(db):
    """A staff user who is not a superuser (and is on no team)."""
    return UserFactory(username="plain-staff", is_staff=True, is_superuser=False)


def sandbox_events() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action__startswith="sandbox.").order_by("seq"))


def test_control_page_is_403_with_a_message_for_staff_who_are_not_superusers(as_user, plain_staff):
    SandboxRequest.objects.create(method="POST", path="/sandbox/api/v2/incidents", body="another team's words")
    client = as_user(plain_staff)
    response = client.get(CONTROL)
    assert response.status_code == 403
    html = response.content.decode()
    assert "superusers only" in html
    assert "another team's words" not in html


@pytest.mark.parametrize("data", [{"kind": "hang", "count": 1000}, {"clear": "1"}])
def test_staff_who_are_not_superusers_can_neither_queue_nor_clear_faults(as_user, plain_staff, data):
    faults.add_fault(kind="drop")
    assert as_user(plain_staff).post(CONTROL, data).status_code == 403
    assert SandboxFault.objects.count() == 1
    assert [event.action for event in sandbox_events()] == ["sandbox.fault_added"]


def test_superusers_see_the_control_page(as_user, staff):
    assert staff.is_superuser
    assert as_user(staff).get(CONTROL).status_code == 200


def test_sandbox_tables_are_hidden_from_staff_in_the_admin(as_user, plain_staff):
    from django.contrib.auth.models import Permission

    plain_staff.user_permissions.set(Permission.objects.filter(content_type__app_label="sandbox"))
    client = as_user(plain_staff)
    assert client.get("/admin/sandbox/sandboxrequest/").status_code == 403
    assert client.get("/admin/sandbox/sandboxfault/add/").status_code == 403


def test_faults_cannot_be_added_or_changed_in_the_admin_even_by_superusers(as_user, staff):
    fault = faults.add_fault(kind="drop")
    client = as_user(staff)
    assert client.get("/admin/sandbox/sandboxfault/").status_code == 200
    assert client.get("/admin/sandbox/sandboxfault/add/").status_code == 403
    client.post(f"/admin/sandbox/sandboxfault/{fault.pk}/change/", {"kind": "hang", "remaining": 1000})
    fault.refresh_from_db()
    assert (fault.kind, fault.remaining) == ("drop", 1)


def test_queuing_a_fault_on_the_control_page_is_audited_as_the_user(as_user, staff):
    response = as_user(staff).post(CONTROL, {"kind": "status", "status": 503, "count": 2, "method": "POST"})
    assert response.status_code == 302
    fault = SandboxFault.objects.get()
    (event,) = sandbox_events()
    assert event.action == "sandbox.fault_added"
    assert (event.actor_id, event.actor_label) == (staff.pk, "staff")
    assert event.team_id is None
    assert (event.target_type, event.target_id) == ("sandboxfault", str(fault.pk))
    assert "status 503" in event.summary and "on POST" in event.summary


def test_clearing_faults_on_the_control_page_is_audited_as_the_user(as_user, staff):
    faults.add_fault(kind="drop", count=3)
    faults.add_fault(kind="latency", latency_ms=5)
    assert as_user(staff).post(CONTROL, {"clear": "1"}).status_code == 302
    event = sandbox_events()[-1]
    assert event.action == "sandbox.faults_cleared"
    assert (event.actor_id, event.team_id) == (staff.pk, None)
    assert event.summary == "Cleared 2 sandbox fault(s)"
    assert event.context["cleared"] == 2


def test_a_refused_fault_is_neither_queued_nor_audited(as_user, staff):
    response = as_user(staff).post(CONTROL, {"kind": "drop", "count": 1, "retry_after": 5})
    assert response.status_code == 422
    assert "only goes with a status fault" in response.content.decode()
    assert not SandboxFault.objects.exists()
    assert sandbox_events() == []


def test_the_command_audits_queuing_and_clearing_as_the_command(db):
    call_command("sandbox_fault", "--hang", "--count", "2", stdout=StringIO())
    call_command("sandbox_fault", "--clear", stdout=StringIO())
    added, cleared = sandbox_events()
    assert (added.action, added.actor_id, added.actor_label) == ("sandbox.fault_added", None, "system:command")
    assert (cleared.action, cleared.actor_label, cleared.team_id) == ("sandbox.faults_cleared", "system:command", None)


def test_the_form_leaves_every_check_to_add_fault(as_user, staff, monkeypatch):
    """The form reads types only; add_fault decides, and its refusal is what the page shows."""
    calls = []

    def refuse(**arguments):
        calls.append(arguments)
        raise faults.FaultError("refused by add_fault", "count")

    monkeypatch.setattr(faults, "add_fault", refuse)
    response = as_user(staff).post(CONTROL, {"kind": "drop", "count": 999_999})
    assert response.status_code == 422
    assert "refused by add_fault" in response.content.decode()
    assert calls and calls[0]["count"] == 999_999 and calls[0]["actor"] == staff


@pytest.mark.parametrize(
    "arguments",
    [
        {"kind": "drop", "count": 1001},
        {"kind": "status", "status": 503, "retry_after": 86_401},
        {"kind": "latency", "latency_ms": 600_001},
        {"kind": "hang", "hang_seconds": 600.5},
        {"kind": "hang", "hang_seconds": float("inf")},
        {"kind": "drop", "count": True},
    ],
)
def test_add_fault_refuses_values_out_of_bounds_before_the_database_sees_them(db, arguments):
    with pytest.raises(faults.FaultError):
        faults.add_fault(**arguments)
    assert not SandboxFault.objects.exists()


def test_the_control_page_needs_a_signed_in_user_and_the_api_does_not(db):
    assert Client().get(CONTROL).status_code == 302
    assert Client().get("/sandbox/api/v2/incidents").status_code == 401


@pytest.mark.parametrize("selected", ["", "x", "1.5"])
def test_an_admin_action_on_a_selection_that_is_no_id_is_refused_with_a_message(as_user, staff, selected):
    incident_id = SandboxIncident.objects.create(
        service=register_service(1001, "API"), title="t", created_at=now(), updated_at=now()
    ).pk
    data = {"action": "delete_selected", "_selected_action": [str(incident_id), selected], "index": "0"}
    response = as_user(staff).post("/admin/sandbox/sandboxincident/", data, follow=True)
    assert response.status_code == 200
    assert "not an id" in response.content.decode()
    assert SandboxIncident.objects.filter(pk=incident_id).exists()
