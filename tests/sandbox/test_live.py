"""The real client against the sandbox over real HTTP (live_server): the whole lifecycle, a paginated list,
every fault, and the call's one deadline (name resolution included)."""

from __future__ import annotations

import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from urllib.parse import urlsplit

import httpx
import pytest
from django.core.management import call_command

from incidents import isdown as isdown_module
from incidents.isdown import (
    IsDownClient,
    NotSent,
    OutcomeUnknown,
    RateLimited,
    Rejected,
    create_request,
    update_request,
)
from sandbox.api import iso
from sandbox.faults import add_fault
from sandbox.models import SandboxFault, SandboxIncident, SandboxRequest, SandboxService

from .test_api import DOC_REQUEST, DOC_RESPONSE, shape


def logged() -> list[tuple[str, int | None, str]]:
    return list(SandboxRequest.objects.order_by("id").values_list("method", "status", "fault"))


def create(
    client: IsDownClient,
    title: str = "x",
    *,
    severity: str = "minor",
    description: str = "",
    stage: str = "investigating",
):
    request = create_request(service_id=1001, title=title, severity=severity, description=description, stage=stage)
    return client.send(request).incident


def stored(title: str, created_at: datetime, **fields) -> SandboxIncident:
    """An incident put straight into the sandbox's table, at a chosen time and with whatever IsDown might hold."""
    return SandboxIncident.objects.create(
        service=SandboxService.objects.get(service_id=1001),
        title=title,
        created_at=created_at,
        updated_at=created_at,
        updates=[{"status": "investigating", "created_at": iso(created_at), "description": ""}],
        **fields,
    )


T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


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
    created = create(isdown, "API slow", description="Looking")
    assert created.stage == "investigating" and not created.resolved

    updated = isdown.send(update_request(created.id, description="Found it", stage="identified")).incident
    assert [u.stage for u in updated.updates] == ["investigating", "identified"]

    resolve = update_request(created.id, description="Fixed", stage="resolved", severity="major")
    resolved = isdown.send(resolve).incident
    assert resolved.resolved and resolved.resolved_at is not None and resolved.severity == "major"
    assert isdown.get_incident(created.id) == resolved

    second = create(isdown, "Another")
    listing = isdown.list_incidents(1001)
    assert [i.id for i in listing.incidents] == [second.id, created.id]
    assert (listing.complete, listing.pages) == (True, 1)

    isdown.delete_incident(created.id)
    isdown.delete_incident(created.id)  # already gone counts as done
    with pytest.raises(Rejected) as caught:
        isdown.get_incident(created.id)
    assert caught.value.status_code == 404


def test_the_sandbox_receives_the_built_body_byte_for_byte(isdown):
    request = create_request(
        service_id=1001, title="Paiements échoués", severity="major", description="Ödeme — 決済", stage="identified"
    )
    incident = isdown.send(request).incident
    assert (incident.title, incident.description, incident.severity) == ("Paiements échoués", "Ödeme — 決済", "major")
    assert SandboxRequest.objects.get().body == request.body


def test_title_only_update_changes_the_title_and_posts_no_update(isdown):
    created = create(isdown, "API slow", description="Looking")
    renamed = isdown.send(update_request(created.id, title="API slow in EU")).incident
    assert renamed.title == "API slow in EU"
    assert renamed.updates == created.updates


def test_an_incident_beyond_todays_documented_limits_is_read_as_it_is(isdown):
    # The table holds what IsDown may send one day: a longer title, a severity the API does not accept today.
    title = ("Checkout fails for every card issued in the EEA. " * 9)[:400]
    row = stored(title, T0, status="critical")
    incident = isdown.get_incident(str(row.pk))
    assert (len(incident.title), incident.title, incident.severity) == (400, title, "critical")
    assert isdown.list_incidents(1001).incidents == (incident,)


def test_client_surfaces_isdowns_422_detail(isdown):
    with pytest.raises(Rejected) as caught:
        create(isdown, severity="critical")
    assert caught.value.status_code == 422
    assert caught.value.detail == "Status must be 'minor' or 'major'"


def test_wrong_key_is_rejected_401_and_never_logged(live_sandbox):
    with IsDownClient(live_sandbox, "not-the-key", timeout=5) as client, pytest.raises(Rejected) as caught:
        create(client)
    assert caught.value.status_code == 401
    assert not SandboxIncident.objects.exists()
    (entry,) = SandboxRequest.objects.all()
    assert "not-the-key" not in entry.body + entry.path


def test_nothing_listening_is_not_sent():
    with IsDownClient("http://127.0.0.1:9", "k", timeout=1) as client, pytest.raises(NotSent):
        client.get_incident("1")


# --- A paginated list --------------------------------------------------------------------------------------
@pytest.fixture
def five_incidents(live_sandbox, settings) -> list[str]:
    """Five incidents a minute apart from T0, listed two a page (the live server runs in this process). Their
    ids newest first, as the list pages them: n4 n3 | n2 n1 | n0."""
    settings.SANDBOX_PAGE_SIZE = 2
    rows = [stored(f"n{minute}", T0 + timedelta(minutes=minute)) for minute in range(5)]
    return [str(row.pk) for row in reversed(rows)]


