"""Sync against the sandbox over real HTTP, in-process with a bounded thread pool: one test per invariant stated
in sync.py's docstring."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from incidents import sync
from incidents.models import AuditEvent, Incident, Publication, PublicationState, SystemMark
from sandbox import api as sandbox_api
from sandbox.faults import add_fault
from sandbox.models import SandboxIncident, SandboxRequest

from .factories import update_publication

S = PublicationState


@pytest.fixture
def sandbox(fast_settings, service):
    return fast_settings


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


def test_values_this_app_does_not_know_are_stored_and_shown_as_sent(sandbox, service):
    incident = _remote_incident(service, "Odd")
    SandboxIncident.objects.filter(pk=int(incident.remote_id)).update(status="critical", title="Ü" * 300)

    report = sync.sync_open_incidents()

    incident.refresh_from_db()
    assert report.synced == [incident.pk] and report.failed == []
    assert incident.severity == "critical" and incident.title == "Ü" * 300
    assert incident.remote_payload["attributes"]["status"] == "critical"


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


def test_what_an_undecided_publication_may_have_put_on_isdown_is_not_drift(sandbox, service, responder):
    incident = _remote_incident(service, "Ours")
    sync.sync_incident(incident_id=incident.pk)  # the first sync fills the local copy in (drift: baseline)
    baseline = _drift_events(incident).count()
    publication = update_publication(incident=incident, author=responder, title="Ours, renamed", description="Ours.")
    # Its send got a 429 after an earlier attempt of unknown outcome landed: retry_wait, first send known.
    sandbox_api.patch(
        incident.remote_id, {"title": "Ours, renamed", "description": "Ours.", "resolution_stage": "identified"}
    )
    Publication.objects.filter(pk=publication.pk).update(
        state=S.RETRY_WAIT, first_sent_at=timezone.now(), attempts=1, next_attempt_at=timezone.now()
    )

    report = sync.sync_incident(incident_id=incident.pk)

    publication.refresh_from_db()
    assert report.adopted == [publication.pk] and publication.state == S.PUBLISHED
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
