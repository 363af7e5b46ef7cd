"""The draft-review workflow: the only code that changes a Draft's state.

Each action is one transaction: lock the draft row, check its state, change it, write the audit event and
the emails (the notification outbox), and enqueue publishing after commit. A refused action raises a named
error and changes nothing.

    draft ──submit──▶ in_review ──approve──▶ approved ──▶ publishing ──▶ published | failed | needs_attention
      ▲                 │   ├──request changes──▶ changes_requested ──edit, submit──▶ in_review   | abandoned
      └───withdraw──────┘   └──reject──▶ rejected
    draft / changes_requested ──discard──▶ discarded
    failed (IsDown refused it for good) ──reopen──▶ draft   (publishing.edit_and_resubmit supersedes the refused one)
    in_review ──break-glass (an approver's own revision, reason + fresh TOTP)──▶ approved ──▶ …, then post-review

Submit freezes the draft into a Revision holding one exact request per target (``draft_targets``) and one
SHA-256 over them; approve binds the review to the hash the reviewer saw and writes one Publication per
request. After approval the draft follows its publications (``follow_publications``).

Fan-out (issue 12): a new incident may name several services of its team (one create each, grouped under one
IncidentGroup on approval); an update of a grouped incident goes to every open incident of the group; adding a
service (a create on it) and removing one (a resolve of its incident) are drafts of their own, reviewed like any
other. A resubmit after one service was refused sends only to the services not reached yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from . import access, audit, enqueue, isdown, mfa, notifications
from .models import (
    DRAFT_FIELDS,
    EDITABLE_DRAFT_STATES,
    INCIDENT_DRAFT_KINDS,
    PUBLISHING_DECISIONS,
    PUBLISHING_DRAFT_STATES,
    REVIEWABLE_DRAFT_STATES,
    BreakGlassPostReview,
    Draft,
    DraftKind,
    DraftState,
    Incident,
    IncidentGroup,
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


class MfaRequired(NotAllowed):
    """The user must enrol an authenticator app first (views send them to the enrolment page)."""


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
    rule), so the approver sees precisely what subscribers will get. Adding a service to an incident is a create
    on that service; removing one is an update (a resolve) of its incident."""
    if kind in (DraftKind.OPEN, DraftKind.ADD_SERVICE):
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


@dataclass(frozen=True)
class Target:
    """One request a draft fans out to: a service and, for an update, the IsDown incident it addresses."""

    service: Service
    incident: Incident | None
    request: isdown.Request

    @property
    def target_remote_id(self) -> str:
        return (self.incident.remote_id or "") if self.incident is not None else ""


def open_members(incident: Incident) -> list[Incident]:
    """The IsDown incidents an update of ``incident`` goes to: every open (published, unresolved) incident of its
    group, in a stable order; an incident outside a group (or a group with none open) is its own only member."""
    if incident.group_id is None:
        return [incident]
    members = list(
        Incident.objects.filter(group_id=incident.group_id, resolved=False, remote_id__isnull=False)
        .select_related("service")
        .order_by("service__name", "pk")
    )
    return members or [incident]


def services_in_order(ids: list[int]) -> list[Service]:
    by_id = Service.objects.select_related("team").in_bulk(ids)
    return [by_id[pk] for pk in ids if pk in by_id]


def targets_for(
    *,
    kind: str,
    services: list[Service],
    incident: Incident | None,
    fields: dict[str, Any],
    skip_service_ids: frozenset[int] = frozenset(),
) -> list[Target]:
    """Every request for these fields: a new incident fans out to each of its services; an update to each open
    incident of the group (a request that would change nothing is left out); adding a service is one create on
    it; removing one resolves that service's incident. ``skip_service_ids``: services already done."""
    if kind == DraftKind.OPEN:
        return [
            Target(service, None, build_request(kind=kind, service=service, incident=None, fields=fields))
            for service in services
            if service.pk not in skip_service_ids
        ]
    if kind == DraftKind.ADD_SERVICE:
        service = services[0]
        return [Target(service, None, build_request(kind=kind, service=service, incident=None, fields=fields))]
    assert incident is not None, "an update names its incident"
    members = [incident] if kind == DraftKind.REMOVE_SERVICE else open_members(incident)
    targets = []
    for member in members:
        if member.service_id in skip_service_ids or not member.remote_id:
            continue
        request = build_request(kind=DraftKind.UPDATE, service=member.service, incident=member, fields=fields)
        if request.json():
            targets.append(Target(member.service, member, request))
    return targets