def listed_paths() -> list[str]:
    return list(SandboxRequest.objects.order_by("id").values_list("path", flat=True))


def test_list_follows_next_links_to_the_last_page(isdown, five_incidents):
    listing = isdown.list_incidents(1001)
    assert [incident.id for incident in listing.incidents] == five_incidents
    assert (listing.complete, listing.pages, listing.reason) == (True, 3, "read to the end")
    assert listed_paths() == [
        "/sandbox/api/v2/incidents?service_id=1001",
        "/sandbox/api/v2/incidents?service_id=1001&page=2",
        "/sandbox/api/v2/incidents?service_id=1001&page=3",
    ]


def test_list_since_before_every_incident_reads_every_page(isdown, five_incidents):
    listing = isdown.list_incidents(1001, since=T0 - timedelta(minutes=1))
    assert [incident.id for incident in listing.incidents] == five_incidents
    assert (listing.complete, listing.pages) == (True, 3)


def test_list_stops_at_the_page_that_reaches_back_past_since(isdown, five_incidents):
    # Newer than the third incident (n2): page two ends with n1, older than since, so page three cannot matter.
    listing = isdown.list_incidents(1001, since=T0 + timedelta(minutes=2, seconds=30))
    assert [incident.id for incident in listing.incidents] == five_incidents[:4]
    assert (listing.complete, listing.pages, listing.reason) == (True, 2, "reached back past the first attempt")
    assert len(listed_paths()) == 2


def test_list_cut_short_by_max_pages_says_it_is_incomplete(isdown, five_incidents):
    listing = isdown.list_incidents(1001, max_pages=1)
    assert [incident.id for incident in listing.incidents] == five_incidents[:2]
    assert (listing.complete, listing.pages) == (False, 1)
    assert "stopped after 1 page" in listing.reason
    assert len(listed_paths()) == 1


# --- The deadline -------------------------------------------------------------------------------------------
def test_a_stalled_name_lookup_is_not_sent_and_not_waited_for(live_sandbox, sandbox_key, monkeypatch):
    host = urlsplit(live_sandbox).hostname
    assert host == "localhost"  # a name, not an address: there is a lookup to stall
    entered, release, finished = threading.Event(), threading.Event(), threading.Event()
    real_getaddrinfo = socket.getaddrinfo

    def stalled_getaddrinfo(name, *args, **kwargs):
        if name != host:
            return real_getaddrinfo(name, *args, **kwargs)
        entered.set()
        try:
            release.wait(timeout=30)  # a resolver that never answers, until the test lets it go
            return real_getaddrinfo(name, *args, **kwargs)
        finally:
            finished.set()

    monkeypatch.setattr(socket, "getaddrinfo", stalled_getaddrinfo)
    try:
        with IsDownClient(live_sandbox, sandbox_key, timeout=0.5) as client, pytest.raises(NotSent) as caught:
            create(client, "stuck in DNS")
        assert entered.wait(timeout=5)
        assert not finished.is_set()  # the client gave up while the lookup was still stalled
    finally:
        release.set()
    assert finished.wait(timeout=5)
    assert "name resolution" in caught.value.detail
    assert not SandboxRequest.objects.exists()
    assert not SandboxIncident.objects.exists()


