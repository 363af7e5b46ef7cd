"""The publishing protocol end to end: a real Celery worker process, the sandbox over real HTTP, faults
injected into the sandbox, and every claim checked against the sandbox's own request log."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from incidents import enqueue, publishing, tasks
from incidents.models import (
    AttemptKind,
    AttemptOutcome,
    AuditEvent,
    DraftState,
    Incident,
    Publication,
    PublicationState,
    Stage,
)
from sandbox import api as sandbox_api
from sandbox.faults import add_fault
from tests.waiting import wait_for

from .conftest import sandbox_incidents, sandbox_requests
from .factories import approved_publication, update_publication

pytestmark = pytest.mark.worker

S = PublicationState


def wait_state(publication: Publication, *states: str, timeout: float = 20.0) -> Publication:
    def reached():
        publication.refresh_from_db()
        return publication.state in states

    wait_for(reached, timeout=timeout, what=f"publication {publication.pk} to reach {states}")
    return publication


def sends(publication: Publication):
    return list(publication.attempt_rows.filter(kind=AttemptKind.SEND).order_by("number"))


def publish_and_wait(publication: Publication, *states: str) -> Publication:
    enqueue.publication(publication.pk)
    return wait_state(publication, *(states or (S.PUBLISHED,)))


def sweep_once() -> list[int]:
    """One sweep, as the beat task runs it; returns the ids it enqueued."""
    due = publishing.sweep()
    for publication_id, countdown in due:
        enqueue.publication(publication_id, countdown=countdown or None)
    return [publication_id for publication_id, _ in due]


def watch_over(publication: Publication) -> Publication:
    def ended():
        publication.refresh_from_db()
        return publication.watch_until is None

    wait_for(ended, what=f"publication {publication.pk}'s watch for a twin to end")
    return publication


def test_create_update_and_resolve_each_send_exactly_one_request(start_worker, service, author):
    start_worker()
    opened = publish_and_wait(approved_publication(service=service, author=author, title="Checkout errors"))

    assert [r.method for r in sandbox_requests()] == ["POST"]
    incident = Incident.objects.get(pk=opened.incident_id)
    remote = sandbox_incidents()
    assert len(remote) == 1 and incident.remote_id == str(remote[0].pk) == opened.remote_id
    assert incident.title == "Checkout errors" and incident.stage == Stage.INVESTIGATING
    assert list(incident.updates.values_list("position", "stage")) == [(0, "investigating")]
    assert opened.draft.state == DraftState.PUBLISHED
    assert [a.outcome for a in opened.attempt_rows.all()] == ["published"]
    assert AuditEvent.objects.filter(action="publication.published", target_id=str(opened.pk)).count() == 1

    update = publish_and_wait(update_publication(incident=incident, author=author))
    assert [r.method for r in sandbox_requests()] == ["POST", "PATCH"]
    assert update.incident_id == incident.pk

    resolve = publish_and_wait(
        update_publication(incident=incident, author=author, stage=Stage.RESOLVED, description="Fixed.")
    )
    assert [r.method for r in sandbox_requests()] == ["POST", "PATCH", "PATCH"]
    incident.refresh_from_db()
    assert resolve.state == S.PUBLISHED
    assert incident.resolved and incident.resolved_at is not None and incident.stage == Stage.RESOLVED
    assert list(incident.updates.values_list("position", "stage", "description")) == [
        (0, "investigating", "We are looking into it."),
        (1, "identified", "Cause identified: a bad deploy."),
        (2, "resolved", "Fixed."),
    ]
    assert len(sandbox_incidents()[0].updates) == 3


def test_a_503_twice_then_success_is_published_once_after_each_window_proved_absence(start_worker, service, author):
    add_fault(kind="status", status=503, count=2, method="POST")
    start_worker()
    publication = publish_and_wait(approved_publication(service=service, author=author))

    assert len(sandbox_requests("POST")) == 3
    assert len(sandbox_incidents()) == 1
    attempts = sends(publication)
    assert publication.attempts == 3
    assert [(a.status_code, a.outcome) for a in attempts] == [(503, "unknown"), (503, "unknown"), (201, "published")]
    assert all(a.finished_at and a.latency_ms is not None for a in attempts)
    assert "503" in attempts[0].response_excerpt
    # A 503 without Retry-After may come from a proxy after the request went through: the whole window was
    # looked at (3 looks) before each resend.
    checks = publication.attempt_rows.filter(kind=AttemptKind.RECONCILE)
    assert [c.outcome for c in checks] == ["absent"] * 6
    # Sent three times, so a late twin was watched for: none came (the 503s were not processed).
    watch_over(publication)
    assert publication.state == S.PUBLISHED
    assert publication.attempt_rows.filter(kind=AttemptKind.WATCH, outcome=AttemptOutcome.NO_TWIN).count() == 3


def test_a_503_with_retry_after_is_retried_without_a_check(start_worker, service, author):
    add_fault(kind="status", status=503, retry_after=0, count=2, method="POST")
    start_worker()
    publication = publish_and_wait(approved_publication(service=service, author=author))

    assert len(sandbox_requests("POST")) == 3 and len(sandbox_requests("GET")) == 0
    assert [a.outcome for a in publication.attempt_rows.order_by("number")] == ["retry", "retry", "published"]
    assert all(a.next_retry_at is not None for a in sends(publication)[:2])


def test_a_429_with_retry_after_is_not_retried_earlier_than_asked(start_worker, service, author):
    add_fault(kind="status", status=429, retry_after=2, count=1, method="POST")
    start_worker()
    publication = publish_and_wait(approved_publication(service=service, author=author))

    first, second = sends(publication)
    assert first.status_code == 429 and first.outcome == "retry"
    assert first.next_retry_at >= first.finished_at + timedelta(seconds=2)
    assert second.started_at >= first.finished_at + timedelta(seconds=2)
    posts = sandbox_requests("POST")
    assert len(posts) == 2 and (posts[1].created_at - posts[0].created_at) >= timedelta(seconds=2)


def test_a_422_fails_at_once_with_isdowns_detail(start_worker, service, author):
    add_fault(kind="status", status=422, count=1, method="POST")
    start_worker()
    publication = publish_and_wait(approved_publication(service=service, author=author), S.FAILED)

    assert "Unprocessable Entity (sandbox fault)" in publication.last_error
    assert publication.draft.state == DraftState.FAILED
    assert sweep_once() == []  # a failed publication is not due: nothing will send it again
    assert len(sandbox_requests()) == 1 and len(publication.attempt_rows.all()) == 1
    assert sandbox_incidents() == []


def test_process_then_hang_on_create_is_reconciled_by_listing_and_adopted(start_worker, service, author):
    add_fault(kind="hang", hang_seconds=2, count=1, method="POST")
    start_worker()
    publication = publish_and_wait(approved_publication(service=service, author=author, title="DNS"))

    assert len(sandbox_requests("POST")) == 1
    assert len(sandbox_incidents()) == 1 and publication.remote_id == str(sandbox_incidents()[0].pk)
    kinds = [(a.kind, a.outcome) for a in publication.attempt_rows.order_by("number")]
    assert kinds == [("send", "unknown"), ("reconcile", "found")]
    assert publication.result["how"].startswith("found on IsDown")
    assert Incident.objects.filter(remote_id=publication.remote_id).count() == 1


def test_process_then_hang_on_update_appends_exactly_one_update(start_worker, service, author):
    start_worker()
    opened = publish_and_wait(approved_publication(service=service, author=author))
    incident = Incident.objects.get(pk=opened.incident_id)
    add_fault(kind="hang", hang_seconds=2, count=1, method="PATCH")

    update = publish_and_wait(update_publication(incident=incident, author=author))

    assert len(sandbox_requests("PATCH")) == 1
    assert [u["status"] for u in sandbox_incidents()[0].updates] == ["investigating", "identified"]
    assert [(a.kind, a.outcome) for a in update.attempt_rows.order_by("number")] == [
        ("send", "unknown"),
        ("reconcile", "found"),
    ]
    assert incident.updates.count() == 2


def test_a_worker_killed_mid_request_leads_to_exactly_one_incident_after_restart_and_sweep(
    start_worker, service, author, fast_settings
):
    # A longer client timeout gives the test a window in which the request is in flight.
    slow = {"ISDOWN_TIMEOUT": "2", "PUBLISH_LEASE_SECONDS": "9"}
    fast_settings.PUBLISH_LEASE_SECONDS = 9
    add_fault(kind="hang", hang_seconds=4, count=1, method="POST")
    first = start_worker(**slow)
    publication = approved_publication(service=service, author=author)
    enqueue.publication(publication.pk)
    wait_for(lambda: sandbox_requests("POST"), what="the create to reach the sandbox")
    first.kill()
    publication.refresh_from_db()
    assert publication.state == S.SENDING  # the worker died before it could record anything

    start_worker(**slow)
    assert sweep_once() == []  # the lease has not run out: nobody touches a row that may still be in flight
    wait_for(lambda: timezone.now() > publication.lease_expires_at, timeout=15, what="the lease to expire")
    assert sweep_once() == [publication.pk]  # reconciling now: its first look is enqueued for later
    wait_state(publication, S.PUBLISHED)

    assert len(sandbox_requests("POST")) == 1 and len(sandbox_incidents()) == 1
    assert [(a.kind, a.outcome) for a in publication.attempt_rows.order_by("number")] == [
        ("send", "lost"),
        ("reconcile", "found"),
    ]
    assert AuditEvent.objects.filter(action="publication.lease_expired", target_id=str(publication.pk)).exists()


def test_an_enqueue_that_never_reaches_the_broker_is_published_once_by_the_sweeper(
    start_worker, service, author, no_broker
):
    publication = approved_publication(service=service, author=author)
    start_worker()
    with no_broker.down():
        assert enqueue.publication(publication.pk) is False  # swallowed and logged, like on_commit after approve()
    publication.refresh_from_db()
    assert publication.state == S.QUEUED and publication.last_enqueued_at is None

    assert sweep_once() == [publication.pk]
    wait_state(publication, S.PUBLISHED)
    assert sweep_once() == []
    assert len(sandbox_requests("POST")) == 1 and len(sandbox_incidents()) == 1


def test_two_workers_racing_for_one_publication_send_one_request(start_worker, service, author):
    add_fault(kind="latency", latency_ms=500, count=1, method="POST")
    start_worker()
    start_worker()
    publication = approved_publication(service=service, author=author)
    for _ in range(6):  # duplicates, as from a sweep and a redelivery at once
        enqueue.publication(publication.pk)
    wait_state(publication, S.PUBLISHED)
    workers = list(start_worker.started)
    wait_for(
        lambda: sum(w.log_text().count("] succeeded in") for w in workers) >= 6,
        what="all six messages to be handled",
    )

    assert len(sandbox_requests("POST")) == 1 and len(sandbox_incidents()) == 1
    assert len(sends(publication)) == 1


def test_an_update_made_directly_on_the_sandbox_is_synced_and_audited_as_drift(
    start_worker, service, author, publish_queue
):
    start_worker()
    opened = publish_and_wait(approved_publication(service=service, author=author, title="Login slow"))
    incident = Incident.objects.get(pk=opened.incident_id)

    tasks.sync_incident.apply_async(args=[incident.pk], queue=publish_queue)
    wait_for(lambda: Incident.objects.get(pk=incident.pk).last_synced_at > opened.published_at, what="first sync")
    assert not AuditEvent.objects.filter(action="incident.drifted").exists()  # our own change is not drift

    sandbox_api.patch(
        incident.remote_id,
        {
            "title": "Login slow for EU users",
            "description": "Someone posted this on IsDown.",
            "resolution_stage": "monitoring",
        },
    )
    synced_before = Incident.objects.get(pk=incident.pk).last_synced_at
    tasks.sync_incident.apply_async(args=[incident.pk], queue=publish_queue)
    wait_for(lambda: Incident.objects.get(pk=incident.pk).last_synced_at > synced_before, what="second sync")

    incident.refresh_from_db()
    assert incident.title == "Login slow for EU users" and incident.stage == Stage.MONITORING
    assert incident.drifted_at is not None
    assert incident.updates.count() == 2
    event = AuditEvent.objects.get(action="incident.drifted", target_id=str(incident.pk))
    assert event.actor_label == "system:sync"
    assert event.changes["title"] == ["Login slow", "Login slow for EU users"]
    assert event.changes["stage"] == ["investigating", "monitoring"]
    assert len(event.changes["updates"][1]) == 2


def test_a_worker_refuses_to_start_when_its_soft_time_limit_is_not_below_the_lease(start_worker):
    # The lease is 5 s here (FAST): a task allowed to run 10 s could outlive it.
    worker = start_worker("--soft-time-limit=10", wait_ready=False)
    assert worker.process.wait(timeout=60) != 0
    assert "refuses to start" in worker.log_text() and "PUBLISH_LEASE_SECONDS" in worker.log_text()
    assert " ready." not in worker.log_text()


def test_a_running_worker_leaves_a_heartbeat_that_healthz_and_the_dashboard_read(
    start_worker, service, author, approver_user, settings
):
    from django.test import Client

    from incidents import heartbeat

    client = Client()
    assert client.get("/healthz").json()["worker"] == "never seen"
    worker = start_worker()
    wait_for(lambda: not heartbeat.status().worker_silent(), what="the worker's heartbeat")
    assert client.get("/healthz").json()["worker"] == "ok"

    worker.kill()
    settings.HEARTBEAT_SILENT_AFTER = 0.5
    wait_for(lambda: heartbeat.status().worker_silent(), what="the heartbeat to go silent")
    client.force_login(approver_user)
    page = client.get("/").content.decode()
    assert 'id="banner-heartbeat"' in page and "No worker is running" in page
