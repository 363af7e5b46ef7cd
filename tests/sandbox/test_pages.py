"""The staff control page and the public status page."""

from __future__ import annotations

import pytest
from django.test import Client

from sandbox import faults
from sandbox.models import SandboxFault, SandboxIncident

from .conftest import API

CONTROL = "/sandbox/"


def test_control_page_sends_anonymous_users_to_login(db):
    response = Client().get(CONTROL)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize("persona", ["responder", "approver", "auditor"])
def test_control_page_is_403_for_non_staff(request, as_user, persona):
    user = request.getfixturevalue(persona)
    assert as_user(user).get(CONTROL).status_code == 403
    assert as_user(user).post(CONTROL, {"kind": "drop", "count": 1}).status_code == 403
    assert not SandboxFault.objects.exists()


def test_control_page_shows_faults_log_and_status_links(as_user, staff, call, sandbox_service):
    call("POST", API, {"service_id": 1001, "title": "logged <b>request</b>"})
    faults.add_fault(kind="status", status=503, count=2, method="POST")
    response = as_user(staff).get(CONTROL)
    assert response.status_code == 200
    html = response.content.decode()
    assert "status 503" in html and "on POST" in html
    assert "POST /sandbox/api/v2/incidents" in html
    assert "&lt;b&gt;request&lt;/b&gt;" in html  # the logged body is escaped
    assert 'href="/sandbox/status/1001/"' in html
    assert "SANDBOX" in html


def test_control_form_queues_a_fault(as_user, staff):
    response = as_user(staff).post(
        CONTROL, {"kind": "status", "status": 429, "retry_after": 9, "count": 3, "method": "PATCH"}
    )
    assert response.status_code == 302
    fault = SandboxFault.objects.get()
    assert (fault.kind, fault.status, fault.retry_after, fault.remaining, fault.method) == (
        "status",
        429,
        9,
        3,
        "PATCH",
    )


@pytest.mark.parametrize(
    "data",
    [
        {"kind": "status", "count": 1},
        {"kind": "status", "status": 200, "count": 1},
        {"kind": "latency", "count": 1},
        {"kind": "drop", "count": 0},
        {"kind": "hang", "count": 1, "hang_seconds": 0},
        {"kind": "explode", "count": 1},
    ],
)
def test_control_form_refuses_incoherent_faults(as_user, staff, data):
    response = as_user(staff).post(CONTROL, data)
    assert response.status_code == 422
    assert not SandboxFault.objects.exists()


def test_control_form_hang_defaults_to_thirty_seconds(as_user, staff):
    as_user(staff).post(CONTROL, {"kind": "hang", "count": 1, "hang_seconds": ""})
    assert SandboxFault.objects.get().hang_seconds == 30.0


def test_control_form_needs_csrf(staff):
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    assert client.post(CONTROL, {"kind": "drop", "count": 1}).status_code == 403
    page = client.get(CONTROL)
    token = page.context["csrf_token"]
    assert client.post(CONTROL, {"kind": "drop", "count": 1, "csrfmiddlewaretoken": str(token)}).status_code == 302
    assert SandboxFault.objects.count() == 1


def test_control_clear_removes_every_fault(as_user, staff):
    faults.add_fault(kind="drop", count=5)
    faults.add_fault(kind="latency", latency_ms=10)
    assert as_user(staff).post(CONTROL, {"clear": "1"}).status_code == 302
    assert not SandboxFault.objects.exists()


def test_status_page_is_public_and_shows_open_and_resolved_with_timelines(call, sandbox_service):
    open_id = call("POST", API, {"service_id": 1001, "title": "Open one", "description": "Looking"}).json()["data"][
        "id"
    ]
    call("PATCH", f"{API}/{open_id}", {"description": "Found the cause", "resolution_stage": "identified"})
    done_id = call("POST", API, {"service_id": 1001, "title": "Done one"}).json()["data"]["id"]
    call("PATCH", f"{API}/{done_id}", {"description": "All good", "resolution_stage": "resolved"})

    response = Client().get("/sandbox/status/1001/")
    assert response.status_code == 200
    html = response.content.decode()
    open_section, resolved_section = html.split("Recently resolved")
    assert "Open one" in open_section and "Found the cause" in open_section and "Looking" in open_section
    assert "Done one" in resolved_section and "All good" in resolved_section
    # Newest update first in the timeline.
    assert open_section.index("Found the cause") < open_section.index("Looking")


def test_status_page_escapes_what_the_api_was_sent(call, sandbox_service):
    call("POST", API, {"service_id": 1001, "title": "<script>alert(1)</script>", "description": "<img src=x>"})
    html = Client().get("/sandbox/status/1001/").content.decode()
    assert "<script>alert(1)</script>" not in html and "<img src=x>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;img src=x&gt;" in html


def test_status_page_all_operational_and_unknown_service_404(sandbox_service):
    assert "All systems operational" in Client().get("/sandbox/status/1001/").content.decode()
    assert Client().get("/sandbox/status/4242/").status_code == 404
    assert not SandboxIncident.objects.exists()
