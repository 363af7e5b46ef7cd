"""Reminders (issue 12 §5): an open incident's next update is due, and a revision must not wait forever for review.

Each open incident has ``next_update_due_at``: an approved change (workflow.py) sets it to the team's
``update_interval_minutes`` from then; a responder or approver of the team may move it (``set_next_update_due``,
audited); an incident without one gets it from its last activity at the next check. ``run`` (beat, every
``REMINDER_INTERVAL`` seconds) emails the authors of the incident's drafts and the team's approvers when that time
has passed — once per due time (``UpdateReminder``, unique per incident and due time) — and escalates a revision
waiting longer than the team's ``review_escalation_minutes`` to every approver of the team, once
(``ReviewEscalation``). Both are audited. Every function takes ``now`` so time is a parameter, never a sleep.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import (
    DateTimeField,
    DurationField,
    ExpressionWrapper,
    F,
    OuterRef,
    QuerySet,
    Subquery,
    Value,
)
from django.db.models.expressions import Combinable, CombinedExpression
from django.utils import timezone

from . import access, audit, notifications
from .models import (
    REVIEWABLE_DRAFT_STATES,
    Draft,
    Incident,
    ReviewEscalation,
    Revision,
    Service,
    UpdateReminder,
)

SYSTEM_REMINDERS = "system:reminders"


class ReminderError(Exception):
    """A refused change to a reminder; the message is for the person who clicked."""


def overdue(incidents: QuerySet[Incident], *, now: datetime | None = None) -> QuerySet[Incident]:
    """The open incidents among ``incidents`` whose next update is overdue."""
    return incidents.filter(resolved=False, next_update_due_at__lte=now or timezone.now())


def is_overdue(incident: Incident, *, now: datetime | None = None) -> bool:
    due = incident.next_update_due_at
    return not incident.resolved and due is not None and due <= (now or timezone.now())


def _members(incidents: QuerySet[Incident], incident_id: int, group_id: int | None) -> QuerySet[Incident]:
    """The IsDown incidents that share one clock: every incident of the group (one outage, one update fanned out to
    each open service), or the incident alone; locked in id order, as approvals lock them."""
    rows = incidents.filter(group_id=group_id) if group_id is not None else incidents.filter(pk=incident_id)
    return rows.select_for_update(of=("self",)).select_related("service__team").order_by("pk")


def _names(incidents: list[Incident]) -> str:
    return ", ".join(dict.fromkeys(i.service.name for i in sorted(incidents, key=lambda i: (i.service.name, i.pk))))


def set_next_update_due(*, incident_id: int, user: User, minutes: int, now: datetime | None = None) -> Incident:
    """Move an open incident's next update to ``minutes`` from now (1 minute to 24 hours); audited. A grouped
    incident's update goes to every open service, so every open service's clock moves with it."""
    if not 1 <= minutes <= 24 * 60:
        raise ReminderError("Choose between 1 minute and 24 hours (1440 minutes).")
    now = now or timezone.now()
    with transaction.atomic():
        group_id = Incident.objects.filter(pk=incident_id).values_list("group_id", flat=True).get()
        members = list(_members(Incident.objects.all(), incident_id, group_id))
        incident = next(member for member in members if member.pk == incident_id)
        team = incident.service.team
        access.require_role(user, team, access.DRAFTING_ROLES, action="change when the next update is due")
        if incident.resolved:
            raise ReminderError("This incident is resolved: no update is due.")
        moved = [member for member in members if not member.resolved]
        before = incident.next_update_due_at
        due = now + timedelta(minutes=minutes)
        Incident.objects.filter(pk__in=[member.pk for member in moved]).update(next_update_due_at=due)
        incident.next_update_due_at = due
        changes: dict[str, list[object]] = {
            "next_update_due_at": [before.isoformat() if before else None, due.isoformat()]
        }
        where = f"“{incident.title}”"
        if len(moved) > 1:
            where += f" ({_names(moved)})"
            changes["incidents"] = [None, [member.remote_id or str(member.pk) for member in moved]]
        audit.record(
            "incident.next_update_due_set",
            actor=user,
            team=team,
            target=incident,
            summary=f"{user.get_username()} set the next update of {where} due in {minutes} minutes",
            changes=changes,
        )
    return incident


def _start_clocks(now: datetime) -> int:
    """Give every open incident without a due time one: a grouped incident's service added later joins its group's
    clock (one outage, one due time); any other, its last activity plus its team's interval."""
    group_due = Subquery(
        Incident.objects.filter(group_id=OuterRef("group_id"), resolved=False, next_update_due_at__isnull=False)
        .order_by("next_update_due_at")
        .values("next_update_due_at")[:1]
    )
    joined = (
        Incident.objects.filter(resolved=False, next_update_due_at__isnull=True, group__isnull=False)
        .annotate(group_due=group_due)
        .filter(group_due__isnull=False)
        .values("pk")
    )
    started = Incident.objects.filter(pk__in=joined).update(next_update_due_at=group_due)
    interval = Subquery(Service.objects.filter(pk=OuterRef("service_id")).values("team__update_interval_minutes")[:1])
    return started + Incident.objects.filter(resolved=False, next_update_due_at__isnull=True).update(
        next_update_due_at=ExpressionWrapper(F("last_activity_at") + _minutes(interval), output_field=DateTimeField())
    )


