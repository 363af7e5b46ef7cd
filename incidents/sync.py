"""Pull remote incidents back from IsDown and record drift.

Invariants:
- ``apply_remote`` is the one place that copies a RemoteIncident into an Incident and its IncidentUpdate rows
  (oldest first, positions 0..n-1); publishing.py uses it for what a send returned.
- Sync fetches over HTTP outside any transaction (a bounded pool of threads does only HTTP), then applies each
  answer in its own transaction with the incident row locked.
- A difference found by sync was not made by this app (publishing stores what IsDown answered at once), so it
  is recorded as an ``incident.drifted`` audit event with the diff. An incident with a publication in flight
  (``sending``/``reconciling``) is skipped this round, and an answer older than what we hold is ignored, so
  our own in-flight change is never mistaken for drift.
- A 404 marks the incident ``missing_on_remote``; finding it again clears the flag.
- A RateLimited answer stops the round: the remaining incidents wait for the next beat (oldest-synced first).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from . import audit, isdown
from .models import Incident, IncidentUpdate, Publication, PublicationState

logger = logging.getLogger(__name__)

IN_FLIGHT = (PublicationState.SENDING, PublicationState.RECONCILING)
# Descriptions in a drift diff are cut to this length; the full text is on the incident.
DIFF_TEXT_LIMIT = 200
SYNCED_FIELDS = ("title", "severity", "stage", "description", "resolved", "resolved_at")


def snapshot(incident: Incident) -> dict[str, Any]:
    """What a drift diff compares: the public fields and the updates list."""
    data: dict[str, Any] = {name: getattr(incident, name) for name in SYNCED_FIELDS}
    data["resolved_at"] = incident.resolved_at.isoformat() if incident.resolved_at else None
    if incident.pk is None:
        data["updates"] = []
    else:
        data["updates"] = [
            _update_label(row.stage, row.description, row.remote_created_at)
            for row in IncidentUpdate.objects.filter(incident=incident).order_by("position")
        ]
    return data


def _update_label(stage: str, description: str, created_at: datetime) -> str:
    return f"{created_at.isoformat()} {stage}: {description[:DIFF_TEXT_LIMIT]}"


def apply_remote(*, incident: Incident, remote: isdown.RemoteIncident, now: datetime) -> dict[str, list[Any]]:
    """Bring ``incident`` (new or locked by the caller) in line with ``remote``; return ``{field: [old, new]}``."""
    before = snapshot(incident)
    incident.remote_id = remote.id
    incident.title = remote.title
    incident.severity = remote.severity or incident.severity
    incident.stage = remote.stage
    incident.description = remote.description
    incident.resolved = remote.resolved
    incident.resolved_at = remote.resolved_at
    incident.remote_created_at = remote.created_at
    incident.remote_updated_at = remote.updated_at
    incident.remote_url = remote.url or ""
    incident.last_synced_at = now
    incident.missing_on_remote = False
    incident.last_activity_at = max(filter(None, [incident.last_activity_at, remote.updated_at, remote.created_at]))
    incident.save()
    remote_updates = [_update_label(u.stage, u.description, u.created_at) for u in remote.updates]
    if remote_updates != before["updates"]:
        IncidentUpdate.objects.filter(incident=incident).delete()
        IncidentUpdate.objects.bulk_create(
            IncidentUpdate(
                incident=incident,
                position=position,
                stage=update.stage,
                description=update.description,
                remote_created_at=update.created_at,
            )
            for position, update in enumerate(remote.updates)
        )
    after = {name: getattr(incident, name) for name in SYNCED_FIELDS}
    after["resolved_at"] = incident.resolved_at.isoformat() if incident.resolved_at else None
    after["updates"] = remote_updates
    return audit.field_changes(before, after)


# --- Sync ---------------------------------------------------------------------------------------------------
@dataclass
class SyncReport:
    synced: list[int] = field(default_factory=list)
    drifted: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    rate_limited: bool = False


@dataclass(frozen=True)
class _Fetch:
    remote: isdown.RemoteIncident | None = None
    error: isdown.IsDownError | None = None
    skipped: bool = False


def make_client() -> isdown.IsDownClient:
    return isdown.IsDownClient(settings.ISDOWN_API_URL, settings.ISDOWN_EFFECTIVE_API_KEY, settings.ISDOWN_TIMEOUT)


def sync_open_incidents(*, task_id: str = "", concurrency: int | None = None) -> SyncReport:
    """Fetch every unresolved incident that has a remote id, least recently synced first, and apply each."""
    targets = list(
        Incident.objects.filter(resolved=False, remote_id__isnull=False)
        .order_by(F("last_synced_at").asc(nulls_first=True), "pk")
        .values_list("pk", "remote_id")
    )
    report = SyncReport()
    if not targets:
        return report
    stop = threading.Event()
    local = threading.local()
    clients: list[isdown.IsDownClient] = []
    lock = threading.Lock()

    def fetch(remote_id: str) -> _Fetch:
        if stop.is_set():
            return _Fetch(skipped=True)
        client = getattr(local, "client", None)
        if client is None:  # the client is not thread-safe: one per pool thread
            client = local.client = make_client()
            with lock:
                clients.append(client)
        try:
            return _Fetch(remote=client.get_incident(remote_id))
        except isdown.RateLimited as exc:
            stop.set()
            return _Fetch(error=exc)
        except isdown.IsDownError as exc:
            return _Fetch(error=exc)

    started = timezone.now()
    try:
        with ThreadPoolExecutor(max_workers=concurrency or settings.SYNC_CONCURRENCY) as pool:
            fetched = list(pool.map(fetch, [remote_id for _, remote_id in targets]))
    finally:
        for client in clients:
            client.close()
    report.rate_limited = stop.is_set()
    for (incident_id, _), result in zip(targets, fetched, strict=True):
        _apply_fetch(incident_id=incident_id, fetch=result, fetched_after=started, report=report, task_id=task_id)
    return report


def sync_incident(*, incident_id: int, task_id: str = "", client: isdown.IsDownClient | None = None) -> SyncReport:
    """Fetch and apply one incident (any incident with a remote id, resolved or not)."""
    report = SyncReport()
    remote_id = Incident.objects.filter(pk=incident_id).values_list("remote_id", flat=True).first()
    if not remote_id:
        return report
    own_client = client is None
    client = client or make_client()
    started = timezone.now()
    try:
        fetch = _Fetch(remote=client.get_incident(remote_id))
    except isdown.IsDownError as exc:
        fetch = _Fetch(error=exc)
    finally:
        if own_client:
            client.close()
    report.rate_limited = isinstance(fetch.error, isdown.RateLimited)
    _apply_fetch(incident_id=incident_id, fetch=fetch, fetched_after=started, report=report, task_id=task_id)
    return report


def _apply_fetch(*, incident_id: int, fetch: _Fetch, fetched_after: datetime, report: SyncReport, task_id: str) -> None:
    if fetch.skipped:
        report.skipped.append(incident_id)
        return
    context = {"task_id": task_id} if task_id else {}
    now = timezone.now()
    with transaction.atomic():
        incident = (
            Incident.objects.select_for_update(of=("self",))
            .select_related("service__team")
            .filter(pk=incident_id)
            .first()
        )
        if incident is None:
            return
        in_flight = Publication.objects.filter(incident=incident, state__in=IN_FLIGHT).exists()
        # A publication that finished after our fetch started holds a newer copy than the one we fetched.
        newer_local = Publication.objects.filter(incident=incident, published_at__gte=fetched_after).exists()
        if in_flight or newer_local:
            report.skipped.append(incident_id)
            return
        if fetch.error is not None:
            if isinstance(fetch.error, isdown.Rejected) and fetch.error.status_code == 404:
                if not incident.missing_on_remote:
                    incident.missing_on_remote = True
                    audit.record(
                        "incident.missing_on_remote",
                        summary=f"{incident}: IsDown answers 404 for incident #{incident.remote_id}",
                        actor_label=audit.SYSTEM_SYNC,
                        team=incident.service.team,
                        target=incident,
                        context=context,
                    )
                incident.last_synced_at = now
                incident.save(update_fields=["missing_on_remote", "last_synced_at"])
                report.missing.append(incident_id)
            else:
                logger.warning("sync of incident %s failed: %s", incident_id, fetch.error)
                report.failed.append(incident_id)
            return
        remote = fetch.remote
        assert remote is not None
        stale = (
            incident.remote_updated_at is not None
            and remote.updated_at is not None
            and remote.updated_at < incident.remote_updated_at
        )
        if stale:
            report.skipped.append(incident_id)
            return
        was_missing = incident.missing_on_remote
        changes = apply_remote(incident=incident, remote=remote, now=now)
        report.synced.append(incident_id)
        if changes:
            incident.drifted_at = now
            incident.save(update_fields=["drifted_at"])
            report.drifted.append(incident_id)
            audit.record(
                "incident.drifted",
                summary=f"{incident}: changed on IsDown outside this app ({', '.join(sorted(changes))})",
                actor_label=audit.SYSTEM_SYNC,
                team=incident.service.team,
                target=incident,
                changes=changes,
                context=context,
            )
        if was_missing:
            audit.record(
                "incident.found_on_remote",
                summary=f"{incident}: IsDown has incident #{incident.remote_id} again",
                actor_label=audit.SYSTEM_SYNC,
                team=incident.service.team,
                target=incident,
                context=context,
            )
