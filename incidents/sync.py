"""Pull remote incidents back from IsDown and record drift.

Invariants (each has a test in tests/publishing/test_sync.py):
- Sync fetches over HTTP outside any transaction (a bounded pool of threads does only HTTP), then applies each
  answer in its own transaction with the incident row locked, through ``mirror.apply_remote``.
- **Ours is never drift.** What IsDown shows of this app's own publications is attributed to them: an
  undecided publication whose effect is there is adopted (``publishing.attribute``), and what an in-flight or
  undecided publication may have put there is not reported. Whatever else differs was not made by this app and
  is recorded as an ``incident.drifted`` audit event with the diff.
- An incident whose publication is being sent right now is skipped this round, and an answer older than what
  we hold (or than a publication recorded while we fetched) is ignored.
- **Tolerant.** Values IsDown sends that this app does not know (a new severity or stage, a long title) are
  stored and shown as sent. A failure on one incident (an answer that cannot be read, a database error) is
  recorded for that incident and the round goes on.
- A 404 marks the incident ``missing_on_remote``; finding it again clears the flag.
- A 429 stops the round and pauses sync until IsDown's ``Retry-After`` has passed (``SystemMark``
  ``sync.paused_until``); the remaining incidents wait, least recently synced first.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import F
from django.utils import timezone

from . import audit, isdown, matching, mirror, publishing
from .models import Incident, Publication, PublicationState, SystemMark

logger = logging.getLogger(__name__)

PAUSE_MARK = "sync.paused_until"
# Without a Retry-After, a 429 pauses sync for this long.
DEFAULT_PAUSE_SECONDS = 60.0


@dataclass
class SyncReport:
    synced: list[int] = field(default_factory=list)
    drifted: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    adopted: list[int] = field(default_factory=list)  # publications attributed to what IsDown shows
    rate_limited: bool = False
    paused_until: datetime | None = None


@dataclass(frozen=True)
class _Fetch:
    remote: isdown.RemoteIncident | None = None
    error: BaseException | None = None
    skipped: bool = False


def make_client() -> isdown.IsDownClient:
    return isdown.IsDownClient(settings.ISDOWN_API_URL, settings.ISDOWN_EFFECTIVE_API_KEY, settings.ISDOWN_TIMEOUT)


def paused_until(now: datetime | None = None) -> datetime | None:
    """Until when sync waits for IsDown's Retry-After (None when it does not)."""
    mark = SystemMark.objects.filter(name=PAUSE_MARK).first()
    if mark is None or mark.at <= (now or timezone.now()):
        return None
    return mark.at


def _pause(error: isdown.RateLimited, now: datetime) -> datetime:
    seconds = error.retry_after if error.retry_after is not None else DEFAULT_PAUSE_SECONDS
    until = now + timedelta(seconds=min(seconds, settings.CELERY_VISIBILITY_TIMEOUT))
    SystemMark.objects.update_or_create(
        name=PAUSE_MARK, defaults={"at": until, "detail": f"IsDown answered 429 ({error.detail[:200]})"}
    )
    return until


def sync_open_incidents(*, task_id: str = "", concurrency: int | None = None) -> SyncReport:
    """Fetch every unresolved incident that has a remote id, least recently synced first, and apply each."""
    report = SyncReport()
    now = timezone.now()
    report.paused_until = paused_until(now)
    if report.paused_until is not None:
        report.rate_limited = True
        return report
    targets = list(
        Incident.objects.filter(resolved=False, remote_id__isnull=False)
        .order_by(F("last_synced_at").asc(nulls_first=True), "pk")
        .values_list("pk", "remote_id")
    )
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
        except Exception as exc:  # one incident's failure never stops the round
            return _Fetch(error=exc)

    started = timezone.now()
    try:
        with ThreadPoolExecutor(max_workers=concurrency or settings.SYNC_CONCURRENCY) as pool:
            fetched = list(pool.map(fetch, [remote_id for _, remote_id in targets]))
    finally:
        for client in clients:
            client.close()
    for (incident_id, _), result in zip(targets, fetched, strict=True):
        _apply_isolated(incident_id=incident_id, fetch=result, fetched_after=started, report=report, task_id=task_id)
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
    except Exception as exc:
        fetch = _Fetch(error=exc)
    finally:
        if own_client:
            client.close()
    _apply_isolated(incident_id=incident_id, fetch=fetch, fetched_after=started, report=report, task_id=task_id)
    return report