def done_service_ids(draft: Draft) -> frozenset[int]:
    """Services this draft already reached (or is still reaching) through an earlier revision: a resubmit after one
    service was refused sends only to the others, never twice to the same one."""
    if draft.pk is None:
        return frozenset()
    return frozenset(
        draft.publications.exclude(state__in=(PublicationState.SUPERSEDED, PublicationState.ABANDONED)).values_list(
            "service_id", flat=True
        )
    )


def draft_targets(draft: Draft) -> list[Target]:
    return targets_for(
        kind=draft.kind,
        services=services_in_order(draft.service_ids),
        incident=draft.incident,
        fields=draft_fields(draft),
        skip_service_ids=done_service_ids(draft),
    )


def draft_requests(draft: Draft) -> list[tuple[Service, isdown.Request]]:
    """Every request the draft stands for, one per target service, in a stable order."""
    return [(target.service, target.request) for target in draft_targets(draft)]


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
def create(
    *,
    user,
    service: Service,
    kind: str,
    fields: dict[str, str],
    incident: Incident | None = None,
    corrects_position: int | None = None,
    also_services: list[Service] | tuple[Service, ...] = (),
) -> Draft:
    """Start a draft. The caller has validated the fields (forms.DraftForm). ``corrects_position`` marks an update
    as the correction of the incident's update at that position (it must exist). ``also_services``: the other
    services a new incident affects (same team as ``service``)."""
    if kind == DraftKind.REMOVE_SERVICE and incident is not None:
        service = incident.service  # removing a service resolves that service's incident
    access.require_role(user, service.team, access.DRAFTING_ROLES, action="write a draft")
    if kind in INCIDENT_DRAFT_KINDS and (incident is None or not incident.remote_id):
        raise InvalidTransition("This incident is not on IsDown yet; wait until it is published to post updates.")
    if corrects_position is not None and (
        kind != DraftKind.UPDATE or incident is None or not incident.updates.filter(position=corrects_position).exists()
    ):
        raise InvalidTransition("There is no such update of this incident to correct.")
    also_ids = _also_service_ids(service, also_services) if kind == DraftKind.OPEN else []
    if kind == DraftKind.ADD_SERVICE:
        assert incident is not None
        _check_addable(incident, service)
    if kind == DraftKind.REMOVE_SERVICE:
        assert incident is not None
        _check_removable(incident)
    with transaction.atomic():
        draft = Draft.objects.create(
            team=service.team,
            service=service,
            incident=incident if kind in INCIDENT_DRAFT_KINDS else None,
            kind=kind,
            author=user,
            last_editor=user,
            editors=[user.pk],
            corrects_position=corrects_position,
            also_service_ids=also_ids,
            **{name: fields.get(name, "") for name in DRAFT_FIELDS},
        )
        changes = audit.field_changes({}, draft_fields(draft))
        if corrects_position is not None:
            changes["corrects_position"] = [None, corrects_position]
        if also_ids:
            changes["services"] = [None, [s.name for s in services_in_order(draft.service_ids)]]
        what = "correction" if corrects_position is not None else draft.get_kind_display().lower()
        _audit("draft.created", draft, user, f"{user.get_username()} started {what} draft #{draft.pk}", changes)
    return draft


def _also_service_ids(service: Service, also_services: list[Service] | tuple[Service, ...]) -> list[int]:
    """The other services of a new incident, in order, without repeats; each must be of the same team."""
    ids: list[int] = []
    for other in also_services:
        if other.team_id != service.team_id:
            raise NotAllowed(
                f"{other.name} belongs to another team than {service.name}: one incident stays within one team."
            )
        if other.pk != service.pk and other.pk not in ids:
            ids.append(other.pk)
    return ids


