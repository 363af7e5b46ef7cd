"""The protocol's decisions in-process, with IsDown faked at the HTTP seam by respx: classification, backoff,
the transitions table, the integrity checks, the reconcile window, the twin watch, order per incident, the
fence, the human actions and the sweeper."""

from __future__ import annotations

import random
import uuid
from datetime import timedelta

import httpx
import pytest
import respx
from django.db import IntegrityError, transaction
from django.utils import timezone

from incidents import isdown, publishing
from incidents.access import RoleRequired
from incidents.models import (
    AttemptKind,
    AttemptOutcome,
    AuditEvent,
    DraftState,
    Incident,
    Notification,
    Publication,
    PublicationState,
    Review,
    Stage,
)

from .factories import approved_publication, update_publication

S = PublicationState
O = AttemptOutcome  # noqa: E741
BASE = "http://isdown.test"


@pytest.fixture
def fake_isdown(settings):
    settings.ISDOWN_API_URL = BASE
    settings.PUBLISH_BACKOFF_BASE = 1.0
    settings.PUBLISH_BACKOFF_CAP = 30.0
    settings.PUBLISH_MAX_ATTEMPTS = 3
    settings.PUBLISH_RECONCILE_WINDOWS = [5.0, 30.0, 120.0]
    settings.PUBLISH_WATCH_WINDOWS = [5.0, 30.0]
    settings.PUBLISH_CHECK_PATIENCE = 600.0
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        yield mock


@pytest.fixture
def service(api_service):
    return api_service


def incident_json(
    remote_id="55001",
    *,
    title="Elevated API errors",
    severity="minor",
    description="We are looking into it.",
    stage="investigating",
    created_at=None,
    updated_at=None,
    updates=None,
    service_id=1001,
):
    created = (created_at or timezone.now()).isoformat().replace("+00:00", "Z")
    updated = (updated_at or created_at or timezone.now()).isoformat().replace("+00:00", "Z")
    return {
        "id": remote_id,
        "type": "incidents",
        "attributes": {
            "title": title,
            "description": description,
            "status": severity,
            "resolved": False,
            "created_at": created,
            "updated_at": updated,
            "resolved_at": None,
            "service_id": service_id,
            "service": "API",
            "url": None,
            "updates": updates
            if updates is not None
            else [{"status": stage, "description": description, "created_at": created}],
        },
    }


def listing(*incidents):
    return {"data": list(incidents), "links": {"next": None}}


def set_state(publication, state, **extra):
    Publication.objects.filter(pk=publication.pk).update(state=state, **extra)
    publication.refresh_from_db()
    return publication


def due_now(publication):
    Publication.objects.filter(pk=publication.pk).update(next_attempt_at=timezone.now())


def kinds(publication):
    return [(a.kind, a.outcome) for a in publication.attempt_rows.order_by("number")]


# --- Pure decisions -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (None, publishing.Outcome.PUBLISHED),
        (isdown.NotSent("connect refused"), publishing.Outcome.RETRY),
        (isdown.RateLimited("429", retry_after=3, status_code=429), publishing.Outcome.RETRY),
        (isdown.Rejected("bad", status_code=422), publishing.Outcome.REJECTED),
        (isdown.OutcomeUnknown("read timeout"), publishing.Outcome.UNKNOWN),
        (isdown.OutcomeUnknown("bad gateway", status_code=502), publishing.Outcome.UNKNOWN),
        (isdown.BadResponse("not json", status_code=201), publishing.Outcome.UNKNOWN),
        (RuntimeError("a bug mid-call"), publishing.Outcome.UNKNOWN),
    ],
)
def test_classify_sends_again_only_what_certainly_was_not_processed(error, expected):
    assert publishing.classify(error) is expected


