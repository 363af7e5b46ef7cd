"""The draft-review workflow: the only code that changes a Draft's state.

Each action is one transaction: lock the draft row, check its state, change it, write the audit event and
the emails (the notification outbox), and enqueue publishing after commit. A refused action raises a named
error and changes nothing.

    draft ──submit──▶ in_review ──approve──▶ approved ──▶ publishing ──▶ published | failed | needs_attention
      ▲                 │   ├──request changes──▶ changes_requested ──edit, submit──▶ in_review   | abandoned
      └───withdraw──────┘   └──reject──▶ rejected
    draft / changes_requested ──discard──▶ discarded
    failed (IsDown refused it for good) ──reopen──▶ draft   (publishing.edit_and_resubmit supersedes the refused one)

Submit freezes the draft into a Revision holding one exact request per target (``draft_requests``) and one
SHA-256 over them; approve binds the review to the hash the reviewer saw and writes one Publication per
request. After approval the draft follows its publications (``follow_publications``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from . import access, audit, enqueue, isdown, notifications
from .models import (
    DRAFT_FIELDS,
    EDITABLE_DRAFT_STATES,
    PUBLISHING_DRAFT_STATES,
    REVIEWABLE_DRAFT_STATES,
    Draft,
    DraftKind,
    DraftState,
    Incident,
    Publication,
    PublicationState,
    Review,
    ReviewDecision,
    Revision,
    RevisionRequest,
    Service,
)


class WorkflowError(Exception):
    """Base of every refusal. The message is written for the person who clicked."""


class InvalidTransition(WorkflowError):
    pass


class NotAllowed(WorkflowError):
    pass


class StaleRevision(WorkflowError):
    pass


class ServiceChanged(WorkflowError):
    """A save asked to move the draft to another service: a draft keeps the service it was started for."""

    def __init__(self) -> None:
        super().__init__("The service of a draft cannot change; start a new draft for another service.")


class EditConflict(WorkflowError):
    """Someone else saved the draft after it was loaded. Carries their version so it can be shown."""

    def __init__(self, current: Draft):
        self.current = current
        editor = current.last_editor.get_username()
        super().__init__(f"{editor} saved this draft after you opened it (now version {current.version}).")


# --- The requests that will be sent --------------------------------------------------------------------
def build_request(*, kind: str, service: Service, incident: Incident | None, fields: dict[str, Any]) -> isdown.Request:
    """The exact IsDown call a draft stands for, to one service.

    An update sends title/severity only when they change, and description with its stage together (IsDown's
    rule), so the approver sees precisely what subscribers will get."""
    if kind == DraftKind.OPEN:
        return isdown.create_request(
            service_id=service.isdown_service_id,
            title=fields["title"],
            severity=fields["severity"],
            description=fields.get("description", ""),
            stage=fields["stage"],
        )
    assert incident is not None and incident.remote_id, "an update needs a published incident"
    posts = bool(fields.get("description") or fields.get("stage"))
    return isdown.update_request(
        incident.remote_id,
        title=fields["title"] if fields.get("title") and fields["title"] != incident.title else None,
        severity=fields["severity"] if fields.get("severity") and fields["severity"] != incident.severity else None,
        description=fields.get("description", "") if posts else None,
        stage=fields.get("stage", "") if posts else None,
    )


def draft_requests(draft: Draft) -> list[tuple[Service, isdown.Request]]:
    """Every request the draft stands for, one per target service, in a stable order."""
    request = build_request(kind=draft.kind, service=draft.service, incident=draft.incident, fields=draft_fields(draft))
    return [(draft.service, request)]


def draft_fields(draft: Draft) -> dict[str, str]:
    return {name: getattr(draft, name) for name in DRAFT_FIELDS}


# --- Helpers ---------------------------------------------------------------------------------------------
def _locked(draft_id: int) -> Draft:
    return (
        Draft.objects.select_for_update(of=("self",), no_key=True)
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
            editors=[user.pk],
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


def create_and_submit(
    *, user, service: Service, kind: str, fields: dict[str, str], incident: Incident | None = None
) -> Revision:
    """Start a draft and put it in review at once, in one transaction: if the submit is refused, no draft is
    left behind."""
    with transaction.atomic():
        draft = create(user=user, service=service, kind=kind, fields=fields, incident=incident)
        return submit(draft_id=draft.pk, user=user)


def save(
    *, draft_id: int, user, expected_version: int, fields: dict[str, str], service: Service | None = None
) -> Draft:
    """Save edits if nobody else saved since ``expected_version``; otherwise raise EditConflict. ``service`` is
    the one the form was sent with (None when the form has none): another than the draft's raises ServiceChanged."""
    with transaction.atomic():
        draft = _locked(draft_id)
        access.require_role(user, draft.team, access.DRAFTING_ROLES, action="edit a draft")
        if service is not None and service.pk != draft.service_id:
            raise ServiceChanged()
        _require_state(draft, EDITABLE_DRAFT_STATES, "save")
        if draft.version != expected_version:
            raise EditConflict(draft)
        before = draft_fields(draft)
        new = {name: fields.get(name, "") for name in DRAFT_FIELDS}
        # The conditional UPDATE is the optimistic lock; the row lock above makes the check race-free too.
        # Whoever saves a version is a co-author from now on, for good (four eyes over every editor).
        editors = draft.editors if user.pk in draft.editors else [*draft.editors, user.pk]
        updated = Draft.objects.filter(pk=draft.pk, version=expected_version).update(
            **new, last_editor=user, editors=editors, version=F("version") + 1
        )
        if not updated:
            raise EditConflict(_locked(draft_id))
        draft.refresh_from_db()
        changes = audit.field_changes(before, new)
        _audit("draft.saved", draft, user, f"{user.get_username()} saved draft #{draft.pk}", changes)
    return draft