def _minutes(count: Combinable) -> ExpressionWrapper[CombinedExpression]:
    """``count`` minutes, in SQL (an interval times an integer column)."""
    return ExpressionWrapper(Value(timedelta(minutes=1)) * count, output_field=DurationField())


def remind_overdue_updates(*, now: datetime | None = None) -> int:
    """Email and audit each open incident whose next update is overdue, once per due time: a grouped incident once
    for all its overdue services (one outage, one email), each service marked told. Returns how many were told."""
    now = now or timezone.now()
    _start_clocks(now)
    told = 0
    groups_seen: set[int] = set()
    for incident_id, group_id in overdue(Incident.objects.all(), now=now).values_list("pk", "group_id"):
        if group_id is not None:
            if group_id in groups_seen:
                continue
            groups_seen.add(group_id)
        with transaction.atomic():
            due_now = overdue(Incident.objects.all(), now=now)
            newly = []
            for incident in _members(due_now, incident_id, group_id):
                assert incident.next_update_due_at is not None  # overdue() reads only incidents with a due time
                try:
                    with transaction.atomic():
                        UpdateReminder.objects.create(
                            incident=incident, due_at=incident.next_update_due_at, created_at=now
                        )
                except IntegrityError:
                    continue  # told already for this due time
                newly.append(incident)
            if not newly:
                continue
            incident = newly[0]
            due = min(member.next_update_due_at for member in newly if member.next_update_due_at is not None)
            team = incident.service.team
            due_text = timezone.localtime(due).strftime("%Y-%m-%d %H:%M %Z")
            notifications.update_overdue(incident, due_at_text=due_text, team=team, members=newly)
            changes: dict[str, list[object]] = {"next_update_due_at": [None, due.isoformat()]}
            where = f"“{incident.title}”"
            if len(newly) > 1:
                where += f" ({_names(newly)})"
                changes["incidents"] = [None, [member.remote_id or str(member.pk) for member in newly]]
            audit.record(
                "incident.update_overdue",
                actor_label=SYSTEM_REMINDERS,
                team=team,
                target=incident,
                summary=f"The next update of {where} was due at {due_text}: authors and approvers emailed",
                changes=changes,
            )
            told += 1
    return told


def waiting_for_review(*, now: datetime | None = None) -> QuerySet[Revision]:
    """Revisions in review (the latest of their draft) that have waited longer than their team allows and were
    not escalated yet."""
    now = now or timezone.now()
    latest = Revision.objects.filter(draft=OuterRef("draft")).order_by("-number").values("pk")[:1]
    return (
        Revision.objects.filter(draft__state__in=REVIEWABLE_DRAFT_STATES, escalation__isnull=True)
        .filter(pk=Subquery(latest))
        .filter(created_at__lte=Value(now) - _minutes(F("draft__team__review_escalation_minutes")))
        .select_related("draft__team", "draft__service")
    )


def escalate_waiting_reviews(*, now: datetime | None = None) -> int:
    """Email every approver of the team about each revision waiting too long for review, once; audited."""
    now = now or timezone.now()
    told = 0
    for revision_id in waiting_for_review(now=now).values_list("pk", flat=True):
        with transaction.atomic():
            draft = (
                Draft.objects.select_for_update(of=("self",))
                .select_related("team")
                .filter(revisions=revision_id, state__in=REVIEWABLE_DRAFT_STATES)
                .first()
            )
            if draft is None:
                continue
            revision = Revision.objects.select_related("draft__team", "draft__service").get(pk=revision_id)
            try:
                with transaction.atomic():
                    ReviewEscalation.objects.create(revision=revision, created_at=now)
            except IntegrityError:
                continue
            waited = int((now - revision.created_at).total_seconds() // 60)
            notifications.review_escalated(revision, waited_minutes=waited)
            audit.record(
                "review.escalated",
                actor_label=SYSTEM_REMINDERS,
                team=draft.team,
                target=draft,
                summary=f"Revision {revision.number} of draft #{draft.pk} waited {waited} minutes for review: "
                "every approver emailed",
                changes={"revision": [None, revision.number]},
            )
            told += 1
    return told


def run(*, now: datetime | None = None) -> dict[str, int]:
    """The beat task's work: overdue updates, then waiting reviews."""
    now = now or timezone.now()
    return {"overdue_updates": remind_overdue_updates(now=now), "escalated_reviews": escalate_waiting_reviews(now=now)}