def test_retry_delay_is_full_jitter_under_an_exponential_ceiling_capped(settings):
    settings.PUBLISH_BACKOFF_BASE, settings.PUBLISH_BACKOFF_CAP = 2.0, 10.0
    rng = random.Random(7)
    for attempt, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (9, 10.0)]:
        delays = [publishing.retry_delay(attempt=attempt, rng=rng) for _ in range(300)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8 and min(delays) < ceiling * 0.2  # spread over the whole range


def test_retry_delay_is_never_earlier_than_retry_after_even_above_the_cap(settings):
    settings.PUBLISH_BACKOFF_BASE, settings.PUBLISH_BACKOFF_CAP = 2.0, 10.0
    assert all(publishing.retry_delay(attempt=1, retry_after=5) >= 5 for _ in range(100))
    assert publishing.retry_delay(attempt=1, retry_after=60) == 60
    assert publishing.countdown_for(60) == 10.0  # the broker only holds it up to the cap; the sweeper does the rest


def test_every_legal_move_has_a_dotted_audit_action_and_no_state_is_unreachable():
    assert all(action.startswith("publication.") for action in publishing.TRANSITIONS.values())
    # A publication is created queued, or scheduled (approved for a later time: issue 12 §7).
    reachable = {S.QUEUED, S.SCHEDULED} | {to for _, to in publishing.TRANSITIONS}
    assert reachable == set(S.values)


def test_an_illegal_move_is_refused_before_anything_is_written(service, responder):
    publication = approved_publication(service=service, author=responder)
    with transaction.atomic(), pytest.raises(publishing.IllegalMove):
        publishing._move(Publication.objects.select_for_update().get(pk=publication.pk), S.ABANDONED)
    with transaction.atomic(), pytest.raises(publishing.IllegalMove):
        publishing._move(Publication.objects.get(pk=publication.pk), S.SENDING, state_is_not_a_field=True)
    publication.refresh_from_db()
    assert publication.state == S.QUEUED and not AuditEvent.objects.filter(target_type="publication").exists()


# --- Integrity of what is sent ------------------------------------------------------------------------------------
def test_a_request_changed_behind_the_trigger_is_refused_failed_and_audited_without_any_request(
    fake_isdown, service, responder, admin_db
):
    publication = approved_publication(service=service, author=responder)
    route = fake_isdown.post("/api/v2/incidents")
    # Only a superuser can do this (the app's role cannot): switch triggers off, change the approved words.
    with admin_db() as superuser:
        superuser.execute("SET session_replication_role = replica")
        superuser.execute(
            "UPDATE incidents_revisionrequest SET body = replace(body, 'Elevated', 'Evil') WHERE id = %s",
            [publication.request_id],
        )

    step = publishing.process(publication_id=publication.pk)

    publication.refresh_from_db()
    assert step.state == S.FAILED == publication.state
    assert "no longer matches its SHA-256" in publication.last_error and not route.called
    assert publication.attempt_rows.count() == 0
    assert AuditEvent.objects.filter(action="publication.refused", target_id=str(publication.pk)).exists()


def test_a_publication_whose_approval_covers_another_hash_is_refused(fake_isdown, service, responder):
    publication = approved_publication(service=service, author=responder)
    Review.objects.filter(revision=publication.revision).update(sha256="0" * 64)
    route = fake_isdown.post("/api/v2/incidents")

    publishing.process(publication_id=publication.pk)

    publication.refresh_from_db()
    assert publication.state == S.FAILED and "no approval covers" in publication.last_error and not route.called


def test_the_body_sent_is_the_stored_text_byte_for_byte(fake_isdown, service, responder):
    publication = approved_publication(service=service, author=responder, title="Ünïcode — “quotes”")
    route = fake_isdown.post("/api/v2/incidents").respond(201, json={"data": incident_json("55001")})

    publishing.process(publication_id=publication.pk)

    assert route.calls.last.request.content == publication.request.body.encode("utf-8")
    assert publication.attempt_rows.get().request_sha256 == publication.request.sha256


# --- Send outcomes --------------------------------------------------------------------------------------------
def test_a_successful_create_stores_incident_updates_and_publishes_the_draft(fake_isdown, service, responder):
    publication = approved_publication(service=service, author=responder)
    fake_isdown.post("/api/v2/incidents").respond(201, json={"data": incident_json("55001")})

    step = publishing.process(publication_id=publication.pk, task_id="task-1")

    publication.refresh_from_db()
    assert step == publishing.Step(state=S.PUBLISHED)
    incident = publication.incident
    assert incident.remote_id == "55001" and incident.service == service
    assert incident.remote_payload["id"] == "55001"
    assert list(incident.updates.values_list("position", "stage")) == [(0, "investigating")]
    assert publication.draft.state == DraftState.PUBLISHED
    assert publication.watch_until is None  # one send: nothing to watch for
    attempt = publication.attempt_rows.get()
    assert (attempt.status_code, attempt.outcome) == (201, O.PUBLISHED)
    sending, published = AuditEvent.objects.filter(target_type="publication").order_by("seq")
    assert (sending.action, published.action) == ("publication.sending", "publication.published")
    assert published.actor_label == "system:worker" and published.context["task_id"] == "task-1"
    assert published.changes["state"] == ["sending", "published"]


def test_a_not_sent_error_schedules_a_retry_and_the_last_attempt_fails_with_the_reason(fake_isdown, service, responder):
    publication = approved_publication(service=service, author=responder)
    fake_isdown.post("/api/v2/incidents").mock(side_effect=httpx.ConnectError("connection refused"))

    step = publishing.process(publication_id=publication.pk)
    publication.refresh_from_db()
    assert publication.state == S.RETRY_WAIT and 0 <= step.run_again_in <= 1.0
    assert publishing.process(publication_id=publication.pk).state == S.RETRY_WAIT  # not due yet: nothing sent
    assert fake_isdown.calls.call_count == 1

    for _ in range(2):
        due_now(publication)
        step = publishing.process(publication_id=publication.pk)
    publication.refresh_from_db()
    assert publication.state == S.FAILED and step.run_again_in is None
    assert publication.attempts == 3 and "Gave up after 3 attempts" in publication.last_error
    assert [a.outcome for a in publication.attempt_rows.all()] == [O.NOT_SENT] * 3


def test_a_permanent_refusal_fails_at_once_and_tells_the_approvers_and_the_author(
    fake_isdown, service, responder, approver, approver2, auditor
):
    publication = approved_publication(service=service, author=responder)
    fake_isdown.post("/api/v2/incidents").respond(
        422, json={"errors": [{"status": 422, "detail": "Status must be 'minor' or 'major'"}]}
    )

    publishing.process(publication_id=publication.pk)

    publication.refresh_from_db()
    assert publication.state == S.FAILED and "Status must be" in publication.last_error
    assert publication.draft.state == DraftState.FAILED
    notification = Notification.objects.get(kind="publication_failed")
    assert notification.recipients == sorted([responder.email, approver.email, approver2.email])
    assert f"/drafts/{publication.draft_id}/" in notification.body and "Status must be" in notification.body


# --- Reconcile over a window ------------------------------------------------------------------------------------
def test_an_unknown_outcome_is_looked_at_over_the_whole_window_before_anything_is_sent_again(
    fake_isdown, service, responder, settings
):
    publication = approved_publication(service=service, author=responder)
    post = fake_isdown.post("/api/v2/incidents").respond(504, text="<html>504 Gateway Timeout</html>")
    fake_isdown.get("/api/v2/incidents").respond(200, json=listing())

    step = publishing.process(publication_id=publication.pk)
    publication.refresh_from_db()
    assert publication.state == S.RECONCILING and step.run_again_in == pytest.approx(5.0, abs=0.5)
    assert publication.next_attempt_at == publication.unknown_since + timedelta(seconds=5)

    for look, offset in enumerate(settings.PUBLISH_RECONCILE_WINDOWS[1:], start=1):
        due_now(publication)
        publishing.process(publication_id=publication.pk)
        publication.refresh_from_db()
        assert publication.state == S.RECONCILING, f"look {look}"
        assert publication.next_attempt_at == publication.unknown_since + timedelta(seconds=offset)
        assert post.call_count == 1  # nothing sent again while the window is open
    due_now(publication)
    publishing.process(publication_id=publication.pk)
    publication.refresh_from_db()
    assert publication.state == S.RETRY_WAIT and "Proven absent" in publication.last_error
    assert [o for k, o in kinds(publication) if k == AttemptKind.RECONCILE] == [O.ABSENT] * 3
    assert AuditEvent.objects.filter(action="publication.proven_absent").exists()


def test_a_create_found_at_a_later_look_is_adopted_not_sent_again(fake_isdown, service, responder):
    publication = approved_publication(service=service, author=responder)
    post = fake_isdown.post("/api/v2/incidents").mock(side_effect=httpx.ReadTimeout("timed out"))
    lists = fake_isdown.get("/api/v2/incidents")
    lists.side_effect = [httpx.Response(200, json=listing()), httpx.Response(200, json=listing(incident_json("55009")))]

    publishing.process(publication_id=publication.pk)
    due_now(publication)
    publishing.process(publication_id=publication.pk)  # absent, look again later
    due_now(publication)
    publishing.process(publication_id=publication.pk)  # there it is

    publication.refresh_from_db()
    assert publication.state == S.PUBLISHED and publication.remote_id == "55009" and post.call_count == 1
    assert "found on IsDown" in publication.result["how"]


def test_someone_elses_incident_with_the_same_title_but_other_words_is_not_ours(fake_isdown, service, responder):
    publication = approved_publication(service=service, author=responder, description="Our words.")
    fake_isdown.post("/api/v2/incidents").respond(502, text="bad gateway")
    theirs = incident_json("55002", description="Their words.")
    fake_isdown.get("/api/v2/incidents").respond(200, json=listing(theirs))

    publishing.process(publication_id=publication.pk)
    due_now(publication)
    publishing.process(publication_id=publication.pk)

    publication.refresh_from_db()
    assert publication.state == S.RECONCILING and publication.remote_id == ""
    assert publication.attempt_rows.filter(kind=AttemptKind.RECONCILE).get().outcome == O.ABSENT


def test_two_exact_matches_after_an_unknown_outcome_need_attention_and_tell_people(fake_isdown, service, responder):
    publication = approved_publication(service=service, author=responder)
    fake_isdown.post("/api/v2/incidents").respond(504, text="<html>504 Gateway Timeout</html>")
    fake_isdown.get("/api/v2/incidents").respond(200, json=listing(incident_json("55002"), incident_json("55001")))

    publishing.process(publication_id=publication.pk)
    due_now(publication)
    assert publishing.process(publication_id=publication.pk).state == S.NEEDS_ATTENTION
    publication.refresh_from_db()
    assert "#55002" in publication.last_error and "#55001" in publication.last_error
    assert publication.draft.state == DraftState.NEEDS_ATTENTION
    assert Notification.objects.filter(kind="publication_needs_attention").exists()


def test_a_list_that_cannot_be_read_in_full_is_ambiguous_not_absent(fake_isdown, service, responder):
    publication = approved_publication(service=service, author=responder)
    fake_isdown.post("/api/v2/incidents").respond(504, text="gateway timeout")
    elsewhere = {"data": [], "links": {"next": "https://evil.example/api/v2/incidents?page=2"}}
    fake_isdown.get("/api/v2/incidents").respond(200, json=elsewhere)

    publishing.process(publication_id=publication.pk)
    due_now(publication)
    publishing.process(publication_id=publication.pk)

    publication.refresh_from_db()
    assert publication.state == S.NEEDS_ATTENTION and "could not be read in full" in publication.last_error


def test_a_check_that_fails_for_a_reason_that_does_not_last_is_retried_not_escalated(fake_isdown, service, responder):
    publication = approved_publication(service=service, author=responder)
    fake_isdown.post("/api/v2/incidents").respond(503, text="down")
    lists = fake_isdown.get("/api/v2/incidents")
    lists.side_effect = [
        httpx.Response(503, text="down"),
        httpx.Response(429, headers={"Retry-After": "7"}, text="slow down"),
        httpx.Response(200, json=listing(incident_json("55003"))),
    ]

    publishing.process(publication_id=publication.pk)
    for _ in range(2):
        due_now(publication)
        step = publishing.process(publication_id=publication.pk)
        publication.refresh_from_db()
        assert publication.state == S.RECONCILING and publication.checks_failing_since is not None
    assert step.run_again_in >= 7  # the check honoured Retry-After
    due_now(publication)
    publishing.process(publication_id=publication.pk)

    publication.refresh_from_db()
    assert publication.state == S.PUBLISHED and publication.remote_id == "55003"
    checks = [o for k, o in kinds(publication) if k == AttemptKind.RECONCILE]
    assert checks == [O.CHECK_FAILED, O.CHECK_FAILED, O.FOUND]


def test_checks_failing_past_their_patience_or_refused_go_to_a_human(fake_isdown, service, responder, settings):
    settings.PUBLISH_CHECK_PATIENCE = 60.0
    stuck = approved_publication(service=service, author=responder, title="a")
    fake_isdown.post("/api/v2/incidents").respond(504, text="gateway timeout")
    fake_isdown.get("/api/v2/incidents").respond(500, text="boom")
    publishing.process(publication_id=stuck.pk)
    due_now(stuck)
    publishing.process(publication_id=stuck.pk)
    stuck.refresh_from_db()
    assert stuck.state == S.RECONCILING
    Publication.objects.filter(pk=stuck.pk).update(checks_failing_since=timezone.now() - timedelta(seconds=61))
    due_now(stuck)
    publishing.process(publication_id=stuck.pk)
    stuck.refresh_from_db()
    assert stuck.state == S.NEEDS_ATTENTION and "checks have failed since" in stuck.last_error

    update = update_publication(
        incident=Incident.objects.create(service=service, remote_id="777", title="Gone"), author=responder
    )
    fake_isdown.patch("/api/v2/incidents/777").respond(502, text="bad gateway")
    fake_isdown.get("/api/v2/incidents/777").respond(404, json={"errors": [{"status": 404, "detail": "Not found"}]})
    publishing.process(publication_id=update.pk)
    due_now(update)
    publishing.process(publication_id=update.pk)
    update.refresh_from_db()
    assert update.state == S.NEEDS_ATTENTION and "IsDown refused the check" in update.last_error


def test_a_title_change_of_unknown_outcome_is_absent_only_if_the_incident_did_not_change_since(
    fake_isdown, service, responder
):
    incident = Incident.objects.create(service=service, remote_id="55001", title="Old")
    publication = update_publication(incident=incident, author=responder, title="New", description="", stage="")
    fake_isdown.patch("/api/v2/incidents/55001").respond(502, text="bad gateway")
    long_ago = timezone.now() - timedelta(hours=1)
    gets = fake_isdown.get("/api/v2/incidents/55001")
    gets.side_effect = [
        httpx.Response(200, json={"data": incident_json(title="Old", created_at=long_ago)}),
        httpx.Response(
            200, json={"data": incident_json(title="Someone's", created_at=long_ago, updated_at=timezone.now())}
        ),
    ]
    publishing.process(publication_id=publication.pk)
    due_now(publication)
    publishing.process(publication_id=publication.pk)
    assert publication.attempt_rows.filter(kind=AttemptKind.RECONCILE).get().outcome == O.ABSENT

    due_now(publication)
    publishing.process(publication_id=publication.pk)
    publication.refresh_from_db()
    assert publication.state == S.NEEDS_ATTENTION and "changed since the first attempt" in publication.last_error


# --- The twin watch and late answers -----------------------------------------------------------------------------
def _resent_and_published(fake_isdown, publication, remote_id="55001"):
    """First send: unknown; the whole window finds nothing; the resend succeeds."""
    post = fake_isdown.post("/api/v2/incidents")
    post.side_effect = [httpx.ReadTimeout("timed out"), httpx.Response(201, json={"data": incident_json(remote_id)})]
    fake_isdown.get("/api/v2/incidents").respond(200, json=listing())
    publishing.process(publication_id=publication.pk)
    for _ in range(3):
        due_now(publication)
        publishing.process(publication_id=publication.pk)
    due_now(publication)
    step = publishing.process(publication_id=publication.pk)
    publication.refresh_from_db()
    assert publication.state == S.PUBLISHED and post.call_count == 2
    return step


def test_after_a_resend_a_late_twin_is_detected_audited_and_told(fake_isdown, service, responder, approver):
    publication = approved_publication(service=service, author=responder)
    step = _resent_and_published(fake_isdown, publication)
    assert publication.watch_until is not None and step.run_again_in == pytest.approx(5.0, abs=0.5)
    assert not publication.is_final  # still watched: the page keeps polling

    fake_isdown.get("/api/v2/incidents").respond(200, json=listing(incident_json("55002"), incident_json("55001")))
    due_now(publication)
    publishing.process(publication_id=publication.pk)

    publication.refresh_from_db()
    assert publication.state == S.DUPLICATE_DETECTED and publication.duplicate_remote_ids == ["55002"]
    assert "#55002 duplicate #55001" in publication.last_error
    assert AuditEvent.objects.filter(action="publication.duplicate_detected", target_id=str(publication.pk)).exists()
    assert approver.email in Notification.objects.get(kind="publication_duplicate_detected").recipients


def test_two_of_its_own_sends_found_at_one_look_are_published_and_a_detected_duplicate(fake_isdown, service, responder):
    publication = approved_publication(service=service, author=responder)
    fake_isdown.post("/api/v2/incidents").mock(side_effect=httpx.ReadTimeout("timed out"))
    lists = fake_isdown.get("/api/v2/incidents")
    first_landed, second_landed = timezone.now() + timedelta(seconds=1), timezone.now() + timedelta(seconds=2)
    lists.side_effect = [httpx.Response(200, json=listing())] * 3 + [
        httpx.Response(
            200,
            json=listing(
                incident_json("55012", created_at=second_landed), incident_json("55011", created_at=first_landed)
            ),
        )
    ]
    publishing.process(publication_id=publication.pk)  # send 1: unknown
    for _ in range(3):  # absent at every look: sent again
        due_now(publication)
        publishing.process(publication_id=publication.pk)
    due_now(publication)
    publishing.process(publication_id=publication.pk)  # send 2: unknown too
    due_now(publication)
    publishing.process(publication_id=publication.pk)  # both landed late

    publication.refresh_from_db()
    assert publication.state == S.DUPLICATE_DETECTED and publication.duplicate_remote_ids == ["55012"]
    assert publication.remote_id == "55011" and publication.incident.remote_id == "55011"
    assert Notification.objects.filter(kind="publication_duplicate_detected").exists()


def test_two_copies_of_words_another_publication_also_sent_stay_ambiguous(fake_isdown, service, responder):
    publication = approved_publication(service=service, author=responder)
    other = approved_publication(service=service, author=responder)  # the very same words, approved twice
    Publication.objects.filter(pk=other.pk).update(first_sent_at=timezone.now())
    fake_isdown.post("/api/v2/incidents").mock(side_effect=httpx.ReadTimeout("timed out"))
    fake_isdown.get("/api/v2/incidents").respond(200, json=listing(incident_json("55012"), incident_json("55011")))
    publishing.process(publication_id=publication.pk)
    Publication.objects.filter(pk=publication.pk).update(attempts=2)
    publication.attempt_rows.update(outcome=O.UNKNOWN)
    publishing.PublishAttempt.objects.create(
        publication=publication, number=9, kind=AttemptKind.SEND, started_at=timezone.now(), outcome=O.UNKNOWN
    )
    due_now(publication)
    publishing.process(publication_id=publication.pk)

    publication.refresh_from_db()
    assert publication.state == S.NEEDS_ATTENTION


def test_a_watch_that_finds_no_twin_ends_after_its_last_look(fake_isdown, service, responder, settings):
    publication = approved_publication(service=service, author=responder)
    _resent_and_published(fake_isdown, publication)
    fake_isdown.get("/api/v2/incidents").respond(200, json=listing(incident_json("55001")))
    for _ in settings.PUBLISH_WATCH_WINDOWS:
        due_now(publication)
        publishing.process(publication_id=publication.pk)
    publication.refresh_from_db()
    assert publication.state == S.PUBLISHED and publication.watch_until is None and publication.is_final
    assert [o for k, o in kinds(publication) if k == AttemptKind.WATCH] == [O.NO_TWIN, O.NO_TWIN]


def test_a_success_that_lands_on_a_row_already_published_is_a_detected_duplicate(fake_isdown, service, responder):
    publication = approved_publication(service=service, author=responder)
    claim = publishing._claim(publication_id=publication.pk, task_id="")
    # Meanwhile the lease ran out, the sweeper took over and another send published incident 55001.
    set_state(publication, S.PUBLISHED, remote_id="55001", attempt_token=uuid.uuid4(), lease_expires_at=None)
    late = isdown.Result(isdown.parse_incident(incident_json("55007")), isdown.Exchange(201, 900, ""))

    publishing._record_send(claim, result=late, error=None)

    publication.refresh_from_db()
    assert publication.state == S.DUPLICATE_DETECTED and publication.duplicate_remote_ids == ["55007"]
    assert publication.attempt_rows.get(pk=claim.attempt_id).outcome == O.LATE


def test_a_late_success_on_a_row_still_being_checked_settles_it(fake_isdown, service, responder):
    publication = approved_publication(service=service, author=responder)
    claim = publishing._claim(publication_id=publication.pk, task_id="")
    set_state(publication, S.RECONCILING, attempt_token=None, lease_expires_at=None)
    late = isdown.Result(isdown.parse_incident(incident_json("55008")), isdown.Exchange(201, 900, ""))

    publishing._record_send(claim, result=late, error=None)

    publication.refresh_from_db()
    assert publication.state == S.PUBLISHED and publication.remote_id == "55008"


# --- The fence ----------------------------------------------------------------------------------------------------
def test_a_send_whose_deadline_passed_during_its_claim_is_never_sent(fake_isdown, service, responder, monkeypatch):
    # The claim is the fence: the call's deadline starts before the claim. A claim that took longer than the whole
    # deadline (a stalled database, a paused VM) must not send: by then its lease may be someone else's.
    publication = approved_publication(service=service, author=responder)
    route = fake_isdown.post("/api/v2/incidents")
    real_claim, real_monotonic = publishing._claim, isdown.time.monotonic
    skew = {"seconds": 0.0}
    monkeypatch.setattr(isdown.time, "monotonic", lambda: real_monotonic() + skew["seconds"])

    def stalled_claim(**kwargs):
        claim = real_claim(**kwargs)
        skew["seconds"] += publishing.settings.ISDOWN_TIMEOUT + 1  # the claim "took" longer than the deadline
        return claim

    monkeypatch.setattr(publishing, "_claim", stalled_claim)
    step = publishing.process(publication_id=publication.pk)

    assert not route.called
    assert step.state == S.RETRY_WAIT
    assert publication.attempt_rows.get().outcome == O.NOT_SENT


def test_the_lease_the_claim_writes_outlasts_the_calls_deadline(fake_isdown, service, responder):
    publication = approved_publication(service=service, author=responder)
    seen = {}

    def record(request):
        deadline = isdown._current_deadline.get()
        seen["deadline_left"] = deadline.remaining()
        seen["lease_left"] = (
            Publication.objects.get(pk=publication.pk).lease_expires_at - timezone.now()
        ).total_seconds()
        return httpx.Response(201, json={"data": incident_json("55001")})

    fake_isdown.post("/api/v2/incidents").mock(side_effect=record)
    publishing.process(publication_id=publication.pk)

    assert 0 < seen["deadline_left"] < seen["lease_left"]


# --- Order per incident -------------------------------------------------------------------------------------------
def test_a_later_publication_for_the_same_incident_waits_and_is_handed_the_queue(
    fake_isdown, service, responder, no_broker, django_capture_on_commit_callbacks
):
    incident = Incident.objects.create(service=service, remote_id="55001", title="Elevated API errors")
    first = update_publication(incident=incident, author=responder, description="First.")
    second = update_publication(incident=incident, author=responder, description="Second.", stage=Stage.RESOLVED)
    patch = fake_isdown.patch("/api/v2/incidents/55001")
    patch.side_effect = [
        httpx.Response(429, headers={"Retry-After": "30"}),
        httpx.Response(200, json={"data": incident_json()}),
        httpx.Response(200, json={"data": incident_json()}),
    ]

    publishing.process(publication_id=first.pk)
    step = publishing.process(publication_id=second.pk)
    assert step.waiting_for == first.pk and second.attempt_rows.count() == 0 and patch.call_count == 1
    assert publishing.sweep() == []  # neither is due: the first waits for Retry-After, the second for the first

    due_now(first)
    with django_capture_on_commit_callbacks(execute=True):
        publishing.process(publication_id=first.pk)
    assert ("publish", second.pk) in no_broker.sent
    assert publishing.process(publication_id=second.pk).state == S.PUBLISHED
    assert [call.request.content for call in patch.calls][1:] == [
        first.request.body.encode(),
        second.request.body.encode(),
    ]


def test_a_failed_publication_holds_the_queue_until_it_is_abandoned_with_a_reason(
    fake_isdown, service, responder, approver, no_broker, django_capture_on_commit_callbacks
):
    incident = Incident.objects.create(service=service, remote_id="55001", title="Elevated API errors")
    first = update_publication(incident=incident, author=responder)
    second = update_publication(incident=incident, author=responder, description="Later.")
    set_state(first, S.FAILED)
    assert publishing.process(publication_id=second.pk).waiting_for == first.pk

    with pytest.raises(publishing.VerificationFailed, match="reason is required"):
        publishing.abandon(publication_id=first.pk, user=approver, reason="  ")
    with django_capture_on_commit_callbacks(execute=True):
        publishing.abandon(publication_id=first.pk, user=approver, reason="Superseded by the next update.")

    first.refresh_from_db()
    assert first.state == S.ABANDONED and first.decision_note == "Superseded by the next update."
    assert first.draft.state == DraftState.ABANDONED
    event = AuditEvent.objects.get(action="publication.abandoned")
    assert event.actor_id == approver.pk and event.changes["reason"] == [None, "Superseded by the next update."]
    assert ("publish", second.pk) in no_broker.sent


def test_the_database_allows_one_holding_publication_per_incident(service, responder):
    incident = Incident.objects.create(service=service, remote_id="55001", title="t")
    first = update_publication(incident=incident, author=responder)
    second = update_publication(incident=incident, author=responder, description="Other.")
    set_state(first, S.FAILED)
    with pytest.raises(IntegrityError), transaction.atomic():
        Publication.objects.filter(pk=second.pk).update(state=S.RETRY_WAIT)


# --- Sweeper ------------------------------------------------------------------------------------------------
def test_an_expired_send_lease_goes_to_the_reconcile_window_and_a_live_one_is_left_alone(
    fake_isdown, service, responder, settings
):
    settings.SWEEP_INTERVAL = 1
    publication = approved_publication(service=service, author=responder)
    publishing._claim(publication_id=publication.pk, task_id="")
    assert publishing.sweep() == []

    Publication.objects.filter(pk=publication.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert publishing.sweep() == [(publication.pk, 5.0)]  # moved on; its first look is 5 s away
    publication.refresh_from_db()
    assert publication.state == S.RECONCILING and publication.lease_expires_at is None
    assert publication.next_attempt_at == publication.unknown_since + timedelta(seconds=5)
    assert publication.attempt_rows.get().outcome == O.LOST
    assert AuditEvent.objects.filter(action="publication.lease_expired").exists()


def test_the_sweeper_leaves_recent_waiting_and_not_yet_due_publications_alone(service, responder, settings):
    settings.SWEEP_INTERVAL = 60
    recent = approved_publication(service=service, author=responder, title="a")
    from incidents import enqueue

    enqueue.publication(recent.pk)
    later = approved_publication(service=service, author=responder, title="b")
    set_state(later, S.RETRY_WAIT, next_attempt_at=timezone.now() + timedelta(seconds=60))
    lost = approved_publication(service=service, author=responder, title="c")
    incident = Incident.objects.create(service=service, remote_id="55001", title="t")
    head = update_publication(incident=incident, author=responder)
    behind = update_publication(incident=incident, author=responder, description="Behind.")
    assert publishing.sweep() == [(lost.pk, 0.0), (head.pk, 0.0)]
    assert behind.pk not in dict(publishing.sweep())


# --- Human actions ------------------------------------------------------------------------------------------
def test_retry_now_requeues_a_failed_publication_with_a_fresh_budget_and_is_audited(
    service, responder, approver, no_broker, django_capture_on_commit_callbacks
):
    publication = set_state(approved_publication(service=service, author=responder), S.FAILED, attempts=3)
    with django_capture_on_commit_callbacks(execute=True):
        publishing.retry_now(publication_id=publication.pk, user=approver, expected_state=S.FAILED)
    publication.refresh_from_db()
    assert publication.state == S.QUEUED and publication.attempts == 0
    assert no_broker.sent == [("publish", publication.pk)]
    event = AuditEvent.objects.get(action="publication.retry_requested")
    assert event.actor_id == approver.pk and event.changes["state"] == ["failed", "queued"]


def test_retry_now_on_needs_attention_checks_again_over_a_fresh_window(service, responder, approver):
    publication = set_state(approved_publication(service=service, author=responder), S.NEEDS_ATTENTION)
    publishing.retry_now(publication_id=publication.pk, user=approver)
    publication.refresh_from_db()
    assert publication.state == S.RECONCILING and publication.unknown_since is not None


def test_human_actions_are_refused_when_the_state_has_moved_on(service, responder, approver):
    publication = set_state(approved_publication(service=service, author=responder), S.PUBLISHED)
    for action in (publishing.retry_now, publishing.send_again):
        with pytest.raises(publishing.InvalidTransition):
            action(publication_id=publication.pk, user=approver)
    with pytest.raises(publishing.InvalidTransition):
        publishing.mark_published(publication_id=publication.pk, user=approver, remote_id="55001")
    with pytest.raises(publishing.InvalidTransition):
        publishing.abandon(publication_id=publication.pk, user=approver, reason="x")
    stale = set_state(approved_publication(service=service, author=responder, title="x"), S.FAILED)
    with pytest.raises(publishing.InvalidTransition):  # the page showed "needs attention"; it is "failed" now
        publishing.send_again(publication_id=stale.pk, user=approver, expected_state=S.NEEDS_ATTENTION)
    assert not AuditEvent.objects.filter(action__startswith="publication.").exists()


def test_only_approvers_may_act_on_a_publication(service, responder):
    publication = set_state(approved_publication(service=service, author=responder), S.NEEDS_ATTENTION)
    with pytest.raises(RoleRequired):
        publishing.send_again(publication_id=publication.pk, user=responder)
    with pytest.raises(RoleRequired):
        publishing.abandon(publication_id=publication.pk, user=responder, reason="no")
    publication.refresh_from_db()
    assert publication.state == S.NEEDS_ATTENTION


def test_mark_published_checks_the_incident_on_isdown_first(fake_isdown, service, responder, approver):
    publication = set_state(approved_publication(service=service, author=responder), S.NEEDS_ATTENTION)
    fake_isdown.get("/api/v2/incidents/404404").respond(404, json={"errors": [{"status": 404, "detail": "Not found"}]})
    fake_isdown.get("/api/v2/incidents/77").respond(200, json={"data": incident_json("77", service_id=9999)})
    fake_isdown.get("/api/v2/incidents/55001").respond(200, json={"data": incident_json("55001")})

    with pytest.raises(publishing.VerificationFailed, match="no incident #404404"):
        publishing.mark_published(publication_id=publication.pk, user=approver, remote_id="404404")
    with pytest.raises(publishing.VerificationFailed, match="another IsDown service"):
        publishing.mark_published(publication_id=publication.pk, user=approver, remote_id="#77")
    with pytest.raises(publishing.VerificationFailed, match="is a number"):
        publishing.mark_published(publication_id=publication.pk, user=approver, remote_id="9" * 400)
    publication.refresh_from_db()
    assert publication.state == S.NEEDS_ATTENTION

    publishing.mark_published(publication_id=publication.pk, user=approver, remote_id="55001")
    publication.refresh_from_db()
    assert publication.state == S.PUBLISHED and publication.incident.remote_id == "55001"
    assert [a.outcome for a in publication.attempt_rows.filter(kind=AttemptKind.VERIFY)] == [
        O.NOT_VERIFIED,
        O.NOT_VERIFIED,
        O.VERIFIED,
    ]
    assert AuditEvent.objects.get(action="publication.marked_published").actor_id == approver.pk


def test_a_duplicated_create_is_deleted_on_isdown_by_an_approver(fake_isdown, service, responder, approver):
    publication = set_state(
        approved_publication(service=service, author=responder),
        S.DUPLICATE_DETECTED,
        remote_id="55001",
        duplicate_remote_ids=["55002"],
    )
    delete = fake_isdown.delete("/api/v2/incidents/55002").respond(204)

    publishing.delete_duplicates(publication_id=publication.pk, user=approver)

    publication.refresh_from_db()
    assert delete.called and publication.state == S.PUBLISHED
    assert publication.attempt_rows.get(kind=AttemptKind.DELETE).outcome == O.DELETED
    assert AuditEvent.objects.get(action="publication.duplicate_deleted").changes["deleted"] == [None, ["55002"]]


def test_a_duplicated_update_cannot_be_deleted_and_is_acknowledged_with_a_note(service, responder, approver):
    incident = Incident.objects.create(service=service, remote_id="55001", title="t")
    publication = set_state(update_publication(incident=incident, author=responder), S.DUPLICATE_DETECTED)
    with pytest.raises(publishing.InvalidTransition, match="cannot be deleted"):
        publishing.delete_duplicates(publication_id=publication.pk, user=approver)
    publishing.acknowledge_duplicate(publication_id=publication.pk, user=approver, note="Posted a correction.")
    publication.refresh_from_db()
    assert publication.state == S.PUBLISHED and publication.decision_note == "Posted a correction."
    assert AuditEvent.objects.filter(action="publication.duplicate_acknowledged", actor_id=approver.pk).exists()


def test_an_update_publication_replaces_the_local_updates_in_order(fake_isdown, service, responder):
    incident = Incident.objects.create(service=service, remote_id="55001", title="Elevated API errors")
    publication = update_publication(incident=incident, author=responder, stage=Stage.RESOLVED, description="Fixed.")
    t0 = timezone.now() - timedelta(minutes=5)
    updates = [
        {"status": "resolved", "description": "Fixed.", "created_at": timezone.now().isoformat()},
        {"status": "investigating", "description": "We are looking into it.", "created_at": t0.isoformat()},
    ]
    fake_isdown.patch("/api/v2/incidents/55001").respond(200, json={"data": incident_json("55001", updates=updates)})

    assert publishing.process(publication_id=publication.pk).state == S.PUBLISHED
    assert list(incident.updates.values_list("position", "stage")) == [(0, "investigating"), (1, "resolved")]


def test_an_answer_with_values_this_app_does_not_know_is_recorded_as_sent(fake_isdown, service, responder):
    publication = approved_publication(service=service, author=responder)
    odd = incident_json("55001", title="T" * 400, severity="critical", stage="postmortem")
    fake_isdown.post("/api/v2/incidents").respond(201, json={"data": odd})

    assert publishing.process(publication_id=publication.pk).state == S.PUBLISHED
    incident = Incident.objects.get(remote_id="55001")
    assert (len(incident.title), incident.severity, incident.stage) == (400, "critical", "postmortem")
    assert incident.get_severity_display() == "critical"
