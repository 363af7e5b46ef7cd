"""Sync against the sandbox over real HTTP, in-process with a bounded thread pool (or, where a test must look at
the caller while a request is in flight, respx at the IsDown seam serving the sandbox's own documents): one test
per invariant stated in sync.py's docstring."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta

import httpx
import psycopg
import pytest
import respx
from django.db import connection, connections
from django.utils import timezone

from incidents import enqueue, sync
from incidents.models import AuditEvent, Incident, Publication, PublicationState, SystemMark
from isdown_admin import preflight
from sandbox import api as sandbox_api
from sandbox.faults import add_fault
from sandbox.models import SandboxIncident, SandboxRequest
from tests.conftest import APP_URL
from tests.waiting import wait_for

from .conftest import sandbox_incidents, sandbox_requests
from .factories import approved_publication, update_publication

S = PublicationState
SEAM = "https://isdown.test"


@pytest.fixture
def sandbox(fast_settings, service):
    return fast_settings


@pytest.fixture
def seam(settings, service) -> Iterator[respx.MockRouter]:
    """IsDown behind respx: the answer is built in the calling thread, so a test can look at the caller (its
    thread, its database connection, the locks it holds) while the request is in flight."""
    settings.ISDOWN_API_URL = SEAM
    with respx.mock(base_url=SEAM, assert_all_called=True) as mock:
        yield mock


def document(incident: Incident) -> dict:
    """What IsDown answers for ``incident`` now: the sandbox's own document of its row."""
    return {"data": sandbox_api.resource(SandboxIncident.objects.get(pk=int(incident.remote_id)))}


@pytest.fixture
def session_as_app(transactional_db) -> Iterator[Callable[[], psycopg.Connection]]:
    """``session_as_app()``: another connection to the test database as the app's role, in a transaction of its
    own until it commits (a worker's, say)."""
    opened: list[psycopg.Connection] = []

    def connect() -> psycopg.Connection:
        other = psycopg.connect(**preflight.params(APP_URL, dbname=connection.settings_dict["NAME"]))
        opened.append(other)
        return other

    yield connect
    for other in opened:
        other.close()


def incident_row_is_free(pk: int) -> bool:
    """Whether another session (a worker publishing to this incident, say) could lock its row right now."""
    with psycopg.connect(**preflight.params(APP_URL, dbname=connection.settings_dict["NAME"])) as other:
        try:
            other.execute("SELECT 1 FROM incidents_incident WHERE id = %s FOR UPDATE NOWAIT", [pk])
        except psycopg.errors.LockNotAvailable:
            return False
    return True