# An add- or remove-a-service draft on its way (approved, its request not settled).
ON_ITS_WAY_DRAFT_STATES = (DraftState.APPROVED, DraftState.PUBLISHING, DraftState.FAILED, DraftState.NEEDS_ATTENTION)


def _check_addable(incident: Incident, service: Service, *, draft_id: int | None = None) -> None:
    """A service joins an incident once: not while it is part of it, nor while another approved add-a-service draft
    is creating its incident (two responders adding it at once made two IsDown incidents for it). Checked when the
    draft is started, submitted and approved (under the incident's row lock)."""
    if service.team_id != incident.service.team_id:
        raise NotAllowed(f"{service.name} belongs to another team: one incident stays within one team.")
    if incident.resolved:
        raise InvalidTransition("This incident is resolved: start a new incident instead of adding a service.")
    covered = {member.service_id for member in open_members(incident)}
    if service.pk in covered:
        raise InvalidTransition(f"{service.name} is already part of this incident.")
    same_incident = Q(incident__group_id=incident.group_id) if incident.group_id else Q(incident_id=incident.pk)
    adding = Draft.objects.filter(
        same_incident, kind=DraftKind.ADD_SERVICE, service=service, state__in=ON_ITS_WAY_DRAFT_STATES
    )
    if draft_id is not None:
        adding = adding.exclude(pk=draft_id)
    other = adding.values_list("pk", flat=True).first()
    if other is not None:
        raise InvalidTransition(f"{service.name} is being added to this incident already (draft #{other}).")


def removal_problem(incident: Incident) -> str | None:
    """Why this incident's service cannot be removed from its group, or None."""
    if incident.resolved:
        return "This service's incident is already resolved."
    if incident.group_id is None or len([m for m in open_members(incident) if m.pk != incident.pk]) == 0:
        return "This is the incident's only open service: resolve the incident instead."
    return None


def _check_removable(incident: Incident, *, draft_id: int | None = None) -> None:
    problem = removal_problem(incident)
    if problem is not None:
        raise InvalidTransition(problem)
    if draft_id is not None:
        other = (
            Draft.objects.filter(incident=incident, kind=DraftKind.REMOVE_SERVICE, state__in=ON_ITS_WAY_DRAFT_STATES)
            .exclude(pk=draft_id)
            .values_list("pk", flat=True)
            .first()
        )
        if other is not None:
            raise InvalidTransition(
                f"{incident.service.name} is being removed from this incident already (draft #{other})."
            )


def create_and_submit(
    *,
    user,
    service: Service,
    kind: str,
    fields: dict[str, str],
    incident: Incident | None = None,
    corrects_position: int | None = None,
    also_services: list[Service] | tuple[Service, ...] = (),
) -> Revision:
    """Start a draft and put it in review at once, in one transaction: if the submit is refused, no draft is
    left behind."""
    with transaction.atomic():
        draft = create(
            user=user,
            service=service,
            kind=kind,
            fields=fields,
            incident=incident,
            corrects_position=corrects_position,
            also_services=also_services,
        )
        return submit(draft_id=draft.pk, user=user)


