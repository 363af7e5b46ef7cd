"""Sync of all open incidents in-process, against the sandbox over real HTTP with a bounded thread pool."""

from __future__ import annotations

from incidents import sync
from incidents.models import AuditEvent, Incident
from sandbox import api as sandbox_api
from sandbox.models import SandboxRequest


def _remote_incident(service, title: str) -> Incident:
    created = sandbox_api.create(
        {"service_id": 1001, "title": title, "status": "minor", "description": "d", "resolution_stage": "investigating"}
    )
    return Incident.objects.create(service=service, remote_id=str(created.pk), title=title)


def test_sync_fetches_every_open_incident_flags_missing_and_records_drift(fast_settings, service):
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
    assert AuditEvent.objects.filter(action="incident.drifted", target_id=str(kept.pk)).count() == 1
    assert AuditEvent.objects.filter(action="incident.missing_on_remote", target_id=str(gone.pk)).count() == 1

    again = sync.sync_open_incidents(concurrency=2)  # nothing changed: no new events
    assert again.drifted == [] and again.missing == [gone.pk]
    assert AuditEvent.objects.filter(action__in=["incident.drifted", "incident.missing_on_remote"]).count() == 2
    assert Incident.objects.get(pk=kept.pk).last_synced_at > kept.last_synced_at
