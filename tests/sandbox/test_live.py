"""The real client against the sandbox over real HTTP (live_server): the whole lifecycle, and every fault."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from django.core.management import call_command

from incidents.isdown import IsDownClient, NotSent, OutcomeUnknown, RateLimited, Rejected
from sandbox.models import SandboxFault, SandboxIncident, SandboxRequest

from .test_api import DOC_REQUEST, DOC_RESPONSE, shape


def logged() -> list[tuple[str, int | None, str]]:
    return list(SandboxRequest.objects.order_by("id").values_list("method", "status", "fault"))


# --- The client over HTTP ----------------------------------------------------------------------------------
def test_documented_curl_example_over_http_creates_an_incident_the_status_page_shows(raw_http, live_sandbox):
    from sandbox.registry import register_service

    register_service(1234, "My API")
    response = raw_http.post("/api/v2/incidents", json=DOC_REQUEST)
    assert response.status_code == 201
    assert shape(response.json()) == shape(DOC_RESPONSE)

    page = httpx.get(f"{live_sandbox}/status/1234/")  # no login, no key: public
    assert page.status_code == 200
    assert "API response times elevated" in page.text
    assert "We are seeing elevated response times on our API." in page.text


def test_client_lifecycle_create_update_resolve_list_delete(isdown):
    created = isdown.create_incident(service_id=1001, title="API slow", description="Looking")
    assert created.stage == "investigating" and not created.resolved

    updated = isdown.update_incident(created.id, description="Found it", resolution_stage="identified")
    assert [u.stage for u in updated.updates] == ["investigating", "identified"]

    resolved = isdown.update_incident(created.id, description="Fixed", resolution_stage="resolved", status="major")
    assert resolved.resolved and resolved.resolved_at is not None and resolved.severity == "major"
    assert isdown.get_incident(created.id) == resolved

    second = isdown.create_incident(service_id=1001, title="Another")
    assert [i.id for i in isdown.list_incidents(1001)] == [second.id, created.id]

    isdown.delete_incident(created.id)
    isdown.delete_incident(created.id)  # already gone counts as done
    with pytest.raises(Rejected) as caught:
        isdown.get_incident(created.id)
    assert caught.value.status_code == 404


def test_client_surfaces_isdowns_422_detail(isdown):
    with pytest.raises(Rejected) as caught:
        isdown.create_incident(service_id=1001, title="x", status="critical")
    assert caught.value.status_code == 422
    assert caught.value.detail == "Status must be 'minor' or 'major'"


def test_wrong_key_is_rejected_401_and_never_logged(live_sandbox):
    with IsDownClient(live_sandbox, "not-the-key", timeout=5) as client, pytest.raises(Rejected) as caught:
        client.create_incident(service_id=1001, title="x")
    assert caught.value.status_code == 401
    assert not SandboxIncident.objects.exists()
    (entry,) = SandboxRequest.objects.all()
    assert "not-the-key" not in entry.body + entry.path


def test_nothing_listening_is_not_sent():
    with IsDownClient("http://127.0.0.1:9", "k", timeout=1) as client, pytest.raises(NotSent):
        client.get_incident("1")


# --- Faults ------------------------------------------------------------------------------------------------
def test_status_503_for_two_requests_then_normal_and_logged(isdown):
    call_command("sandbox_fault", status=503, count=2)

    for _ in range(2):
        with pytest.raises(OutcomeUnknown) as caught:  # a proxy's 503 without Retry-After: may have acted
            isdown.create_incident(service_id=1001, title="x")
        assert caught.value.status_code == 503
        assert "<h1>503 Service Unavailable</h1>" in caught.value.excerpt  # HTML, like a proxy
    isdown.create_incident(service_id=1001, title="x")

    assert SandboxIncident.objects.count() == 1  # the faulted requests were not processed
    assert logged() == [("POST", 503, "status 503"), ("POST", 503, "status 503"), ("POST", 201, "")]
    assert not SandboxFault.objects.exists()


def test_status_429_carries_retry_after(isdown):
    call_command("sandbox_fault", status=429, retry_after=7)
    with pytest.raises(RateLimited) as caught:
        isdown.create_incident(service_id=1001, title="x")
    assert caught.value.retry_after == 7.0
    assert caught.value.detail == "Too Many Requests (sandbox fault)"


def test_status_503_with_retry_after_is_rate_limited(isdown):
    call_command("sandbox_fault", status=503, retry_after=3)
    with pytest.raises(RateLimited) as caught:
        isdown.get_incident("1")
    assert caught.value.retry_after == 3.0


@pytest.mark.parametrize("status", [500, 502, 504])
def test_server_error_faults_are_outcome_unknown_and_not_processed(isdown, status):
    call_command("sandbox_fault", status=status)
    with pytest.raises(OutcomeUnknown) as caught:
        isdown.create_incident(service_id=1001, title="x")
    assert caught.value.status_code == status
    assert not SandboxIncident.objects.exists()


def test_fault_for_one_method_leaves_others_alone(isdown):
    call_command("sandbox_fault", status=500, method="patch")
    created = isdown.create_incident(service_id=1001, title="x")
    isdown.get_incident(created.id)
    with pytest.raises(OutcomeUnknown):
        isdown.update_incident(created.id, title="y")
    assert isdown.update_incident(created.id, title="y").title == "y"
    assert [m for m, _, fault in logged() if fault] == ["PATCH"]


def test_latency_delays_then_processes(isdown):
    call_command("sandbox_fault", latency=400)
    started = time.monotonic()
    incident = isdown.create_incident(service_id=1001, title="slow but fine")
    assert time.monotonic() - started >= 0.4
    assert SandboxIncident.objects.filter(pk=incident.id).exists()
    assert logged() == [("POST", 201, "latency 400 ms")]


def test_drop_closes_the_connection_without_processing(isdown):
    call_command("sandbox_fault", drop=True)
    with pytest.raises(OutcomeUnknown) as caught:
        isdown.create_incident(service_id=1001, title="dropped")
    # The socket is shut down before any byte of an answer: httpx sees RemoteProtocolError, not a status.
    assert caught.value.detail.startswith("RemoteProtocolError")
    assert caught.value.status_code is None
    assert not SandboxIncident.objects.exists()
    assert logged() == [("POST", None, "drop")]
    isdown.create_incident(service_id=1001, title="next one is fine")  # and the fault is used up


def test_hang_applies_the_change_then_answers_too_late(live_sandbox, sandbox_key):
    call_command("sandbox_fault", hang=True, hang_seconds=2)
    with IsDownClient(live_sandbox, sandbox_key, timeout=0.5) as client:
        started = time.monotonic()
        with pytest.raises(OutcomeUnknown) as caught:
            client.create_incident(service_id=1001, title="applied but unanswered")
        assert time.monotonic() - started < 1.5  # the client gave up at its timeout, not after the hang
    assert caught.value.detail.startswith("ReadTimeout")
    # Committed before the sleep: the incident exists while the server is still hanging.
    incident = SandboxIncident.objects.get()
    assert incident.title == "applied but unanswered"
    assert logged() == [("POST", 201, "hang 2 s")]


def test_hang_on_patch_appends_the_update(live_sandbox, sandbox_key, isdown):
    created = isdown.create_incident(service_id=1001, title="x")
    call_command("sandbox_fault", hang=True, hang_seconds=2, method="PATCH")
    with IsDownClient(live_sandbox, sandbox_key, timeout=0.5) as client, pytest.raises(OutcomeUnknown):
        client.update_incident(created.id, description="Fixed", resolution_stage="resolved")
    reconciled = isdown.get_incident(created.id)  # what a publisher would do: look, don't re-send
    assert reconciled.resolved and reconciled.updates[-1].description == "Fixed"


def test_concurrent_requests_consume_a_fault_exactly_count_times(live_sandbox, sandbox_key):
    call_command("sandbox_fault", status=503, count=3)
    workers, barrier = 8, threading.Barrier(8)
    statuses: list[int] = []
    lock = threading.Lock()

    def post() -> None:
        with httpx.Client(base_url=live_sandbox, headers={"Authorization": f"Bearer {sandbox_key}"}) as http:
            barrier.wait(timeout=10)
            status = http.post("/api/v2/incidents", json={"service_id": 1001, "title": "race"}, timeout=10).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=post) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)

    assert sorted(statuses) == [201] * 5 + [503] * 3
    assert SandboxIncident.objects.count() == 5
    assert not SandboxFault.objects.exists()