def save(
    *,
    draft_id: int,
    user,
    expected_version: int,
    fields: dict[str, str],
    service: Service | None = None,
    also_services: list[Service] | tuple[Service, ...] | None = None,
) -> Draft:
    """Save edits if nobody else saved since ``expected_version``; otherwise raise EditConflict. ``service`` is
    the one the form was sent with (None when the form has none): another than the draft's raises ServiceChanged.
    ``also_services`` (a new incident's other services; None: unchanged) may change while the draft is edited."""
    with transaction.atomic():
        draft = _locked(draft_id)
        access.require_role(user, draft.team, access.DRAFTING_ROLES, action="edit a draft")
        if service is not None and service.pk != draft.service_id:
            raise ServiceChanged()
        _require_state(draft, EDITABLE_DRAFT_STATES, "save")
        if draft.version != expected_version:
            raise EditConflict(draft)
        before = draft_fields(draft)
        new: dict[str, Any] = {name: fields.get(name, "") for name in DRAFT_FIELDS}
        old_also = list(draft.also_service_ids)
        if also_services is not None and draft.kind == DraftKind.OPEN:
            new_also = _also_service_ids(draft.service, also_services)
            if new_also != old_also:
                new["also_service_ids"] = new_also
        # The conditional UPDATE is the optimistic lock; the row lock above makes the check race-free too.
        # Whoever saves a version is a co-author from now on, for good (four eyes over every editor).
        editors = draft.editors if user.pk in draft.editors else [*draft.editors, user.pk]
        updated = Draft.objects.filter(pk=draft.pk, version=expected_version).update(
            **new, last_editor=user, editors=editors, version=F("version") + 1
        )
        if not updated:
            raise EditConflict(_locked(draft_id))
        draft.refresh_from_db()
        changes = audit.field_changes(before, {name: new[name] for name in DRAFT_FIELDS})
        if "also_service_ids" in new:
            changes["services"] = [
                [s.name for s in services_in_order([draft.service_id, *old_also])],
                [s.name for s in services_in_order(draft.service_ids)],
            ]
        _audit("draft.saved", draft, user, f"{user.get_username()} saved draft #{draft.pk}", changes)
    return draft


def save_and_submit(
    *,
    draft_id: int,
    user,
    expected_version: int,
    fields: dict[str, str],
    service: Service | None = None,
    also_services: list[Service] | tuple[Service, ...] | None = None,
) -> Revision:
    """Save edits and put the draft in review, in one transaction: if the submit is refused, the edits are not
    saved either (the form still holds them), so the version the page shows stays the current one."""
    with transaction.atomic():
        draft = save(
            draft_id=draft_id,
            user=user,
            expected_version=expected_version,
            fields=fields,
            service=service,
            also_services=also_services,
        )
        return submit(draft_id=draft.pk, user=user, expected_version=draft.version)


