"""Issue 8, "what breaks today": each way an approved change was duplicated, lost, reordered or stuck, reproduced
with real worker processes and the sandbox's own faults, judged on the sandbox's own record."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from django.db import connection

from incidents import enqueue, publishing, sync
from incidents.models import AuditEvent, Incident, Publication, PublicationState, Stage
from sandbox import api as sandbox_api
from sandbox.faults import add_fault
from sandbox.models import SandboxIncident, SandboxRequest
from tests.waiting import wait_for

from .conftest import sandbox_incidents, sandbox_requests
from .factories import approved_publication, update_publication

pytestmark = pytest.mark.worker

S = PublicationState


def wait_state(publication: Publication, *states: str, timeout: float = 30.0) -> Publication:
    def reached():
        publication.refresh_from_db()
        return publication.state in states

    wait_for(reached, timeout=timeout, what=f"publication {publication.pk} to reach {states}")
    return publication


def wait_logged(fault_label: str, timeout: float = 30.0) -> None:
    """The sandbox logs a request with a latency fault only once it has processed it."""
    wait_for(lambda: SandboxRequest.objects.filter(fault=fault_label).exists(), timeout=timeout, what=fault_label)


def published_incident(service, author, title: str = "Elevated API errors") -> Incident:
    publication = approved_publication(service=service, author=author, title=title)
    enqueue.publication(publication.pk)
    wait_state(publication, S.PUBLISHED)
    return Incident.objects.get(pk=publication.incident_id)


# --- 1. A late create or update is sent twice -------------------------------------------------------------------
def test_1_a_create_processed_after_the_client_gave_up_is_not_sent_twice(start_worker, service, author):
    # ISDOWN_TIMEOUT is 1 s: the sandbox processes this create 2.5 s after it arrived, long after the client gave up.
    add_fault(kind="latency", latency_ms=2500, count=1, method="POST")
    start_worker()
    publication = approved_publication(service=service, author=author, title="Late create")
    enqueue.publication(publication.pk)
    wait_logged("latency 2500 ms")
    wait_state(publication, S.PUBLISHED)

    assert len(sandbox_incidents()) == 1, "the late create landed and a second one was sent"
    assert publication.remote_id == str(sandbox_incidents()[0].pk)


def test_1_an_update_processed_after_the_client_gave_up_is_not_posted_twice(start_worker, service, author):
    start_worker()
    incident = published_incident(service, author)
    add_fault(kind="latency", latency_ms=2500, count=1, method="PATCH")
    update = update_publication(incident=incident, author=author, description="Late update")
    enqueue.publication(update.pk)
    wait_logged("latency 2500 ms")
    wait_state(update, S.PUBLISHED)

    entries = [u["description"] for u in sandbox_incidents()[0].updates]
    assert entries.count("Late update") == 1, entries


# --- 2. Reconcile matched on the title alone ----------------------------------------------------------------------
def test_2_someone_elses_incident_with_the_same_title_is_not_adopted(start_worker, service, author):
    foreign = sandbox_api.create(
        {"service_id": 1001, "title": "Checkout down", "description": "Posted by hand on IsDown."}
    )
    add_fault(kind="status", status=502, count=1, method="POST")  # a proxy's 502: not processed
    start_worker()
    publication = approved_publication(
        service=service, author=author, title="Checkout down", description="Our approved words."
    )
    enqueue.publication(publication.pk)
    wait_state(publication, S.PUBLISHED)

    assert publication.remote_id != str(foreign.pk)
    ours = SandboxIncident.objects.get(pk=int(publication.remote_id))
    assert ours.updates[0]["description"] == "Our approved words."


def test_2_two_approved_drafts_with_one_title_do_not_cross_adopt(start_worker, service, author):
    # A's create answers 502 (not processed); B's is processed, then the answer is lost (hang). A's check then
    # sees B's incident, with A's title.
    add_fault(kind="status", status=502, count=1, method="POST")
    add_fault(kind="hang", hang_seconds=2, count=1, method="POST")
    start_worker(PUBLISH_RECONCILE_WINDOWS="1.5,2.5,3.5")
    a = approved_publication(service=service, author=author, title="Search slow", description="Words of A.")
    b = approved_publication(service=service, author=author, title="Search slow", description="Words of B.")
    enqueue.publication(a.pk)
    wait_for(lambda: SandboxRequest.objects.filter(method="POST").exists(), what="A's POST")
    enqueue.publication(b.pk)
    wait_state(a, S.PUBLISHED, S.NEEDS_ATTENTION)
    wait_state(b, S.PUBLISHED, S.NEEDS_ATTENTION)

    descriptions = sorted(incident.updates[0]["description"] for incident in sandbox_incidents())
    assert descriptions == ["Words of A.", "Words of B."], "one draft's words never went out, the other's twice"
    assert a.remote_id != b.remote_id


# --- 3. No order per incident -------------------------------------------------------------------------------------
def test_3_a_rate_limited_update_is_not_overtaken_by_a_resolve_approved_after_it(start_worker, service, author):
    start_worker()
    incident = published_incident(service, author)
    add_fault(kind="status", status=429, retry_after=2, count=1, method="PATCH")
    first = update_publication(incident=incident, author=author, stage=Stage.MONITORING, description="Fix deployed.")
    enqueue.publication(first.pk)
    wait_for(lambda: SandboxRequest.objects.filter(method="PATCH").exists(), what="the 429")
    resolve = update_publication(incident=incident, author=author, stage=Stage.RESOLVED, description="All good.")
    enqueue.publication(resolve.pk)
    wait_state(first, S.PUBLISHED)
    wait_state(resolve, S.PUBLISHED)

    remote = sandbox_incidents()[0]
    assert [u["status"] for u in remote.updates] == ["investigating", "monitoring", "resolved"]
    assert remote.resolved, "the earlier update landed last and reopened the incident"


def test_3_a_title_change_of_unknown_outcome_never_overwrites_a_newer_approved_title(start_worker, service, author):
    start_worker()
    incident = published_incident(service, author, title="Old title")
    add_fault(kind="hang", hang_seconds=1.5, count=1, method="PATCH")
    first = update_publication(incident=incident, author=author, title="Second title", description="", stage="")
    enqueue.publication(first.pk)
    wait_for(lambda: SandboxRequest.objects.filter(method="PATCH").exists(), what="the first PATCH")
    newer = update_publication(incident=incident, author=author, title="Third title", description="", stage="")
    enqueue.publication(newer.pk)
    wait_state(first, S.PUBLISHED, S.NEEDS_ATTENTION)
    wait_state(newer, S.PUBLISHED, S.NEEDS_ATTENTION)

    assert sandbox_incidents()[0].title == "Third title"


# --- 4. The lease was not a fence ---------------------------------------------------------------------------------
def test_4_a_send_stalled_before_leaving_never_goes_out_after_its_lease(
    fast_settings, service, author, monkeypatch, transactional_db
):
    """Name resolution stalls (httpx does not time getaddrinfo) past the lease; meanwhile the sweeper takes the
    row over and publishes it. The stalled send must not go out afterwards."""
    fast_settings.PUBLISH_RECONCILE_WINDOWS = [0.1, 0.2]
    stall = threading.Event()
    release = threading.Event()
    real_getaddrinfo = socket.getaddrinfo

    def stalling_getaddrinfo(host, *args, **kwargs):
        if stall.is_set():
            stall.clear()  # one call stalls: the first send's
            release.wait(30)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", stalling_getaddrinfo)
    publication = approved_publication(service=service, author=author)
    stall.set()
    outcome = {}

    def stalled_worker():
        try:
            outcome["step"] = publishing.process(publication_id=publication.pk)
        finally:
            connection.close()

    thread = threading.Thread(target=stalled_worker)
    thread.start()
    wait_for(lambda: not stall.is_set(), what="the first send to stall in DNS")
    publication.refresh_from_db()
    wait_for(lambda: time.time() > publication.lease_expires_at.timestamp() + 0.1, what="the lease to expire")

    # The sweeper's turn, as beat and a worker take it: whatever it decides, it publishes the change exactly once.
    def sweep_and_process() -> bool:
        for publication_id, _ in publishing.sweep():
            publishing.process(publication_id=publication_id)
        publishing.process(publication_id=publication.pk)
        publication.refresh_from_db()
        return publication.state == S.PUBLISHED

    try:
        wait_for(sweep_and_process, what="the sweeper to publish it while the first send is stalled")
    finally:
        release.set()
    thread.join(30)

    assert publication.state == S.PUBLISHED
    assert len(sandbox_requests("POST")) == 1 and len(sandbox_incidents()) == 1


def test_4_the_default_soft_time_limit_is_below_the_lease():
    from django.conf import settings

    defaults = {"CELERY_TASK_SOFT_TIME_LIMIT", "PUBLISH_LEASE_SECONDS", "ISDOWN_TIMEOUT"}
    assert not defaults & set(__import__("os").environ)
    assert settings.CELERY_TASK_SOFT_TIME_LIMIT < settings.PUBLISH_LEASE_SECONDS


# --- 5. Reconcile read one page -----------------------------------------------------------------------------------
def test_5_reconcile_follows_the_list_past_its_first_page(start_worker, service, author, settings):
    # The create lands but its answer is lost; then others post 3 incidents, so ours is on the list's second page.
    add_fault(kind="hang", hang_seconds=1.5, count=1, method="POST")
    start_worker()
    publication = approved_publication(service=service, author=author, title="Ours")
    enqueue.publication(publication.pk)
    wait_for(lambda: SandboxRequest.objects.filter(method="POST").exists(), what="our POST")
    settings.SANDBOX_PAGE_SIZE = 2  # the live server runs in this process
    for n in range(3):
        sandbox_api.create({"service_id": 1001, "title": f"Someone else's {n}"})
    wait_state(publication, S.PUBLISHED, S.NEEDS_ATTENTION)

    assert len(sandbox_requests("POST")) == 1, "ours was not on page one, was judged absent and sent again"
    assert publication.state == S.PUBLISHED


# --- 6. Values the app cannot store -------------------------------------------------------------------------------
def test_6_an_unknown_severity_and_a_long_title_from_isdown_neither_loop_publishing_nor_stop_sync(
    start_worker, service, author
):
    start_worker()
    odd = published_incident(service, author, title="Odd")
    plain = published_incident(service, author, title="Plain")
    SandboxIncident.objects.filter(pk=int(odd.remote_id)).update(status="critical", title="T" * 400)
    SandboxIncident.objects.filter(pk=int(plain.remote_id)).update(title="Plain, renamed on IsDown")

    report = sync.sync_open_incidents(concurrency=1)
    assert plain.pk in report.synced and odd.pk in report.synced
    assert Incident.objects.get(pk=plain.pk).title == "Plain, renamed on IsDown"

    # An update that leaves the (long) title alone: only the update entry goes out.
    update = update_publication(
        incident=Incident.objects.get(pk=odd.pk), author=author, title="", severity="", description="Still odd."
    )
    enqueue.publication(update.pk)
    wait_state(update, S.PUBLISHED, timeout=20)
    assert len(sandbox_requests("PATCH")) == 1


# --- 7. Nobody was told -------------------------------------------------------------------------------------------
def test_7_a_failed_publication_emails_the_approvers_and_the_author(start_worker, service, author, approver_user):
    add_fault(kind="status", status=422, count=1, method="POST")
    worker = start_worker(EMAIL_URL="console://")
    publication = approved_publication(service=service, author=author)
    enqueue.publication(publication.pk)
    wait_state(publication, S.FAILED)

    wait_for(lambda: approver_user.email in worker.log_text(), timeout=10, what="an email to the approver")
    assert author.email in worker.log_text()
    publication.draft.refresh_from_db()
    assert publication.draft.state == "failed"


# --- 8. The approval did not hold what it approved --------------------------------------------------------------
def test_8_the_bytes_sent_are_the_approved_bytes(start_worker, service, author):
    start_worker()
    publication = approved_publication(service=service, author=author, title="Exact bytes")
    approved_text = publication.request.body.encode()
    assert approved_text.startswith(b'{"service_id":1001,"title":"Exact bytes",')  # the approved key order
    enqueue.publication(publication.pk)
    wait_state(publication, S.PUBLISHED)

    assert sandbox_requests("POST")[0].body == approved_text.decode()


def test_8_a_revision_cannot_be_changed_in_the_database(service, author, transactional_db):
    from django.db import DatabaseError

    publication = approved_publication(service=service, author=author)
    with pytest.raises(DatabaseError), connection.cursor() as cursor:
        cursor.execute("UPDATE incidents_revision SET fields = '{}'::jsonb WHERE id = %s", [publication.revision_id])


# --- 9. False drift -----------------------------------------------------------------------------------------------
def test_9_our_own_landed_update_is_not_drift_while_its_publication_waits(start_worker, service, author):
    start_worker()
    incident = published_incident(service, author)
    # The update lands, but its answer is lost; the check that follows is refused (403), which only a human can
    # judge: the publication waits in needs_attention while its update is on IsDown.
    add_fault(kind="hang", hang_seconds=1.5, count=1, method="PATCH")
    add_fault(kind="status", status=403, count=1, method="GET")
    update = update_publication(incident=incident, author=author, description="Ours, landed late.")
    enqueue.publication(update.pk)
    wait_state(update, S.NEEDS_ATTENTION)

    sync.sync_incident(incident_id=incident.pk)

    assert not AuditEvent.objects.filter(action="incident.drifted", target_id=str(incident.pk)).exists()
    update.refresh_from_db()
    assert update.state == S.PUBLISHED and "found by sync" in update.result["how"]
    assert [u["description"] for u in sandbox_incidents()[0].updates].count("Ours, landed late.") == 1


# --- 10. Brief outages became human work ------------------------------------------------------------------------
def test_10_three_503s_in_a_row_are_ridden_out_without_a_human(start_worker, service, author):
    add_fault(kind="status", status=503, count=3)  # the create, and the checks that follow it
    start_worker()
    publication = approved_publication(service=service, author=author)
    enqueue.publication(publication.pk)
    wait_state(publication, S.PUBLISHED, S.NEEDS_ATTENTION, S.FAILED)

    assert publication.state == S.PUBLISHED
    assert len(sandbox_incidents()) == 1


def _allow_connections(allowed: bool) -> None:
    """ALTER DATABASE cannot name the database it runs in, and only a superuser may end other roles' sessions:
    do both as the administrator, from the maintenance database."""
    import psycopg

    from isdown_admin import preflight
    from tests.conftest import ADMIN_URL

    name = connection.settings_dict["NAME"]
    with psycopg.connect(**preflight.params(ADMIN_URL), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> %s",
                [name, connection.connection.info.backend_pid],
            )


def test_10_a_task_that_meets_a_database_error_is_retried_not_dropped(start_worker, service, author):
    worker = start_worker()
    publication = approved_publication(service=service, author=author)
    connection.ensure_connection()
    _allow_connections(False)
    try:
        enqueue.publication(publication.pk)
        wait_for(
            lambda: "not currently accepting connections" in worker.log_text(), what="the worker to meet the refusal"
        )
    finally:
        _allow_connections(True)
    wait_state(publication, S.PUBLISHED, timeout=30)  # no sweep runs in this test
    assert len(sandbox_incidents()) == 1


# --- After a resend, a late twin is detected, told, and can be cleaned up ---------------------------------------
def test_1_a_create_landing_after_the_whole_window_is_a_detected_duplicate_an_approver_deletes(
    start_worker, service, author, approver_user, as_user
):
    # Processed 5 s after it arrived: after the last look (1 s timeout + 3 s window), so it is sent again; the
    # late one then lands and the watch finds it.
    add_fault(kind="latency", latency_ms=5000, count=1, method="POST")
    worker = start_worker(EMAIL_URL="console://")
    publication = approved_publication(service=service, author=author, title="Very late create")
    enqueue.publication(publication.pk)
    wait_state(publication, S.DUPLICATE_DETECTED, timeout=40)

    assert len(sandbox_incidents()) == 2
    assert publication.duplicate_remote_ids and publication.remote_id not in publication.duplicate_remote_ids
    assert AuditEvent.objects.filter(action="publication.duplicate_detected", target_id=str(publication.pk)).exists()
    wait_for(lambda: "Duplicate detected" in worker.log_text(), what="the duplicate's email")
    assert approver_user.email in worker.log_text()

    response = as_user(approver_user).post(
        f"/publications/{publication.pk}/delete-duplicates/", {"state": S.DUPLICATE_DETECTED}
    )
    assert response.status_code == 302
    publication.refresh_from_db()
    assert publication.state == S.PUBLISHED
    assert [str(incident.pk) for incident in sandbox_incidents()] == [publication.remote_id]


def test_1_an_update_landing_after_the_whole_window_is_a_detected_duplicate_acknowledged(
    start_worker, service, author, approver_user
):
    start_worker()
    incident = published_incident(service, author)
    add_fault(kind="latency", latency_ms=5000, count=1, method="PATCH")
    update = update_publication(incident=incident, author=author, description="Twice, alas.")
    enqueue.publication(update.pk)
    wait_state(update, S.DUPLICATE_DETECTED, timeout=40)

    assert [u["description"] for u in sandbox_incidents()[0].updates].count("Twice, alas.") == 2
    assert "appears more than once" in update.last_error
    publishing.acknowledge_duplicate(publication_id=update.pk, user=approver_user, note="Told customers on Slack.")
    update.refresh_from_db()
    assert update.state == S.PUBLISHED and update.draft.state == "published"
