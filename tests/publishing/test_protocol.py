"""The protocol's decisions in-process, with IsDown faked at the HTTP seam by respx: classification, backoff,
reconcile verdicts, the hash check, the human actions and the sweeper's lease handling."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import respx
from django.utils import timezone

from incidents import isdown, publishing
from incidents.access import RoleRequired
from incidents.models import AttemptKind, AuditEvent, DraftState, Incident, PublicationState, Revision, Stage

from .factories import approved_publication, update_publication

S = PublicationState
BASE = "http://isdown.test"
NOW = datetime(2025, 3, 15, 10, 0, tzinfo=UTC)


@pytest.fixture
def fake_isdown(settings):
    settings.ISDOWN_API_URL = BASE
    settings.PUBLISH_BACKOFF_BASE = 1.0
    settings.PUBLISH_BACKOFF_CAP = 30.0
    settings.PUBLISH_MAX_ATTEMPTS = 3
    settings.PUBLISH_RECONCILE_DELAY = 0.0
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        yield mock


@pytest.fixture
def service(api_service):
    return api_service


def incident_json(remote_id="55001", *, title="Elevated API errors", created_at=None, updates=None, service_id=1001):
    created = (created_at or timezone.now()).isoformat().replace("+00:00", "Z")
    return {
        "id": remote_id,
        "type": "incidents",
        "attributes": {
            "title": title,
            "description": "We are looking into it.",
            "status": "minor",
            "resolved": False,
            "created_at": created,
            "updated_at": created,
            "resolved_at": None,
            "service_id": service_id,
            "service": "API",
            "url": None,
            "updates": updates
            if updates is not None
            else [{"status": "investigating", "description": "We are looking into it.", "created_at": created}],
        },
    }


def remote(remote_id="1", *, title="T", created_at=NOW, updates=()):
    return isdown.RemoteIncident(
        id=remote_id,
        title=title,
        description="",
        severity="minor",
        resolved=False,
        created_at=created_at,
        updated_at=created_at,
        resolved_at=None,
        service_id=1001,
        service_name="API",
        url=None,
        updates=tuple(updates),
    )


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


def test_judge_create_finds_one_match_in_the_window_and_ignores_known_and_older_incidents():
    start = NOW - publishing.CLOCK_SKEW_MARGIN
    body = {"title": "T"}
    candidates = [
        remote("3", title="T", created_at=NOW + timedelta(seconds=1)),
        remote("2", title="T", created_at=NOW - timedelta(minutes=5)),  # before the first attempt
        remote("1", title="Other", created_at=NOW + timedelta(seconds=1)),
    ]
    found = publishing.judge_create(candidates=candidates, body=body, window_start=start, known_ids=set()).found
    assert found.id == "3"
    assert publishing.judge_create(candidates=candidates, body=body, window_start=start, known_ids={"3"}).absent
    # Stamped a little before our attempt started (clock skew) still counts.
    skewed = [remote("4", title="T", created_at=NOW - timedelta(seconds=3))]
    assert publishing.judge_create(candidates=skewed, body=body, window_start=start, known_ids=set()).found


def test_judge_create_with_two_matches_is_undecidable():
    start = NOW - publishing.CLOCK_SKEW_MARGIN
    twins = [remote("5", title="T", created_at=NOW), remote("6", title="T", created_at=NOW)]
    verdict = publishing.judge_create(candidates=twins, body={"title": "T"}, window_start=start, known_ids=set())
    assert verdict.found is None and not verdict.absent and "#5" in verdict.reason


def test_judge_update_matches_stage_and_description_after_the_window():
    start = NOW - publishing.CLOCK_SKEW_MARGIN
    body = {"description": "Fixed.", "resolution_stage": "resolved"}
    old = isdown.RemoteUpdate("resolved", "Fixed.", NOW - timedelta(hours=1))
    new = isdown.RemoteUpdate("resolved", "Fixed.", NOW + timedelta(seconds=1))
    assert publishing.judge_update(remote=remote(updates=[old]), body=body, window_start=start).absent
    assert publishing.judge_update(remote=remote(updates=[old, new]), body=body, window_start=start).found
    twice = publishing.judge_update(remote=remote(updates=[new, new]), body=body, window_start=start)
    assert twice.found is None and not twice.absent
    # A title-only PATCH is idempotent: already as requested counts as found.
    assert publishing.judge_update(remote=remote(title="New"), body={"title": "New"}, window_start=start).found
    assert publishing.judge_update(remote=remote(title="Old"), body={"title": "New"}, window_start=start).absent


# --- One pass against a faked IsDown ------------------------------------------------------------------------
def test_a_tampered_revision_is_refused_failed_and_audited_without_any_request(fake_isdown, service, responder):
    publication = approved_publication(service=service, author=responder)
    Revision.objects.filter(pk=publication.revision_id).update(body={**publication.revision.body, "title": "Evil"})
    route = fake_isdown.post("/api/v2/incidents")

    step = publishing.process(publication_id=publication.pk)

    publication.refresh_from_db()
    assert step.state == S.FAILED == publication.state
    assert "SHA-256" in publication.last_error and not route.called
    assert publication.attempt_rows.count() == 0
    assert AuditEvent.objects.filter(action="publication.refused", target_id=str(publication.pk)).exists()


def test_a_successful_create_stores_incident_updates_and_publishes_the_draft(fake_isdown, service, responder):
    publication = approved_publication(service=service, author=responder)
    fake_isdown.post("/api/v2/incidents").respond(201, json={"data": incident_json("55001")})

    step = publishing.process(publication_id=publication.pk, task_id="task-1")

    publication.refresh_from_db()
    assert step == publishing.Step(state=S.PUBLISHED)
    incident = publication.incident
    assert incident.remote_id == "55001" and incident.service == service
    assert list(incident.updates.values_list("position", "stage")) == [(0, "investigating")]
    assert publication.draft.state == DraftState.PUBLISHED
    attempt = publication.attempt_rows.get()
    assert (attempt.status_code, attempt.outcome, attempt.request_body["title"]) == (201, "published", incident.title)
    event = AuditEvent.objects.get(action="publication.published")
    assert event.actor_label == "system:worker" and event.context["task_id"] == "task-1"


def test_a_not_sent_error_schedules_a_retry_and_the_last_attempt_fails_with_the_reason(fake_isdown, service, responder):
    publication = approved_publication(service=service, author=responder)
    fake_isdown.post("/api/v2/incidents").mock(side_effect=httpx.ConnectError("connection refused"))

    step = publishing.process(publication_id=publication.pk)
    publication.refresh_from_db()
    assert publication.state == S.RETRY_WAIT and 0 <= step.run_again_in <= 1.0
    assert publishing.process(publication_id=publication.pk).state == S.RETRY_WAIT  # not due yet: nothing sent
    assert fake_isdown.calls.call_count == 1

    for _ in range(2):
        type(publication).objects.filter(pk=publication.pk).update(next_attempt_at=timezone.now())
        step = publishing.process(publication_id=publication.pk)
    publication.refresh_from_db()
    assert publication.state == S.FAILED and step.run_again_in is None
    assert publication.attempts == 3 and "Gave up after 3 attempts" in publication.last_error
    assert "ConnectError" in publication.last_error


def test_a_failed_reconcile_call_that_cannot_be_retried_needs_attention(fake_isdown, service, responder):
    publication = approved_publication(service=service, author=responder)
    fake_isdown.post("/api/v2/incidents").mock(side_effect=httpx.ReadTimeout("timed out"))
    fake_isdown.get("/api/v2/incidents").respond(500, json={"errors": [{"status": 500, "detail": "boom"}]})

    assert publishing.process(publication_id=publication.pk).state == S.RECONCILING
    assert publishing.process(publication_id=publication.pk).state == S.NEEDS_ATTENTION

    publication.refresh_from_db()
    assert "Could not check IsDown" in publication.last_error
    assert [(a.kind, a.outcome) for a in publication.attempt_rows.order_by("number")] == [
        ("send", "unknown"),
        ("reconcile", "check_failed"),
    ]
    assert fake_isdown.calls.call_count == 2  # one send, one check: never a blind second send


def test_two_matching_incidents_after_an_unknown_outcome_need_attention(fake_isdown, service, responder):
    publication = approved_publication(service=service, author=responder)
    fake_isdown.post("/api/v2/incidents").respond(504, text="<html>504 Gateway Timeout</html>")
    twins = [incident_json("55002"), incident_json("55001")]
    fake_isdown.get("/api/v2/incidents").respond(200, json={"data": twins})

    publishing.process(publication_id=publication.pk)
    assert publishing.process(publication_id=publication.pk).state == S.NEEDS_ATTENTION
    publication.refresh_from_db()
    assert "#55002" in publication.last_error and "#55001" in publication.last_error
    assert AuditEvent.objects.filter(action="publication.needs_attention").exists()


def test_an_expired_lease_goes_to_reconcile_and_a_live_one_is_left_alone(fake_isdown, service, responder, settings):
    settings.SWEEP_INTERVAL = 1
    publication = approved_publication(service=service, author=responder)
    publication.state, publication.lease_expires_at = S.SENDING, timezone.now() + timedelta(seconds=30)
    publication.save()
    assert publishing.sweep() == []

    type(publication).objects.filter(pk=publication.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert publishing.sweep() == [publication.pk]
    publication.refresh_from_db()
    assert publication.state == S.RECONCILING and publication.lease_expires_at is None


def test_the_sweeper_leaves_a_recently_enqueued_or_not_yet_due_publication_alone(service, responder, settings):
    settings.SWEEP_INTERVAL = 60
    recent = approved_publication(service=service, author=responder, title="a")
    publishing.note_enqueued(publication_id=recent.pk)
    later = approved_publication(service=service, author=responder, title="b")
    type(later).objects.filter(pk=later.pk).update(state=S.RETRY_WAIT, next_attempt_at=timezone.now() + timedelta(60))
    lost = approved_publication(service=service, author=responder, title="c")
    assert publishing.sweep() == [lost.pk]


# --- Human actions ------------------------------------------------------------------------------------------
def _set_state(publication, state, **extra):
    type(publication).objects.filter(pk=publication.pk).update(state=state, **extra)
    publication.refresh_from_db()
    return publication


def test_retry_now_requeues_a_failed_publication_with_a_fresh_budget_and_is_audited(
    service, responder, approver, django_capture_on_commit_callbacks
):
    publication = _set_state(approved_publication(service=service, author=responder), S.FAILED, attempts=3)
    with django_capture_on_commit_callbacks() as callbacks:
        publishing.retry_now(publication_id=publication.pk, user=approver, expected_state=S.FAILED)
    publication.refresh_from_db()
    assert publication.state == S.QUEUED and publication.attempts == 0
    assert len(callbacks) == 1  # the enqueue, after commit
    event = AuditEvent.objects.get(action="publication.retry_requested")
    assert event.actor_id == approver.pk and event.changes["state"] == ["failed", "queued"]


def test_retry_now_on_needs_attention_checks_again_instead_of_sending(service, responder, approver):
    publication = _set_state(approved_publication(service=service, author=responder), S.NEEDS_ATTENTION)
    publishing.retry_now(publication_id=publication.pk, user=approver)
    publication.refresh_from_db()
    assert publication.state == S.RECONCILING


def test_human_actions_are_refused_when_the_state_has_moved_on(service, responder, approver):
    publication = _set_state(approved_publication(service=service, author=responder), S.PUBLISHED)
    for action in (publishing.retry_now, publishing.send_again):
        with pytest.raises(publishing.InvalidTransition):
            action(publication_id=publication.pk, user=approver)
    with pytest.raises(publishing.InvalidTransition):
        publishing.mark_published(publication_id=publication.pk, user=approver, remote_id="55001")
    stale = _set_state(approved_publication(service=service, author=responder, title="x"), S.FAILED)
    with pytest.raises(publishing.InvalidTransition):  # the page showed "needs attention"; it is "failed" now
        publishing.send_again(publication_id=stale.pk, user=approver, expected_state=S.NEEDS_ATTENTION)
    assert not AuditEvent.objects.filter(action__in=["publication.retry_requested", "publication.send_again"]).exists()


def test_only_approvers_may_act_on_a_publication(service, responder):
    publication = _set_state(approved_publication(service=service, author=responder), S.FAILED)
    with pytest.raises(RoleRequired):
        publishing.send_again(publication_id=publication.pk, user=responder)
    publication.refresh_from_db()
    assert publication.state == S.FAILED


def test_mark_published_checks_the_incident_on_isdown_first(fake_isdown, service, responder, approver):
    publication = _set_state(approved_publication(service=service, author=responder), S.NEEDS_ATTENTION)
    fake_isdown.get("/api/v2/incidents/404404").respond(404, json={"errors": [{"status": 404, "detail": "Not found"}]})
    fake_isdown.get("/api/v2/incidents/77").respond(200, json={"data": incident_json("77", service_id=9999)})
    fake_isdown.get("/api/v2/incidents/55001").respond(200, json={"data": incident_json("55001")})

    with pytest.raises(publishing.VerificationFailed, match="no incident #404404"):
        publishing.mark_published(publication_id=publication.pk, user=approver, remote_id="404404")
    with pytest.raises(publishing.VerificationFailed, match="another IsDown service"):
        publishing.mark_published(publication_id=publication.pk, user=approver, remote_id="#77")
    publication.refresh_from_db()
    assert publication.state == S.NEEDS_ATTENTION

    publishing.mark_published(publication_id=publication.pk, user=approver, remote_id="55001")
    publication.refresh_from_db()
    assert publication.state == S.PUBLISHED and publication.incident.remote_id == "55001"
    assert [a.outcome for a in publication.attempt_rows.filter(kind=AttemptKind.VERIFY)] == [
        "not_verified",
        "not_verified",
        "verified",
    ]
    assert AuditEvent.objects.get(action="publication.marked_published").actor_id == approver.pk


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