def _apply_isolated(
    *, incident_id: int, fetch: _Fetch, fetched_after: datetime, report: SyncReport, task_id: str
) -> None:
    if isinstance(fetch.error, isdown.RateLimited):
        report.rate_limited = True
        report.paused_until = _pause(fetch.error, timezone.now())
    try:
        _apply_fetch(incident_id=incident_id, fetch=fetch, fetched_after=fetched_after, report=report, task_id=task_id)
    except DatabaseError:
        logger.exception("sync of incident %s could not be recorded", incident_id)
        report.failed.append(incident_id)


def _context(task_id: str) -> dict[str, Any]:
    return {"task_id": task_id} if task_id else {}


def _apply_fetch(*, incident_id: int, fetch: _Fetch, fetched_after: datetime, report: SyncReport, task_id: str) -> None:
    if fetch.skipped:
        report.skipped.append(incident_id)
        return
    now = timezone.now()
    with transaction.atomic():
        incident = (
            Incident.objects.select_for_update(of=("self",), no_key=True)
            .select_related("service__team")
            .filter(pk=incident_id)
            .first()
        )
        if incident is None:
            return
        sending = Publication.objects.filter(incident=incident, state=PublicationState.SENDING).exists()
        # A publication that finished after our fetch started holds a newer copy than the one we fetched.
        newer_local = Publication.objects.filter(incident=incident, published_at__gte=fetched_after).exists()
        if sending or newer_local:
            report.skipped.append(incident_id)
            return
        if fetch.error is not None:
            _record_error(incident, fetch.error, now=now, report=report, task_id=task_id)
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
        # What differs, less what our own undecided publications explain, is judged before they are adopted
        # (adopting one copies IsDown's state over ours, explained or not).
        changes = audit.field_changes(mirror.snapshot(incident), mirror.remote_snapshot(remote))
        changes = _not_ours(changes, remote=remote, pending=publishing.pending_effects(remote.id))
        adopted = publishing.attribute(incident=incident, remote=remote, task_id=task_id)
        report.adopted += [publication.pk for publication in adopted]
        incident.refresh_from_db()
        mirror.apply_remote(incident=incident, remote=remote, now=now)
        report.synced.append(incident_id)
        if changes:
            incident.drifted_at = now
            incident.save(update_fields=["drifted_at"])
            report.drifted.append(incident_id)
            audit.record(
                "incident.drifted",
                summary=f"{incident}: changed on IsDown outside this app ({', '.join(sorted(changes))})"[:500],
                actor_label=audit.SYSTEM_SYNC,
                team=incident.service.team,
                target=incident,
                changes=changes,
                context=_context(task_id),
            )
        if was_missing:
            audit.record(
                "incident.found_on_remote",
                summary=f"{incident}: IsDown has incident #{incident.remote_id} again",
                actor_label=audit.SYSTEM_SYNC,
                team=incident.service.team,
                target=incident,
                context=_context(task_id),
            )


def _record_error(incident: Incident, error: BaseException, *, now: datetime, report: SyncReport, task_id: str) -> None:
    if isinstance(error, isdown.Rejected) and error.status_code == 404:
        if not incident.missing_on_remote:
            incident.missing_on_remote = True
            audit.record(
                "incident.missing_on_remote",
                summary=f"{incident}: IsDown answers 404 for incident #{incident.remote_id}",
                actor_label=audit.SYSTEM_SYNC,
                team=incident.service.team,
                target=incident,
                context=_context(task_id),
            )
        incident.last_synced_at = now
        incident.save(update_fields=["missing_on_remote", "last_synced_at"])
        report.missing.append(incident.pk)
        return
    logger.warning("sync of incident %s failed: %s", incident.pk, error)
    report.failed.append(incident.pk)


def _not_ours(
    changes: dict[str, list[Any]], *, remote: isdown.RemoteIncident, pending: list[matching.Effect]
) -> dict[str, list[Any]]:
    """``changes`` without what publications still in flight or undecided may have put on IsDown: their update
    entries, and the title, severity and stage those leave behind. Whatever remains was made outside the app."""
    if not pending or not changes:
        return changes
    changes = dict(changes)
    if "updates" in changes:
        before, after = changes["updates"]
        unexplained = [
            label
            for label, update in zip(after, remote.updates, strict=False)
            if label not in before and not any(effect.entry_matches(update) for effect in pending)
        ]
        if not unexplained and len(after) >= len(before):
            del changes["updates"]
    latest = remote.updates[-1] if remote.updates else None
    if latest is not None and any(effect.entry_matches(latest) for effect in pending):
        for name in ("stage", "description", "resolved", "resolved_at"):
            changes.pop(name, None)
    for name, attribute in (("title", "title"), ("severity", "severity")):
        if name in changes and any(getattr(effect, attribute) == changes[name][1] for effect in pending):
            del changes[name]
    return changes