def blocked_by(pid: int) -> list[int]:
    """The sessions the session ``pid`` is waiting for a lock from."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_blocking_pids(%s)", [pid])
        return list(cursor.fetchone()[0])


def _remote_incident(service, title: str) -> Incident:
    created = sandbox_api.create(
        {"service_id": 1001, "title": title, "status": "minor", "description": "d", "resolution_stage": "investigating"}
    )
    return Incident.objects.create(service=service, remote_id=str(created.pk), title=title)


def _drift_events(incident: Incident):
    return AuditEvent.objects.filter(action="incident.drifted", target_id=str(incident.pk))


def test_sync_fetches_every_open_incident_flags_missing_and_records_drift(sandbox, service):
    kept = _remote_incident(service, "Kept")
    gone = _remote_incident(service, "Gone")
    resolved = Incident.objects.create(service=service, remote_id="99999", title="Old", resolved=True)
    sandbox_api.delete(gone.remote_id)

    report = sync.sync_open_incidents(concurrency=2)

    assert sorted(report.synced) == [kept.pk] and report.missing == [gone.pk]
    assert SandboxRequest.objects.filter(method="GET").count() == 2  # the resolved one is not fetched
    gone.refresh_from_db()
    kept.refresh_from_db()
    resolved.refresh_from_db()
    assert gone.missing_on_remote and gone.last_synced_at is not None
    assert kept.last_synced_at is not None and resolved.last_synced_at is None
    # The first sync filled in what the local row did not have yet: that is drift (not made by this app).
    assert _drift_events(kept).count() == 1
    assert AuditEvent.objects.filter(action="incident.missing_on_remote", target_id=str(gone.pk)).count() == 1

    again = sync.sync_open_incidents(concurrency=2)  # nothing changed: no new events
    assert again.drifted == [] and again.missing == [gone.pk]
    assert AuditEvent.objects.filter(action__in=["incident.drifted", "incident.missing_on_remote"]).count() == 2
    assert Incident.objects.get(pk=kept.pk).last_synced_at > kept.last_synced_at


def test_an_incident_found_again_after_a_404_clears_its_flag_and_says_so(sandbox, service):
    incident = _remote_incident(service, "Flaky")
    Incident.objects.filter(pk=incident.pk).update(missing_on_remote=True)

    sync.sync_incident(incident_id=incident.pk)

    incident.refresh_from_db()
    assert not incident.missing_on_remote
    assert AuditEvent.objects.filter(action="incident.found_on_remote", target_id=str(incident.pk)).exists()


def test_values_this_app_does_not_know_are_stored_and_shown_as_sent(sandbox, service, author, as_user):
    incident = _remote_incident(service, "Odd")
    row = SandboxIncident.objects.get(pk=int(incident.remote_id))
    row.status, row.title = "critical", "Ü" * 300
    row.updates = [*row.updates, {**row.updates[0], "status": "verifying", "description": "A stage of IsDown's own."}]
    row.save()

    report = sync.sync_open_incidents()

    incident.refresh_from_db()
    assert report.synced == [incident.pk] and report.failed == []
    assert (incident.severity, incident.stage, incident.title) == ("critical", "verifying", "Ü" * 300)
    assert incident.remote_payload["attributes"]["status"] == "critical"
    page = as_user(author).get(f"/incidents/{incident.pk}/").content.decode()
    for shown in ("critical", "verifying", "Ü" * 300):
        assert re.search(rf">\s*{re.escape(shown)}\s*<", page), f"the page does not show {shown[:20]!r} as sent"


def test_one_incident_that_cannot_be_read_never_stops_the_round(sandbox, service):
    broken = _remote_incident(service, "Broken")
    fine = _remote_incident(service, "Fine")
    # IsDown sends something that is not an incident for one of them (a timestamp that is not one).
    row = SandboxIncident.objects.get(pk=int(broken.remote_id))
    row.updates = [{"status": "investigating", "created_at": "yesterday", "description": "d"}]
    row.save()

    report = sync.sync_open_incidents(concurrency=1)

    assert report.failed == [broken.pk] and report.synced == [fine.pk]


def test_a_429_stops_the_round_and_pauses_sync_until_retry_after(sandbox, service):
    first = _remote_incident(service, "First")
    _remote_incident(service, "Second")
    add_fault(kind="status", status=429, retry_after=120, count=1, method="GET")

    report = sync.sync_open_incidents(concurrency=1)

    assert report.rate_limited and report.paused_until is not None
    assert first.pk not in report.synced
    assert SystemMark.objects.get(name=sync.PAUSE_MARK).at == report.paused_until
    gets = SandboxRequest.objects.filter(method="GET").count()
    later = sync.sync_open_incidents(concurrency=1)
    assert later.rate_limited and later.synced == []
    assert SandboxRequest.objects.filter(method="GET").count() == gets  # nothing asked while paused


def test_an_incident_whose_publication_is_being_sent_is_skipped(sandbox, service, responder):
    incident = _remote_incident(service, "Busy")
    publication = update_publication(incident=incident, author=responder)
    Publication.objects.filter(pk=publication.pk).update(state=S.SENDING)
    sandbox_api.patch(incident.remote_id, {"title": "Changed meanwhile"})

    report = sync.sync_open_incidents()

    assert report.skipped == [incident.pk] and not _drift_events(incident).exists()


@pytest.mark.parametrize("state", [S.RETRY_WAIT, S.RECONCILING, S.FAILED, S.NEEDS_ATTENTION])
def test_what_an_undecided_publication_may_have_put_on_isdown_is_adopted_not_drift(sandbox, service, responder, state):
    incident = _remote_incident(service, "Ours")
    sync.sync_incident(incident_id=incident.pk)  # the first sync fills the local copy in (drift: baseline)
    baseline = _drift_events(incident).count()
    publication = update_publication(incident=incident, author=responder, title="Ours, renamed", description="Ours.")
    # An earlier send of unknown outcome landed after all; the publication is still undecided about it.
    sandbox_api.patch(
        incident.remote_id, {"title": "Ours, renamed", "description": "Ours.", "resolution_stage": "identified"}
    )
    Publication.objects.filter(pk=publication.pk).update(
        state=state, first_sent_at=timezone.now(), attempts=1, next_attempt_at=timezone.now()
    )

    report = sync.sync_incident(incident_id=incident.pk)

    publication.refresh_from_db()
    assert report.adopted == [publication.pk] and publication.state == S.PUBLISHED
    assert _drift_events(incident).count() == baseline


def test_what_a_publication_a_worker_holds_may_have_put_on_isdown_is_not_drift_and_is_left_to_it(
    sandbox, service, responder, session_as_app
):
    incident = _remote_incident(service, "Ours")
    sync.sync_incident(incident_id=incident.pk)
    baseline = _drift_events(incident).count()
    publication = update_publication(incident=incident, author=responder, title="Ours, renamed", description="Ours.")
    sandbox_api.patch(
        incident.remote_id, {"title": "Ours, renamed", "description": "Ours.", "resolution_stage": "identified"}
    )
    Publication.objects.filter(pk=publication.pk).update(state=S.RECONCILING, first_sent_at=timezone.now(), attempts=1)
    worker = session_as_app()  # checking IsDown for it right now, its row claimed
    worker.execute("SELECT 1 FROM incidents_publication WHERE id = %s FOR UPDATE", [publication.pk])
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '5s'")  # a sync that waited for the worker would fail, not hang
    try:
        report = sync.sync_incident(incident_id=incident.pk)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
        worker.rollback()

    publication.refresh_from_db()
    assert report.synced == [incident.pk] and report.adopted == [] and publication.state == S.RECONCILING
    assert Incident.objects.get(pk=incident.pk).title == "Ours, renamed"
    assert _drift_events(incident).count() == baseline


def test_a_foreign_change_next_to_ours_is_still_drift(sandbox, service, responder):
    incident = _remote_incident(service, "Mixed")
    sync.sync_incident(incident_id=incident.pk)
    baseline = _drift_events(incident).count()
    publication = update_publication(incident=incident, author=responder, description="Ours.")
    sandbox_api.patch(incident.remote_id, {"description": "Ours.", "resolution_stage": "identified"})
    sandbox_api.patch(incident.remote_id, {"title": "Renamed by hand on IsDown"})
    Publication.objects.filter(pk=publication.pk).update(state=S.NEEDS_ATTENTION, first_sent_at=timezone.now())

    sync.sync_incident(incident_id=incident.pk)

    event = _drift_events(incident).order_by("-seq").first()
    assert _drift_events(incident).count() == baseline + 1
    assert set(event.changes) == {"title"}


def test_an_answer_older_than_what_we_hold_is_ignored(sandbox, service):
    incident = _remote_incident(service, "Fresh")
    sync.sync_incident(incident_id=incident.pk)
    incident.refresh_from_db()
    Incident.objects.filter(pk=incident.pk).update(remote_updated_at=incident.remote_updated_at + timedelta(hours=1))
    sandbox_api.patch(incident.remote_id, {"title": "From an older replica"})
    SandboxIncident.objects.filter(pk=int(incident.remote_id)).update(updated_at=incident.remote_updated_at)

    report = sync.sync_incident(incident_id=incident.pk)

    assert report.skipped == [incident.pk]
    assert Incident.objects.get(pk=incident.pk).title == "Fresh"


# --- HTTP outside any transaction, in a bounded pool that does only HTTP; each answer applied under the row lock --
def test_sync_reads_isdown_in_a_bounded_pool_holding_no_lock_and_touching_no_database(seam, service):
    incidents = [_remote_incident(service, f"Open {n}") for n in range(6)]
    documents = {incident.remote_id: document(incident) for incident in incidents}
    by_remote_id = {incident.remote_id: incident.pk for incident in incidents}
    two_at_once = threading.Barrier(2)
    seen: list[tuple[int, bool, bool]] = []

    def answer(request, remote_id):
        # A database connection opened in this thread would be the pool doing more than HTTP.
        opened = connections["default"].connection is not None
        two_at_once.wait(timeout=10)  # the reads overlap: the pool is a pool
        seen.append((threading.get_ident(), opened, incident_row_is_free(by_remote_id[remote_id])))
        return httpx.Response(200, json=documents[remote_id])

    seam.get(path__regex=r"/api/v2/incidents/(?P<remote_id>\d+)$").mock(side_effect=answer)

    report = sync.sync_open_incidents(concurrency=2)

    assert sorted(report.synced) == sorted(by_remote_id.values()) and report.failed == []
    assert len({thread for thread, _, _ in seen}) == 2, "more threads than SYNC_CONCURRENCY read IsDown"
    assert [opened for _, opened, _ in seen] == [False] * 6, "a pool thread used the database"
    assert [free for _, _, free in seen] == [True] * 6, "an incident row was locked while IsDown was read"


def test_syncing_one_incident_reads_isdown_outside_any_transaction(seam, service):
    incident = _remote_incident(service, "One")
    during: dict[str, bool] = {}

    def answer(request):
        during["atomic"] = connection.in_atomic_block
        during["free"] = incident_row_is_free(incident.pk)
        return httpx.Response(200, json=document(incident))

    seam.get(f"/api/v2/incidents/{incident.remote_id}").mock(side_effect=answer)

    report = sync.sync_incident(incident_id=incident.pk)

    assert report.synced == [incident.pk]
    assert during == {"atomic": False, "free": True}


def test_an_answer_waits_for_a_publisher_holding_the_incident_and_then_yields_to_what_it_recorded(
    sandbox, service, responder, session_as_app
):
    incident = _remote_incident(service, "Before")
    sync.sync_incident(incident_id=incident.pk)
    baseline = _drift_events(incident).count()
    publication = update_publication(incident=incident, author=responder, title="After")
    # A worker publishing "After" holds the incident row when sync's (older) answer arrives.
    worker = session_as_app()
    worker.execute("SELECT 1 FROM incidents_incident WHERE id = %s FOR NO KEY UPDATE", [incident.pk])
    sync_pid: list[int] = []
    result: dict[str, sync.SyncReport] = {}

    def run_sync() -> None:
        try:
            connection.ensure_connection()
            sync_pid.append(connection.connection.info.backend_pid)
            result["report"] = sync.sync_incident(incident_id=incident.pk)
        finally:
            connection.close()

    thread = threading.Thread(target=run_sync)
    thread.start()
    wait_for(
        lambda: not thread.is_alive() or (sync_pid and worker.info.backend_pid in blocked_by(sync_pid[0])),
        what="sync to wait for the worker's lock on the incident",
    )
    assert thread.is_alive(), "sync applied its answer without waiting for the incident row"
    sandbox_api.patch(incident.remote_id, {"title": "After"})
    worker.execute("UPDATE incidents_incident SET title = 'After' WHERE id = %s", [incident.pk])
    worker.execute(
        "UPDATE incidents_publication SET state = 'published', published_at = clock_timestamp() WHERE id = %s",
        [publication.pk],
    )
    worker.commit()
    thread.join(timeout=30)

    assert result["report"].skipped == [incident.pk]
    assert Incident.objects.get(pk=incident.pk).title == "After"
    assert _drift_events(incident).count() == baseline


def test_an_answer_fetched_before_our_publication_was_recorded_is_ignored(seam, service, responder):
    incident = _remote_incident(service, "Before")
    publication = update_publication(incident=incident, author=responder, title="After")
    older = document(incident)

    def answer(request):
        # While IsDown's answer is on its way, a worker records our publication and IsDown's newer copy.
        Incident.objects.filter(pk=incident.pk).update(title="After")
        Publication.objects.filter(pk=publication.pk).update(state=S.PUBLISHED, published_at=timezone.now())
        return httpx.Response(200, json=older)

    seam.get(f"/api/v2/incidents/{incident.remote_id}").mock(side_effect=answer)

    report = sync.sync_incident(incident_id=incident.pk)

    assert report.skipped == [incident.pk]
    assert Incident.objects.get(pk=incident.pk).title == "After"
    assert not _drift_events(incident).exists()


# --- Isolated per incident ------------------------------------------------------------------------------------------
def test_a_database_error_on_one_incident_is_recorded_for_it_and_the_round_goes_on(sandbox, service, session_as_app):
    first, locked, last = (_remote_incident(service, title) for title in ("First", "Locked", "Last"))
    for incident in (first, locked, last):
        sandbox_api.patch(incident.remote_id, {"title": f"{incident.title}, renamed"})
    holder = session_as_app()
    holder.execute("SELECT 1 FROM incidents_incident WHERE id = %s FOR UPDATE", [locked.pk])
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '200ms'")  # the database refuses the lock: an OperationalError
    try:
        report = sync.sync_open_incidents(concurrency=1)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
        holder.rollback()

    assert report.failed == [locked.pk]
    assert sorted(report.synced) == sorted([first.pk, last.pk])
    titles = dict(Incident.objects.values_list("pk", "title"))
    assert (titles[first.pk], titles[locked.pk], titles[last.pk]) == ("First, renamed", "Locked", "Last, renamed")
    assert not _drift_events(locked).exists()


# --- Retry-After ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("retry_after", "paused_for"),
    [("120", 120), (None, sync.DEFAULT_PAUSE_SECONDS), ("86400", 3600)],
    ids=["retry-after", "none-sent", "capped"],
)
def test_a_429_pauses_sync_for_its_retry_after_a_minute_without_one_and_never_past_the_visibility_timeout(
    seam, service, settings, retry_after, paused_for
):
    settings.CELERY_VISIBILITY_TIMEOUT = 3600
    incident = _remote_incident(service, "Busy")
    headers = {"Retry-After": retry_after} if retry_after else {}
    seam.get(f"/api/v2/incidents/{incident.remote_id}").respond(429, headers=headers, json={"errors": []})

    before = timezone.now()
    report = sync.sync_open_incidents()
    after = timezone.now()

    assert report.rate_limited
    pause = timedelta(seconds=paused_for)
    assert before + pause <= report.paused_until <= after + pause
    assert sync.paused_until() == report.paused_until


def test_after_the_pause_the_incidents_that_waited_go_first_least_recently_synced_first(sandbox, service):
    never, long_ago, lately = (_remote_incident(service, title) for title in ("Never", "Long ago", "Lately"))
    now = timezone.now()
    Incident.objects.filter(pk=long_ago.pk).update(last_synced_at=now - timedelta(minutes=10))
    Incident.objects.filter(pk=lately.pk).update(last_synced_at=now - timedelta(minutes=1))
    add_fault(kind="status", status=429, retry_after=1, count=1, method="GET")

    stopped = sync.sync_open_incidents(concurrency=1)

    assert stopped.rate_limited and stopped.synced == [] and stopped.skipped == [long_ago.pk, lately.pk]
    assert len(sandbox_requests("GET")) == 1, "the round went on after the 429"
    wait_for(lambda: sync.paused_until() is None, timeout=5, what="IsDown's Retry-After (1 s) to pass")

    resumed = sync.sync_open_incidents(concurrency=1)

    assert resumed.synced == [never.pk, long_ago.pk, lately.pk]
    asked = [request.path.rsplit("/", 1)[-1] for request in sandbox_requests("GET")[1:]]
    assert asked == [never.remote_id, long_ago.remote_id, lately.remote_id]


# --- What sync keeps of IsDown's copy -------------------------------------------------------------------------------
def test_an_incident_resolved_on_isdown_is_resolved_here_as_drift_and_leaves_the_round(sandbox, service):
    incident = _remote_incident(service, "Fixed elsewhere")
    sync.sync_incident(incident_id=incident.pk)
    sandbox_api.patch(incident.remote_id, {"description": "Fixed by hand on IsDown.", "resolution_stage": "resolved"})

    report = sync.sync_open_incidents()

    incident.refresh_from_db()
    assert report.drifted == [incident.pk]
    assert incident.resolved and incident.resolved_at is not None and incident.stage == "resolved"
    assert _drift_events(incident).order_by("-seq").first().changes["resolved"] == [False, True]
    asked = len(sandbox_requests("GET"))
    assert sync.sync_open_incidents().synced == [] and len(sandbox_requests("GET")) == asked


# --- A twin our own resend made ---------------------------------------------------------------------------------
def _reached(publication: Publication, *states: str, watching: bool | None = None) -> Publication:
    def reached() -> bool:
        publication.refresh_from_db()
        return publication.state in states and (watching is None or (publication.watch_until is not None) == watching)

    wait_for(reached, timeout=40, what=f"publication {publication.pk} to reach {states}")
    return publication


@pytest.mark.worker
@pytest.mark.parametrize("when", ["while-watching-for-it", "once-detected"])
def test_a_late_twin_of_our_resent_update_is_not_drift(start_worker, service, author, when):
    worker = start_worker()
    opened = approved_publication(service=service, author=author, title="Twice")
    enqueue.publication(opened.pk)
    incident = Incident.objects.get(pk=_reached(opened, S.PUBLISHED).incident_id)
    sync.sync_incident(incident_id=incident.pk)
    # Processed 5 s after it arrived: after the last look (1 s timeout + 3 s window), so it is sent again and
    # the resend is published; then the first one lands too.
    add_fault(kind="latency", latency_ms=5000, count=1, method="PATCH")
    update = update_publication(incident=incident, author=author, description="Twice, alas.")
    enqueue.publication(update.pk)
    if when == "while-watching-for-it":
        _reached(update, S.PUBLISHED, watching=True)
        worker.stop()  # sync meets the twin before the watch does
        wait_for(lambda: SandboxRequest.objects.filter(fault="latency 5000 ms").exists(), what="the twin to land")
    else:
        _reached(update, S.DUPLICATE_DETECTED)
    assert [u["description"] for u in sandbox_incidents()[0].updates].count("Twice, alas.") == 2

    sync.sync_incident(incident_id=incident.pk)

    assert not _drift_events(incident).exists()