def test_a_name_that_does_not_resolve_is_not_sent(live_sandbox, sandbox_key, monkeypatch):
    host = urlsplit(live_sandbox).hostname
    real_getaddrinfo = socket.getaddrinfo

    def unknown_name(name, *args, **kwargs):
        if name == host:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_getaddrinfo(name, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", unknown_name)
    with IsDownClient(live_sandbox, sandbox_key, timeout=5) as client, pytest.raises(NotSent) as caught:
        create(client)
    assert caught.value.detail.startswith("ConnectError")
    assert not SandboxRequest.objects.exists()


def test_an_answer_slower_than_the_deadline_is_outcome_unknown(live_sandbox, sandbox_key, isdown):
    created = create(isdown)
    add_fault(kind="latency", latency_ms=2000, method="GET")
    with IsDownClient(live_sandbox, sandbox_key, timeout=0.5) as client, pytest.raises(OutcomeUnknown) as caught:
        client.get_incident(created.id)
    assert caught.value.detail.startswith("ReadTimeout")
    assert caught.value.status_code is None


def test_a_call_whose_deadline_has_passed_is_never_sent(isdown):
    with isdown.deadline(0), pytest.raises(NotSent):
        create(isdown, "too late")
    assert not SandboxRequest.objects.exists()
    assert not SandboxIncident.objects.exists()
    create(isdown, "on time")  # after the block, each call has its own deadline again
    assert logged() == [("POST", 201, "")]


def test_one_deadline_covers_every_call_in_the_block(isdown, monkeypatch):
    created = create(isdown)  # leaves a kept-alive connection: the next call writes at once, no connect
    jump = [0.0]
    monkeypatch.setattr(isdown_module, "time", SimpleNamespace(monotonic=lambda: time.monotonic() + jump[0]))
    with isdown.deadline(5):
        isdown.get_incident(created.id)
        jump[0] = 60.0  # the process stood still between two calls (a paused VM, a starved CPU)
        with pytest.raises(NotSent) as caught:
            isdown.send(update_request(created.id, title="too late"))
    assert caught.value.detail == "the call's deadline passed before the request was sent"
    assert logged() == [("POST", 201, ""), ("GET", 200, "")]
    assert SandboxIncident.objects.get().title == "x"


def test_an_inner_deadline_block_keeps_the_outer_deadline(isdown):
    with isdown.deadline(0), isdown.deadline(60), pytest.raises(NotSent):
        isdown.get_incident("1")
    with isdown.deadline(60), isdown.deadline(0):
        assert create(isdown, "inner block ignored").title == "inner block ignored"
    assert logged() == [("POST", 201, "")]


# --- Faults ------------------------------------------------------------------------------------------------
def test_status_503_for_two_requests_then_normal_and_logged(isdown):
    call_command("sandbox_fault", status=503, count=2)

    for _ in range(2):
        with pytest.raises(OutcomeUnknown) as caught:  # a proxy's 503 without Retry-After: may have acted
            create(isdown)
        assert caught.value.status_code == 503
        assert "<h1>503 Service Unavailable</h1>" in caught.value.excerpt  # HTML, like a proxy
    create(isdown)

    assert SandboxIncident.objects.count() == 1  # the faulted requests were not processed
    assert logged() == [("POST", 503, "status 503"), ("POST", 503, "status 503"), ("POST", 201, "")]
    assert not SandboxFault.objects.exists()


def test_status_429_carries_retry_after(isdown):
    call_command("sandbox_fault", status=429, retry_after=7)
    with pytest.raises(RateLimited) as caught:
        create(isdown)
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
        create(isdown)
    assert caught.value.status_code == status
    assert not SandboxIncident.objects.exists()


def test_fault_for_one_method_leaves_others_alone(isdown):
    call_command("sandbox_fault", status=500, method="patch")
    created = create(isdown)
    isdown.get_incident(created.id)
    with pytest.raises(OutcomeUnknown):
        isdown.send(update_request(created.id, title="y"))
    assert isdown.send(update_request(created.id, title="y")).incident.title == "y"
    assert [m for m, _, fault in logged() if fault] == ["PATCH"]


def test_a_failed_list_page_fails_the_listing(isdown, five_incidents):
    add_fault(kind="status", status=502, method="GET", count=1)
    with pytest.raises(OutcomeUnknown):
        isdown.list_incidents(1001)
    assert isdown.list_incidents(1001).complete  # the fault is used up


def test_latency_delays_then_processes(isdown):
    call_command("sandbox_fault", latency=400)
    started = time.monotonic()
    incident = create(isdown, "slow but fine")
    assert time.monotonic() - started >= 0.4
    assert SandboxIncident.objects.filter(pk=incident.id).exists()
    assert logged() == [("POST", 201, "latency 400 ms")]


def test_drop_closes_the_connection_without_processing(isdown):
    call_command("sandbox_fault", drop=True)
    with pytest.raises(OutcomeUnknown) as caught:
        create(isdown, "dropped")
    # The socket is shut down before any byte of an answer: httpx sees RemoteProtocolError, not a status.
    assert caught.value.detail.startswith("RemoteProtocolError")
    assert caught.value.status_code is None
    assert not SandboxIncident.objects.exists()
    assert logged() == [("POST", None, "drop")]
    create(isdown, "next one is fine")  # and the fault is used up


def test_hang_applies_the_change_then_answers_too_late(live_sandbox, sandbox_key):
    call_command("sandbox_fault", hang=True, hang_seconds=2)
    with IsDownClient(live_sandbox, sandbox_key, timeout=0.5) as client, pytest.raises(OutcomeUnknown) as caught:
        create(client, "applied but unanswered")
    # A read timeout, not the 201: the client gave up at its deadline instead of waiting out the hang.
    assert caught.value.detail.startswith("ReadTimeout")
    # Committed before the sleep: the incident exists while the server is still hanging.
    incident = SandboxIncident.objects.get()
    assert incident.title == "applied but unanswered"
    assert logged() == [("POST", 201, "hang 2 s")]


def test_hang_on_patch_appends_the_update(live_sandbox, sandbox_key, isdown):
    created = create(isdown)
    call_command("sandbox_fault", hang=True, hang_seconds=2, method="PATCH")
    with IsDownClient(live_sandbox, sandbox_key, timeout=0.5) as client, pytest.raises(OutcomeUnknown):
        client.send(update_request(created.id, description="Fixed", stage="resolved"))
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