def save_and_submit(
    *, draft_id: int, user, expected_version: int, fields: dict[str, str], service: Service | None = None
) -> Revision:
    """Save edits and put the draft in review, in one transaction: if the submit is refused, the edits are not
    saved either (the form still holds them), so the version the page shows stays the current one."""
    with transaction.atomic():
        draft = save(draft_id=draft_id, user=user, expected_version=expected_version, fields=fields, service=service)
        return submit(draft_id=draft.pk, user=user, expected_version=draft.version)


def submit(*, draft_id: int, user, expected_version: int | None = None) -> Revision:
    """Freeze the draft into a new Revision holding the exact request, and put it in review."""
    with transaction.atomic():
        draft = _locked(draft_id)
        access.require_role(user, draft.team, access.DRAFTING_ROLES, action="submit a draft")
        _require_state(draft, EDITABLE_DRAFT_STATES, "submit")
        if expected_version is not None and draft.version != expected_version:
            raise EditConflict(draft)
        # An update draft always has its incident (the draft_kind_matches_incident constraint); an open one never.
        target = draft.incident if draft.kind == DraftKind.UPDATE else None
        if draft.kind == DraftKind.UPDATE and (target is None or not target.remote_id):
            raise InvalidTransition("This incident is not on IsDown yet.")
        requests = draft_requests(draft)
        if draft.kind == DraftKind.UPDATE and not any(request.json() for _, request in requests):
            raise InvalidTransition("Nothing to send: change the title or severity, or write an update.")
        previous = latest_revision(draft)
        revision = Revision.objects.create(
            draft=draft,
            number=(previous.number + 1) if previous else 1,
            fields=draft_fields(draft),
            sha256=isdown.requests_sha256(
                [(position, request.sha256) for position, (_, request) in enumerate(requests)]
            ),
            author=draft.author,
            last_editor=draft.last_editor,
            editors=sorted({*draft.editors, draft.author_id, draft.last_editor_id, *_adopters(draft, user)}),
            submitted_by=user,
        )
        RevisionRequest.objects.bulk_create(
            RevisionRequest(
                revision=revision,
                position=position,
                service=service,
                target_remote_id=(target.remote_id or "") if target is not None else "",
                method=request.method,
                path=request.path,
                body=request.body,
                sha256=request.sha256,
            )
            for position, (service, request) in enumerate(requests)
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
        notifications.revision_submitted(revision)
    return revision


def _adopters(draft: Draft, user) -> list[int]:
    """A draft whose author cannot sign in (a system author: drafts from alerts) is adopted by whoever submits it:
    the submitter counts as a co-author, so nobody can submit an alert's words unedited and approve them too."""
    return [] if draft.author.is_active else [user.pk]


def create_for_system_author(
    *, author, service: Service, kind: str, fields: dict[str, str], incident: Incident | None, summary: str
) -> Draft:
    """Start a draft written by a team's system author (alerts.py: a draft from an alert). Never submitted here:
    a person of the team edits and submits it, and becomes a co-author by doing so (``_adopters``). The author
    must be a user that cannot sign in (inactive, no usable password): it holds no role, so it can never review."""
    if author.is_active or author.has_usable_password():
        raise NotAllowed("Only a system author that cannot sign in writes drafts on its own.")
    if kind == DraftKind.UPDATE and (incident is None or not incident.remote_id):
        raise InvalidTransition("This incident is not on IsDown yet; wait until it is published to post updates.")
    with transaction.atomic():
        draft = Draft.objects.create(
            team=service.team,
            service=service,
            incident=incident if kind == DraftKind.UPDATE else None,
            kind=kind,
            author=author,
            last_editor=author,
            editors=[author.pk],
            **{name: fields.get(name, "") for name in DRAFT_FIELDS},
        )
        _audit("draft.created", draft, author, summary, audit.field_changes({}, draft_fields(draft)))
    return draft


def withdraw(*, draft_id: int, user) -> Draft:
    """Take a draft out of review so it can be edited; the pending revision is never reviewed."""
    with transaction.atomic():
        draft = _locked(draft_id)
        access.require_role(user, draft.team, access.DRAFTING_ROLES, action="withdraw a draft")
        _require_state(draft, REVIEWABLE_DRAFT_STATES, "withdraw")
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
    publications: list[Publication]

    @property
    def publication(self) -> Publication | None:
        return self.publications[0] if self.publications else None


def decide(
    *,
    draft_id: int,
    revision_id: int,
    reviewer,
    decision: str,
    comment: str,
    sha256: str | None = None,
    publish_at: datetime | None = None,
) -> Decision:
    """A reviewer's decision on the revision in review: approve (binding ``sha256``, the hash the reviewer was
    shown), request changes or reject (both need a comment). Never on a revision its reviewer wrote or edited.
    An approval with ``publish_at`` (a future time) schedules its publications: they wait, ``scheduled``, until
    then, and take their place in the incident's order by that time (issue 12 §7)."""
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
        _require_state(draft, REVIEWABLE_DRAFT_STATES, verb)
        revision = latest_revision(draft)
        if revision is None or revision.pk != revision_id:
            raise StaleRevision("This revision is no longer the one in review; reload to see the current one.")
        if decision == ReviewDecision.APPROVE and sha256 != revision.sha256:
            raise StaleRevision("The request you reviewed is not the one in review (its SHA-256 differs); reload.")
        if reviewer.pk in revision.editors or reviewer.pk in (revision.author_id, revision.last_editor_id):
            raise NotAllowed(f"You cannot {verb} a draft you wrote or edited: someone else must review it.")
        if decision != ReviewDecision.APPROVE and not comment:
            raise NotAllowed("Say what needs to change: a comment is required.")
        now = timezone.now()
        if publish_at is not None and (decision != ReviewDecision.APPROVE or publish_at <= now):
            raise NotAllowed("Only an approval can be scheduled, and only for a time still to come.")
        if decision == ReviewDecision.APPROVE and draft.incident_id is not None:
            # Approvals of one incident take its row in turn, so their publications' ids (the order they are
            # sent in) follow the order the approvals commit.
            Incident.objects.select_for_update(no_key=True).filter(pk=draft.incident_id).first()
        review = Review.objects.create(
            revision=revision,
            reviewer=reviewer,
            revision_author_id=revision.author_id,
            revision_last_editor_id=revision.last_editor_id,
            revision_editors=revision.editors,
            decision=decision,
            comment=comment,
            sha256=revision.sha256 if decision == ReviewDecision.APPROVE else "",
        )
        old_state = draft.state
        draft.state = new_state
        draft.save(update_fields=["state", "updated_at"])
        publications = []
        if decision == ReviewDecision.APPROVE:
            for request in revision.requests.order_by("position"):
                publications.append(
                    Publication.objects.create(
                        revision=revision,
                        request=request,
                        draft=draft,
                        team=draft.team,
                        service=request.service,
                        incident=draft.incident,
                        target_remote_id=request.target_remote_id,
                        **_schedule(publish_at, now),
                    )
                )
        changes: dict[str, Any] = {**_state_change(old_state, new_state), "revision": [None, revision.number]}
        if comment:
            changes["comment"] = [None, comment]
        if review.sha256:
            changes["sha256"] = [None, review.sha256]
        if publish_at is not None:
            changes["publish_at"] = [None, publish_at.isoformat()]
        _audit(
            action,
            draft,
            reviewer,
            f"{reviewer.get_username()} {past} revision {revision.number} of draft #{draft.pk}",
            changes,
        )
        notifications.revision_reviewed(review)
        for publication in publications:
            if publication.state == PublicationState.QUEUED:  # a scheduled one: the sweeper, when it is due
                enqueue.publication_on_commit(publication.pk)
    return Decision(review=review, publications=publications)


def _schedule(publish_at: datetime | None, now: datetime) -> dict[str, Any]:
    """A publication's place in time: due now (queued), or scheduled for ``publish_at`` (the sweeper queues it)."""
    if publish_at is None:
        return {"due_at": now}
    return {"due_at": publish_at, "state": PublicationState.SCHEDULED, "next_attempt_at": publish_at}


def approve(
    *, draft_id: int, revision_id: int, reviewer, sha256: str, comment: str = "", publish_at: datetime | None = None
) -> Decision:
    """Approve exactly this revision, whose SHA-256 the reviewer saw; the review records that hash, and the
    outbox rows (one per target) are written in the same transaction."""
    return decide(
        draft_id=draft_id,
        revision_id=revision_id,
        reviewer=reviewer,
        decision=ReviewDecision.APPROVE,
        comment=comment,
        sha256=sha256,
        publish_at=publish_at,
    )


def request_changes(*, draft_id: int, revision_id: int, reviewer, comment: str) -> Decision:
    return decide(
        draft_id=draft_id,
        revision_id=revision_id,
        reviewer=reviewer,
        decision=ReviewDecision.REQUEST_CHANGES,
        comment=comment,
    )


def reject(*, draft_id: int, revision_id: int, reviewer, comment: str) -> Decision:
    return decide(
        draft_id=draft_id, revision_id=revision_id, reviewer=reviewer, decision=ReviewDecision.REJECT, comment=comment
    )


def reopen_after_refusal(*, draft_id: int, user) -> Draft:
    """A draft whose publication IsDown refused for good (a 4xx) goes back to editing, to be fixed and submitted
    as a new revision. Called by ``publishing.edit_and_resubmit`` inside its transaction, before it supersedes the
    refused publication (so the draft no longer follows it)."""
    with transaction.atomic():
        draft = _locked(draft_id)
        access.require_role(user, draft.team, access.DRAFTING_ROLES, action="edit and resubmit a draft")
        _require_state(draft, (DraftState.FAILED,), "edit and resubmit")
        draft.state = DraftState.DRAFT
        draft.save(update_fields=["state", "updated_at"])
        _audit(
            "draft.reopened",
            draft,
            user,
            f"{user.get_username()} reopened draft #{draft.pk} for editing after IsDown refused it",
            _state_change(DraftState.FAILED, DraftState.DRAFT),
        )
    return draft


# --- Following the outbox --------------------------------------------------------------------------------
P = PublicationState


def publishing_state(states: set[str]) -> str:
    """The state an approved draft shows for its publications' states: the one most in need of a human."""
    if P.FAILED in states:
        return DraftState.FAILED
    if states & {P.NEEDS_ATTENTION, P.DUPLICATE_DETECTED}:
        return DraftState.NEEDS_ATTENTION
    if states & {P.QUEUED, P.SENDING, P.RETRY_WAIT, P.RECONCILING}:
        return DraftState.PUBLISHING
    if P.SCHEDULED in states:  # approved, waiting for its time
        return DraftState.APPROVED
    if P.PUBLISHED in states:
        return DraftState.PUBLISHED
    return DraftState.ABANDONED


def follow_publications(*, draft_id: int) -> str | None:
    """Once approved, a draft mirrors its publications. publishing.py calls this inside each move's transaction
    (the move's audit event records it). Returns the draft's new state, or None when it did not change."""
    draft = Draft.objects.select_for_update(no_key=True).filter(pk=draft_id, state__in=PUBLISHING_DRAFT_STATES).first()
    if draft is None:
        return None
    # A superseded publication belongs to an earlier revision: the draft follows the current one's.
    states = draft.publications.exclude(state=PublicationState.SUPERSEDED).values_list("state", flat=True)
    state = publishing_state(set(states))
    if state == draft.state:
        return None
    Draft.objects.filter(pk=draft_id).update(state=state, updated_at=timezone.now())
    return state
