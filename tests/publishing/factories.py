"""Approved drafts with their revision, request, approval and outbox row, built the way workflow.submit/approve
build them (the request from workflow.build_request, hashed as isdown.Request hashes it), without the review
ceremony."""

from __future__ import annotations

from typing import Any

from incidents import isdown
from incidents.models import (
    Draft,
    DraftKind,
    DraftState,
    Incident,
    Publication,
    Review,
    ReviewDecision,
    Revision,
    RevisionRequest,
    Service,
    Severity,
    Stage,
)
from incidents.workflow import build_request
from tests.factories import UserFactory


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
    reviewer: Any = None,
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
        editors=[author.pk],
        **fields,
    )
    request = build_request(kind=kind, service=service, incident=incident, fields=fields)
    revision = Revision.objects.create(
        draft=draft,
        number=1,
        fields=fields,
        sha256=isdown.requests_sha256([(0, request.sha256)]),
        author=author,
        last_editor=author,
        editors=[author.pk],
        submitted_by=author,
    )
    stored = RevisionRequest.objects.create(
        revision=revision,
        position=0,
        service=service,
        target_remote_id=incident.remote_id if kind == DraftKind.UPDATE else "",
        method=request.method,
        path=request.path,
        body=request.body,
        sha256=request.sha256,
    )
    Review.objects.create(
        revision=revision,
        reviewer=reviewer or UserFactory(username="reviewer-of-record"),
        revision_author=author,
        revision_last_editor=author,
        revision_editors=[author.pk],
        decision=ReviewDecision.APPROVE,
        sha256=revision.sha256,
    )
    return Publication.objects.create(
        revision=revision,
        request=stored,
        draft=draft,
        team=service.team,
        service=service,
        incident=draft.incident,
        target_remote_id=stored.target_remote_id,
    )


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