def submit(*, draft_id: int, user, expected_version: int | None = None) -> Revision:
    """Freeze the draft into a new Revision holding the exact request, and put it in review."""
    with transaction.atomic():
        draft = _locked(draft_id)
        access.require_role(user, draft.team, access.DRAFTING_ROLES, action="submit a draft")
        _require_state(draft, EDITABLE_DRAFT_STATES, "submit")
        if expected_version is not None and draft.version != expected_version:
            raise EditConflict(draft)
        # A draft on an incident always has it (the draft_kind_matches_incident constraint); an open one never.
        if draft.kind in INCIDENT_DRAFT_KINDS and (draft.incident is None or not draft.incident.remote_id):
            raise InvalidTransition("This incident is not on IsDown yet.")
        # What was true when the draft was started may not be any more (another draft added the service, the
        # service's incident was resolved meanwhile).
        if draft.kind == DraftKind.ADD_SERVICE and draft.incident is not None:
            _check_addable(draft.incident, draft.service, draft_id=draft.pk)
        if draft.kind == DraftKind.REMOVE_SERVICE and draft.incident is not None:
            _check_removable(draft.incident, draft_id=draft.pk)
        targets = draft_targets(draft)
        if not targets:
            if draft.kind == DraftKind.OPEN:
                raise InvalidTransition("Nothing to send: every service of this draft is already on IsDown.")
            raise InvalidTransition("Nothing to send: change the title or severity, or write an update.")
        adopters = [pk for pk in _adopters(draft, user) if pk not in draft.editors]
        if adopters:
            # Adopting an alert's draft makes the submitter a co-author for good, as a save does: the dashboard
            # then lists it under their drafts, never under the reviews they may not take.
            draft.editors = [*draft.editors, *adopters]
            Draft.objects.filter(pk=draft.pk).update(editors=draft.editors)
        previous = latest_revision(draft)
        revision = Revision.objects.create(
            draft=draft,
            number=(previous.number + 1) if previous else 1,
            fields=draft_fields(draft),
            sha256=isdown.requests_sha256(
                [(position, target.request.sha256) for position, target in enumerate(targets)]
            ),
            author=draft.author,
            last_editor=draft.last_editor,
            editors=sorted({*draft.editors, draft.author_id, draft.last_editor_id}),
            submitted_by=user,
        )
        RevisionRequest.objects.bulk_create(
            RevisionRequest(
                revision=revision,
                position=position,
                service=target.service,
                target_remote_id=target.target_remote_id,
                method=target.request.method,
                path=target.request.path,
                body=target.request.body,
                sha256=target.request.sha256,
            )
            for position, target in enumerate(targets)
        )
        old_state = draft.state
        draft.state = DraftState.IN_REVIEW
        draft.save(update_fields=["state", "updated_at"])
        _audit(
            "draft.submitted",
            draft,
            user,
            f"{user.get_username()} submitted revision {revision.number} of draft #{draft.pk} ({revision.sha256[:12]})",
            {
                **_state_change(old_state, draft.state),
                "revision": [None, revision.number],
                "requests": [None, [f"{t.request.method} {t.request.path} ({t.service.name})" for t in targets]],
                **({"adopted_by": [None, user.get_username()]} if adopters else {}),
            },
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
        if decision == ReviewDecision.APPROVE and mfa.missing_for_approval(reviewer, draft.team):
            raise MfaRequired("Approvers must enrol an authenticator app before approving.")
        result = _record_decision(
            draft=draft,
            revision=revision,
            reviewer=reviewer,
            decision=decision,
            comment=comment,
            new_state=new_state,
            action=action,
            summary=f"{reviewer.get_username()} {past} revision {revision.number} of draft #{draft.pk}",
            publish_at=publish_at,
            now=now,
        )
        notifications.revision_reviewed(result.review)
    return result


def _record_decision(
    *,
    draft: Draft,
    revision: Revision,
    reviewer,
    decision: str,
    comment: str,
    new_state: str,
    action: str,
    summary: str,
    changes: dict[str, Any] | None = None,
    publish_at: datetime | None = None,
    now: datetime | None = None,
) -> Decision:
    """Write the review, move the draft, and for a publishing decision write one outbox row per request (sent after
    commit) and restart the incident's next-update clock; audit it. Inside the caller's transaction, draft locked."""
    publishes = decision in PUBLISHING_DECISIONS
    now = now or timezone.now()
    if publishes and draft.incident_id is not None:
        # Approvals of one incident take its row in turn, so their publications' ids (the order they are
        # sent in) follow the order the approvals commit. A grouped incident: every member's, in id order.
        assert draft.incident is not None
        group = Q(group_id=draft.incident.group_id) if draft.incident.group_id else Q(pk=draft.incident_id)
        list(Incident.objects.select_for_update(no_key=True).filter(group | Q(pk=draft.incident_id)).order_by("pk"))
        # The approval the lock waited for may have grouped the incident (a service added at the same moment): the
        # group read before the lock is stale, and this decision must join that group, not start another.
        draft.incident.refresh_from_db(fields=["group"])
        # Due now means now that the lock is held: a clock read before it (by an approval that then waited for one
        # that committed first) would put this change ahead of that one in ORDER (due_at, id). The database's clock,
        # one clock for every process.
        now = _clock()
        if draft.kind == DraftKind.ADD_SERVICE:
            # Under the lock: another approval may have added the service (or grouped the incident) since the draft
            # was loaded.
            _check_addable(Incident.objects.get(pk=draft.incident_id), draft.service, draft_id=draft.pk)
        if draft.kind == DraftKind.REMOVE_SERVICE:
            _check_removable(Incident.objects.select_related("service").get(pk=draft.incident_id), draft_id=draft.pk)
    review = Review.objects.create(
        revision=revision,
        reviewer=reviewer,
        revision_author_id=revision.author_id,
        revision_last_editor_id=revision.last_editor_id,
        revision_editors=revision.editors,
        decision=decision,
        comment=comment,
        sha256=revision.sha256 if publishes else "",
    )
    old_state = draft.state
    draft.state = new_state
    grouped = _group_on_approval(draft, revision) if publishes else None
    draft.save(update_fields=["state", "group", "updated_at"])
    publications = []
    if publishes:
        requests = list(revision.requests.order_by("position"))
        remote_ids = [request.target_remote_id for request in requests if request.target_remote_id]
        incidents = {i.remote_id: i for i in Incident.objects.filter(remote_id__in=remote_ids)}
        for request in requests:
            publications.append(
                Publication.objects.create(
                    revision=revision,
                    request=request,
                    draft=draft,
                    team=draft.team,
                    service=request.service,
                    # Each update goes to its own IsDown incident (a group fans out); a create has none yet.
                    incident=incidents.get(request.target_remote_id) if request.target_remote_id else None,
                    target_remote_id=request.target_remote_id,
                    **_schedule(publish_at, now),
                )
            )
        if incidents:
            # An approved update answers the public's wait: the next one is due a team's interval from now.
            due = timezone.now() + timedelta(minutes=draft.team.update_interval_minutes)
            Incident.objects.filter(pk__in=[i.pk for i in incidents.values()]).update(next_update_due_at=due)
    all_changes: dict[str, Any] = {
        **_state_change(old_state, new_state),
        "revision": [None, revision.number],
        **(changes or {}),
    }
    if grouped is not None:
        all_changes["group"] = [None, grouped.pk]
    if comment:
        all_changes["comment"] = [None, comment]
    if review.sha256:
        all_changes["sha256"] = [None, review.sha256]
    if publish_at is not None:
        all_changes["publish_at"] = [None, publish_at.isoformat()]
    _audit(action, draft, reviewer, summary, all_changes)
    for publication in publications:
        if publication.state == PublicationState.QUEUED:  # a scheduled one: the sweeper, when it is due
            enqueue.publication_on_commit(publication.pk)
    return Decision(review=review, publications=publications)


def break_glass(
    *,
    draft_id: int,
    revision_id: int,
    user,
    sha256: str,
    reason: str,
    totp_code: str,
    now: datetime | None = None,
) -> Decision:
    """Publish the revision in review without a second approver: only an approver of the team who wrote or edited it
    (anyone else can simply approve), with a written reason and a TOTP code checked now (mfa.verify_fresh, audited
    either way). The review is a ``break_glass`` decision binding ``sha256``, the one self-review the database
    allows; every other approver is emailed at once, and the review waits for a post-review by someone else."""
    reason = (reason or "").strip()
    draft = Draft.objects.select_related("team").get(pk=draft_id)
    access.require_role(user, draft.team, access.REVIEWING_ROLES, action="publish without review (break-glass)")
    if not reason:
        raise NotAllowed("Write why this cannot wait for a second approver: a reason is required.")
    if not mfa.has_totp(user):
        raise MfaRequired("Break-glass needs an authenticator app: enrol one first.")
    # Cheap refusals first, so a code is not spent on a draft that cannot be published (checked again, locked).
    _require_state(draft, REVIEWABLE_DRAFT_STATES, "publish without review")
    _check_break_glass(latest_revision(draft), revision_id=revision_id, sha256=sha256, user=user)
    try:
        mfa.verify_fresh(
            user=user, code=totp_code, team=draft.team, purpose=f"break the glass on draft #{draft_id}", now=now
        )
    except mfa.MfaError as exc:
        raise NotAllowed(str(exc)) from exc
    with transaction.atomic():
        draft = _locked(draft_id)
        _require_state(draft, REVIEWABLE_DRAFT_STATES, "publish without review")
        revision = latest_revision(draft)
        _check_break_glass(revision, revision_id=revision_id, sha256=sha256, user=user)
        assert revision is not None
        result = _record_decision(
            draft=draft,
            revision=revision,
            reviewer=user,
            decision=ReviewDecision.BREAK_GLASS,
            comment=reason,
            new_state=DraftState.APPROVED,
            action="review.break_glass",
            summary=f"{user.get_username()} published revision {revision.number} of draft #{draft.pk} without review "
            "(break-glass)",
            changes={"break_glass": [None, True]},
        )
        notifications.break_glass_published(result.review)
    return result


def _check_break_glass(revision: Revision | None, *, revision_id: int, sha256: str, user) -> None:
    """The revision in review is the one the approver saw (its id and hash), and it is theirs."""
    if revision is None or revision.pk != revision_id:
        raise StaleRevision("This revision is no longer the one in review; reload to see the current one.")
    if sha256 != revision.sha256:
        raise StaleRevision("The request you reviewed is not the one in review (its SHA-256 differs); reload.")
    if user.pk not in revision.editors and user.pk not in (revision.author_id, revision.last_editor_id):
        raise NotAllowed("You did not write or edit this draft: approve it instead. Break-glass is only for your own.")


def post_review(*, review_id: int, user, comment: str = "") -> BreakGlassPostReview:
    """Review a break-glass publication after the fact: an approver of the team other than the one who broke the
    glass (the database refuses that one too). Takes it off the dashboard's red queue."""
    comment = (comment or "").strip()
    with transaction.atomic():
        review = (
            Review.objects.select_for_update(of=("self",))
            .select_related("revision__draft__team", "reviewer")
            .get(pk=review_id)
        )
        draft = review.revision.draft
        access.require_role(user, draft.team, access.REVIEWING_ROLES, action="review a break-glass publication")
        if review.decision != ReviewDecision.BREAK_GLASS:
            raise InvalidTransition("Only a break-glass publication is reviewed after the fact.")
        if review.reviewer_id == user.pk:
            raise NotAllowed("You broke the glass on this one: another approver must review it.")
        if BreakGlassPostReview.objects.filter(review=review).exists():
            raise InvalidTransition("This break-glass publication has already been reviewed.")
        post = BreakGlassPostReview.objects.create(
            review=review, break_glass_by_id=review.reviewer_id, reviewer=user, comment=comment
        )
        changes: dict[str, Any] = {"break_glass_by": [None, review.reviewer.get_username()]}
        if comment:
            changes["comment"] = [None, comment]
        _audit(
            "review.post_reviewed",
            draft,
            user,
            f"{user.get_username()} reviewed the break-glass publication of revision {review.revision.number} of "
            f"draft #{draft.pk} after the fact",
            changes,
        )
    return post


def _group_on_approval(draft: Draft, revision: Revision) -> IncidentGroup | None:
    """The group the approved revision's incidents belong to, created when it starts one: a new incident on several
    services, or a service added to an incident not grouped yet (which joins the group it starts). Returns the
    group when it was created here."""
    if draft.group_id is not None:
        return None
    if draft.kind == DraftKind.OPEN and len(draft.service_ids) > 1:
        draft.group = IncidentGroup.objects.create(team=draft.team, title=revision.fields.get("title", ""))
        return draft.group
    if draft.kind in INCIDENT_DRAFT_KINDS and draft.incident is not None:
        if draft.incident.group_id is not None:
            draft.group_id = draft.incident.group_id
            return None
        if draft.kind == DraftKind.ADD_SERVICE:
            draft.group = IncidentGroup.objects.create(team=draft.team, title=draft.incident.title)
            Incident.objects.filter(pk=draft.incident.pk).update(group=draft.group)
            return draft.group
    return None


def _clock() -> datetime:
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        moment: datetime = cursor.fetchone()[0]
    return moment


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
    current = (
        Draft.objects.select_for_update(no_key=True)
        .filter(pk=draft_id, state__in=PUBLISHING_DRAFT_STATES)
        .values_list("state", flat=True)
        .first()
    )
    if current is None:
        return None
    # A superseded publication belongs to an earlier revision: the draft follows the current one's. (Read after the
    # draft's lock, in a statement of its own, so it sees what the moves that held the lock before committed.)
    states = Publication.objects.filter(draft_id=draft_id).exclude(state=PublicationState.SUPERSEDED)
    state = publishing_state(set(states.order_by().values_list("state", flat=True)))
    if state == current:
        return None
    Draft.objects.filter(pk=draft_id).update(state=state, updated_at=timezone.now())
    return state
