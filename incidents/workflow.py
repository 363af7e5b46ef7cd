"""The draft-review workflow: the only code that changes a Draft's state.

Each action is one transaction: lock the draft row, check its state, change it, write the audit event,
schedule side effects (email, publishing) with ``on_commit``. A refused action raises a named error and
changes nothing.

    draft ──submit──▶ in_review ──approve──▶ approved ──▶ publishing ──▶ published | failed
      ▲                 │   ├──request changes──▶ changes_requested ──edit, submit──▶ in_review
      └───withdraw──────┘   └──reject──▶ rejected
    draft / changes_requested ──discard──▶ discarded
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from . import access, audit, notifications
from .models import (
    EDITABLE_DRAFT_STATES,
    Draft,
    DraftKind,
    DraftState,
    Incident,
    Publication,
    Review,
    ReviewDecision,
    Revision,
    Service,
)

DRAFT_FIELDS = ("title", "severity", "description", "stage")
INCIDENTS_PATH = "/api/v2/incidents"


class WorkflowError(Exception):
    """Base of every refusal. The message is written for the person who clicked."""


class InvalidTransition(WorkflowError):
    pass


class NotAllowed(WorkflowError):
    pass


class StaleRevision(WorkflowError):
    pass


class EditConflict(WorkflowError):
    """Someone else saved the draft after it was loaded. Carries their version so it can be shown."""

    def __init__(self, current: Draft):
        self.current = current
        editor = current.last_editor.get_username()
        super().__init__(f"{editor} saved this draft after you opened it (now version {current.version}).")


# --- The request that will be sent ----------------------------------------------------------------------
def build_request(
    *, kind: str, service: Service, incident: Incident | None, fields: dict[str, Any]
) -> tuple[str, str, dict[str, Any]]:
    """The exact IsDown call a draft stands for: (method, path, JSON body).

    An update sends title/severity only when they change, and description with its stage together
    (IsDown's rule), so the approver sees precisely what subscribers will get.
    """
    if kind == DraftKind.OPEN:
        body = {
            "service_id": service.isdown_service_id,
            "title": fields["title"],
            "status": fields["severity"],
            "description": fields.get("description", ""),
            "resolution_stage": fields["stage"],
        }
        return "POST", INCIDENTS_PATH, body
    assert incident is not None and incident.remote_id, "an update needs a published incident"
    body = {}
    if fields.get("title") and fields["title"] != incident.title:
        body["title"] = fields["title"]
    if fields.get("severity") and fields["severity"] != incident.severity:
        body["status"] = fields["severity"]
    if fields.get("description") or fields.get("stage"):
        body["description"] = fields.get("description", "")
        body["resolution_stage"] = fields.get("stage", "")
    return "PATCH", f"{INCIDENTS_PATH}/{incident.remote_id}", body


def request_sha256(method: str, path: str, body: dict[str, Any]) -> str:
    canonical = json.dumps(
        {"method": method, "path": path, "body": body}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def draft_request(draft: Draft) -> tuple[str, str, dict[str, Any]]:
    return build_request(kind=draft.kind, service=draft.service, incident=draft.incident, fields=draft_fields(draft))


def draft_fields(draft: Draft) -> dict[str, str]:
    return {name: getattr(draft, name) for name in DRAFT_FIELDS}


# --- Helpers ---------------------------------------------------------------------------------------------
def _locked(draft_id: int) -> Draft:
    return (
        Draft.objects.select_for_update(of=("self",))
        .select_related("team", "service", "incident", "author", "last_editor")
        .get(pk=draft_id)
    )


def _require_state(draft: Draft, allowed: tuple[str, ...], action: str) -> None:
    if draft.state not in allowed:
        state = DraftState(draft.state).label.lower()
        raise InvalidTransition(f"Cannot {action}: the draft is {state} now.")


def _audit(action: str, draft: Draft, user, summary: str, changes: dict | None = None) -> None:
    audit.record(action, actor=user, team=draft.team, target=draft, summary=summary, changes=changes)


def _state_change(old: str, new: str) -> dict[str, list[str]]:
    return {"state": [old, new]}


def latest_revision(draft: Draft) -> Revision | None:
    return draft.revisions.order_by("-number").first()


# --- Actions ---------------------------------------------------------------------------------------------
def create(*, user, service: Service, kind: str, fields: dict[str, str], incident: Incident | None = None) -> Draft:
    """Start a draft. The caller has validated the fields (forms.DraftForm)."""
    access.require_role(user, service.team, access.DRAFTING_ROLES, action="write a draft")
    if kind == DraftKind.UPDATE and (incident is None or not incident.remote_id):
        raise InvalidTransition("This incident is not on IsDown yet; wait until it is published to post updates.")
    with transaction.atomic():
        draft = Draft.objects.create(
            team=service.team,
            service=service,
            incident=incident if kind == DraftKind.UPDATE else None,
            kind=kind,
            author=user,
            last_editor=user,
            **{name: fields.get(name, "") for name in DRAFT_FIELDS},
        )
        _audit(
            "draft.created",
            draft,
            user,
            f"{user.get_username()} started {draft.get_kind_display().lower()} draft #{draft.pk}",
            audit.field_changes({}, draft_fields(draft)),
        )
    return draft


def save(*, draft_id: int, user, expected_version: int, fields: dict[str, str]) -> Draft:
    """Save edits if nobody else saved since ``expected_version``; otherwise raise EditConflict."""
    with transaction.atomic():
        draft = _locked(draft_id)
        access.require_role(user, draft.team, access.DRAFTING_ROLES, action="edit a draft")
        _require_state(draft, EDITABLE_DRAFT_STATES, "save")
        if draft.version != expected_version:
            raise EditConflict(draft)
        before = draft_fields(draft)
        new = {name: fields.get(name, "") for name in DRAFT_FIELDS}
        # The conditional UPDATE is the optimistic lock; the row lock above makes the check race-free too.
        updated = Draft.objects.filter(pk=draft.pk, version=expected_version).update(
            **new, last_editor=user, version=F("version") + 1
        )
        if not updated:
            raise EditConflict(_locked(draft_id))
        draft.refresh_from_db()
        changes = audit.field_changes(before, new)
        _audit("draft.saved", draft, user, f"{user.get_username()} saved draft #{draft.pk}", changes)
    return draft


def submit(*, draft_id: int, user, expected_version: int | None = None) -> Revision:
    """Freeze the draft into a new Revision holding the exact request, and put it in review."""
    with transaction.atomic():
        draft = _locked(draft_id)
        access.require_role(user, draft.team, access.DRAFTING_ROLES, action="submit a draft")
        _require_state(draft, EDITABLE_DRAFT_STATES, "submit")
        if expected_version is not None and draft.version != expected_version:
            raise EditConflict(draft)
        if draft.kind == DraftKind.UPDATE and not draft.incident.remote_id:
            raise InvalidTransition("This incident is not on IsDown yet.")
        method, path, body = draft_request(draft)
        if draft.kind == DraftKind.UPDATE and not body:
            raise InvalidTransition("Nothing to send: change the title or severity, or write an update.")
        previous = latest_revision(draft)
        revision = Revision.objects.create(
            draft=draft,
            number=(previous.number + 1) if previous else 1,
            fields=draft_fields(draft),
            method=method,
            path=path,
            body=body,
            sha256=request_sha256(method, path, body),
            author=draft.author,
            last_editor=draft.last_editor,
            submitted_by=user,
        )
        old_state = draft.state
        draft.state = DraftState.IN_REVIEW
        draft.save(update_fields=["state", "updated_at"])
        _audit(
            "draft.submitted",
            draft,
            user,
            f"{user.get_username()} submitted revision {revision.number} of draft #{draft.pk} ({revision.sha256[:12]})",
            {**_state_change(old_state, draft.state), "revision": [None, revision.number]},
        )
        transaction.on_commit(lambda: notifications.revision_submitted(revision.pk))
    return revision


def withdraw(*, draft_id: int, user) -> Draft:
    """Take a draft out of review so it can be edited; the pending revision is never reviewed."""
    with transaction.atomic():
        draft = _locked(draft_id)
        access.require_role(user, draft.team, access.DRAFTING_ROLES, action="withdraw a draft")
        _require_state(draft, (DraftState.IN_REVIEW,), "withdraw")
        draft.state = DraftState.DRAFT
        draft.save(update_fields=["state", "updated_at"])
        _audit(
            "draft.withdrawn",
            draft,
            user,
            f"{user.get_username()} withdrew draft #{draft.pk} from review",
            _state_change(DraftState.IN_REVIEW, DraftState.DRAFT),
        )
    return draft


def discard(*, draft_id: int, user) -> Draft:
    with transaction.atomic():
        draft = _locked(draft_id)
        access.require_role(user, draft.team, access.DRAFTING_ROLES, action="discard a draft")
        _require_state(draft, EDITABLE_DRAFT_STATES, "discard")
        old_state = draft.state
        draft.state = DraftState.DISCARDED
        draft.save(update_fields=["state", "updated_at"])
        _audit(
            "draft.discarded",
            draft,
            user,
            f"{user.get_username()} discarded draft #{draft.pk}",
            _state_change(old_state, draft.state),
        )
    return draft


@dataclass(frozen=True)
class Decision:
    review: Review
    publication: Publication | None


def _review(*, draft_id: int, revision_id: int, reviewer, decision: str, comment: str) -> Decision:
    verbs = {
        ReviewDecision.APPROVE: ("approve", DraftState.APPROVED, "review.approved", "approved"),
        ReviewDecision.REQUEST_CHANGES: (
            "request changes",
            DraftState.CHANGES_REQUESTED,
            "review.changes_requested",
            "asked for changes on",
        ),
        ReviewDecision.REJECT: ("reject", DraftState.REJECTED, "review.rejected", "rejected"),
    }
    verb, new_state, action, past = verbs[ReviewDecision(decision)]
    comment = (comment or "").strip()
    with transaction.atomic():
        draft = _locked(draft_id)
        access.require_role(reviewer, draft.team, access.REVIEWING_ROLES, action=verb)
        _require_state(draft, (DraftState.IN_REVIEW,), verb)
        revision = latest_revision(draft)
        if revision is None or revision.pk != revision_id:
            raise StaleRevision("This revision is no longer the one in review; reload to see the current one.")
        if reviewer.pk in (revision.author_id, revision.last_editor_id):
            raise NotAllowed(f"You cannot {verb} a revision you wrote or last edited: someone else must review it.")
        if decision != ReviewDecision.APPROVE and not comment:
            raise NotAllowed("Say what needs to change: a comment is required.")
        review = Review.objects.create(
            revision=revision,
            reviewer=reviewer,
            revision_author_id=revision.author_id,
            revision_last_editor_id=revision.last_editor_id,
            decision=decision,
            comment=comment,
        )
        old_state = draft.state
        draft.state = new_state
        draft.save(update_fields=["state", "updated_at"])
        publication = None
        if decision == ReviewDecision.APPROVE:
            publication = Publication.objects.create(
                revision=revision, draft=draft, team=draft.team, incident=draft.incident
            )
        changes: dict[str, Any] = {**_state_change(old_state, new_state), "revision": [None, revision.number]}
        if comment:
            changes["comment"] = [None, comment]
        _audit(
            action,
            draft,
            reviewer,
            f"{reviewer.get_username()} {past} revision {revision.number} of draft #{draft.pk}",
            changes,
        )
        transaction.on_commit(lambda: notifications.revision_reviewed(review.pk))
        if publication is not None:
            publication_id = publication.pk

            def enqueue() -> None:
                from .tasks import enqueue_publication

                enqueue_publication(publication_id)

            transaction.on_commit(enqueue)
    return Decision(review=review, publication=publication)


def approve(*, draft_id: int, revision_id: int, reviewer, comment: str = "") -> Decision:
    """Approve exactly this revision; the outbox row is written in the same transaction."""
    return _review(
        draft_id=draft_id, revision_id=revision_id, reviewer=reviewer, decision=ReviewDecision.APPROVE, comment=comment
    )


def request_changes(*, draft_id: int, revision_id: int, reviewer, comment: str) -> Decision:
    return _review(
        draft_id=draft_id,
        revision_id=revision_id,
        reviewer=reviewer,
        decision=ReviewDecision.REQUEST_CHANGES,
        comment=comment,
    )


def reject(*, draft_id: int, revision_id: int, reviewer, comment: str) -> Decision:
    return _review(
        draft_id=draft_id, revision_id=revision_id, reviewer=reviewer, decision=ReviewDecision.REJECT, comment=comment
    )


# --- Following the outbox --------------------------------------------------------------------------------
# Once approved, a draft mirrors its publication. publishing.py reports each move here, inside its own
# transaction (its audit event records the move); these are the only moves it may make.
PUBLICATION_MOVES = {
    DraftState.PUBLISHING: (DraftState.APPROVED, DraftState.FAILED),
    DraftState.PUBLISHED: (DraftState.APPROVED, DraftState.PUBLISHING, DraftState.FAILED),
    DraftState.FAILED: (DraftState.APPROVED, DraftState.PUBLISHING),
}


def follow_publication(*, draft_id: int, state: str) -> bool:
    """Move an approved draft to ``publishing``, ``published`` or ``failed``; False when it was not in a
    state that allows it (already there, or the publication's news is stale)."""
    allowed = PUBLICATION_MOVES[DraftState(state)]
    moved = Draft.objects.filter(pk=draft_id, state__in=allowed).update(state=state, updated_at=timezone.now())
    return bool(moved)
