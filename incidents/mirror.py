"""The local copy of IsDown's incidents: the one place that writes an Incident and its IncidentUpdate rows from
what IsDown answered. publishing.py records what a send or a check returned through it; sync.py what a
periodic read returned.

Whatever IsDown sends is stored as sent: a severity or stage this app does not know, a title longer than our
own limit. ``remote_payload`` keeps the raw ``data`` object.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from . import audit, isdown
from .models import Incident, IncidentUpdate

# Descriptions in a drift diff are cut to this length; the full text is on the incident.
DIFF_TEXT_LIMIT = 200
MIRRORED_FIELDS = ("title", "severity", "stage", "description", "resolved", "resolved_at")


def update_label(stage: str, description: str, created_at: datetime) -> str:
    """One update entry as a drift diff shows it."""
    return f"{created_at.isoformat()} {stage}: {description[:DIFF_TEXT_LIMIT]}"


def snapshot(incident: Incident) -> dict[str, Any]:
    """What a drift diff compares: the public fields and the updates list."""
    data: dict[str, Any] = {name: getattr(incident, name) for name in MIRRORED_FIELDS}
    data["resolved_at"] = incident.resolved_at.isoformat() if incident.resolved_at else None
    if incident.pk is None:
        data["updates"] = []
    else:
        data["updates"] = [
            update_label(row.stage, row.description, row.remote_created_at)
            for row in IncidentUpdate.objects.filter(incident=incident).order_by("position")
        ]
    return data


def remote_snapshot(remote: isdown.RemoteIncident) -> dict[str, Any]:
    """``snapshot`` of what ``remote`` would make of the local copy."""
    return {
        "title": remote.title,
        "severity": remote.severity,
        "stage": remote.stage,
        "description": remote.description,
        "resolved": remote.resolved,
        "resolved_at": remote.resolved_at.isoformat() if remote.resolved_at else None,
        "updates": [update_label(u.stage, u.description, u.created_at) for u in remote.updates],
    }


def apply_remote(*, incident: Incident, remote: isdown.RemoteIncident, now: datetime) -> dict[str, list[Any]]:
    """Bring ``incident`` (new, or locked by the caller) in line with ``remote``; return ``{field: [old, new]}``."""
    new = incident.pk is None
    before = snapshot(incident)
    after = remote_snapshot(remote)
    incident.remote_id = remote.id
    incident.title = remote.title
    incident.severity = remote.severity
    incident.stage = remote.stage
    incident.description = remote.description
    incident.resolved = remote.resolved
    incident.resolved_at = remote.resolved_at
    incident.remote_created_at = remote.created_at
    incident.remote_updated_at = remote.updated_at
    incident.remote_url = (remote.url or "")[:500]
    incident.remote_payload = remote.raw or None
    incident.last_synced_at = now
    incident.missing_on_remote = False
    incident.last_activity_at = max(filter(None, [incident.last_activity_at, remote.updated_at, remote.created_at]))
    incident.save()
    if after["updates"] != before["updates"]:
        if not new:  # a new incident has no rows to replace
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
    return audit.field_changes(before, after)
