"""Approved drafts with their revision and outbox row, built the way workflow.submit/approve build them (the
request from workflow.build_request, hashed by workflow.request_sha256), without the review ceremony."""

from __future__ import annotations

from typing import Any

from incidents.models import Draft, DraftKind, DraftState, Incident, Publication, Revision, Service, Severity, Stage
from incidents.workflow import build_request, request_sha256


def approved_publication(
    *,
    service: Service,
    author: Any,
    kind: str = DraftKind.OPEN,
    incident: Incident | None = None,
    title: str = "Elevated API errors",
    severity: str = Severity.MINOR,
    description: str = "We are looking into it.",
    stage: str = Stage.INVESTIGATING,
) -> Publication:
    """A ``queued`` Publication of an approved draft (no message is enqueued)."""
    fields = {"title": title, "severity": severity, "description": description, "stage": stage}
    draft = Draft.objects.create(
        team=service.team,
        service=service,
        incident=incident if kind == DraftKind.UPDATE else None,
        kind=kind,
        state=DraftState.APPROVED,
        author=author,
        last_editor=author,
        **fields,
    )
    method, path, body = build_request(kind=kind, service=service, incident=incident, fields=fields)
    revision = Revision.objects.create(
        draft=draft,
        number=1,
        fields=fields,
        method=method,
        path=path,
        body=body,
        sha256=request_sha256(method, path, body),
        author=author,
        last_editor=author,
        submitted_by=author,
    )
    return Publication.objects.create(revision=revision, draft=draft, team=service.team, incident=draft.incident)


def update_publication(*, incident: Incident, author: Any, **fields: Any) -> Publication:
    """An approved update of ``incident``: by default an ``identified`` update with a new description."""
    values = {
        "title": incident.title,
        "severity": incident.severity,
        "description": "Cause identified: a bad deploy.",
        "stage": Stage.IDENTIFIED,
    }
    values.update(fields)
    return approved_publication(
        service=incident.service, author=author, kind=DraftKind.UPDATE, incident=incident, **values
    )
