"""Emails, through a durable outbox: the only code that writes a Notification.

``queue`` writes the email in the caller's transaction (so nobody hears of something that did not happen, and
nothing that happened goes untold) and asks a worker to deliver it after commit. ``deliver`` claims one row
with a short lease, sends it, and records the outcome: sent, or a retry with backoff, or after
NOTIFY_MAX_ATTEMPTS "gave up" (audited, and shown on the dashboard). A beat task delivers whatever is due, so
a lost message or a mail-server outage costs time, never the email. Delivery is at least once: a worker that
dies after sending and before recording sends that email again.

Who hears what:
- a submitted revision: the team's approvers other than its author and last editor;
- a review decision: the draft's author and the revision's submitter;
- a publication that failed, needs attention or was duplicated: the team's approvers, the draft's author and the
  revision's submitter;
- a break-glass publication: every other approver of the team, at once;
- an incident whose next update is overdue (a grouped one once): the authors and submitters of its drafts and the
  team's approvers;
- a revision waiting too long for review: every approver of the team.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.mail import EmailMessage, get_connection
from django.db.models import F, Model, Q, QuerySet
from django.urls import reverse
from django.utils import timezone

from . import audit, enqueue
from .models import (
    Draft,
    Incident,
    Notification,
    NotificationState,
    Publication,
    PublicationState,
    Review,
    Revision,
    Role,
    Team,
)

logger = logging.getLogger(__name__)

N = NotificationState
ERROR_LIMIT = 2000


def _link(name: str, **kwargs: Any) -> str:
    return settings.SITE_URL + reverse(name, kwargs=kwargs)


def team_approvers(team: Team) -> QuerySet[User]:
    return get_user_model().objects.filter(memberships__team=team, memberships__role=Role.APPROVER, is_active=True)


def _addresses(users: Iterable[User]) -> list[str]:
    return sorted({user.email for user in users if user.email and user.is_active})


def queue(
    *, kind: str, team: Team | None, users: Iterable[User], subject: str, body: str, target: Model | None = None
) -> Notification | None:
    """Write one email to ``users`` (those with an address) into the outbox; deliver after commit."""
    recipients = _addresses(users)
    if not recipients:
        return None
    notification = Notification.objects.create(
        team=team,
        kind=kind,
        # A header cannot hold a line break (Django refuses the whole message): subjects are one line.
        subject=" ".join(subject.split())[:300],
        body=body,
        recipients=recipients,
        target_type=(target._meta.model_name or "") if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        next_attempt_at=timezone.now(),
    )
    enqueue.notification_on_commit(notification.pk)
    return notification


# --- What is told --------------------------------------------------------------------------------------------
def services_of(revision: Revision) -> str:
    """The services a revision's requests go to, in order (a draft may fan out to several: issue 12)."""
    names = list(dict.fromkeys(revision.requests.order_by("position").values_list("service__name", flat=True)))
    return ", ".join(names) or revision.draft.service.name


def revision_submitted(revision: Revision) -> Notification | None:
    draft = revision.draft
    approvers = team_approvers(draft.team).exclude(
        pk__in=[revision.author_id, revision.last_editor_id, *revision.editors]
    )
    services = services_of(revision)
    return queue(
        kind="review_needed",
        team=draft.team,
        users=approvers,
        subject=f"[isdown-admin] Review needed: {draft.title or draft.get_kind_display()} ({services})",
        body=(
            f"{revision.submitted_by.get_username()} submitted revision {revision.number} of draft #{draft.pk} "
            f"for {services} ({draft.team.name}).\n\n"
            f"Review it: {_link('incidents:draft_review', pk=draft.pk)}\n"
        ),
        target=draft,
    )


def revision_reviewed(review: Review) -> Notification | None:
    """The author hears the verdict, and so does whoever submitted the revision: for a draft whose author cannot
    sign in (an alert's system author, which has no address) the submitter is the only one waiting for it."""
    draft = review.revision.draft
    told = [user for user in (draft.author, review.revision.submitted_by) if user.pk != review.reviewer_id]
    body = (
        f"{review.reviewer.get_username()} {review.get_decision_display().lower()} revision "
        f"{review.revision.number} of your draft #{draft.pk} ({draft.service.name}).\n"
    )
    if review.comment:
        body += f"\nComment:\n{review.comment}\n"
    body += f"\n{_link('incidents:draft_detail', pk=draft.pk)}\n"
    return queue(
        kind="reviewed",
        team=draft.team,
        users=told,
        subject=f"[isdown-admin] {review.get_decision_display()}: {draft.title or draft.get_kind_display()}",
        body=body,
        target=draft,
    )


HUMAN_STATE_WORDS = {
    PublicationState.FAILED: ("Failed", "IsDown refused it or it could not be sent; nothing was published."),
    PublicationState.NEEDS_ATTENTION: (
        "Needs attention",
        "The app cannot tell on its own whether it reached IsDown; it will not send it again on a guess.",
    ),
    PublicationState.DUPLICATE_DETECTED: (
        "Duplicate detected",
        "It reached IsDown more than once: subscribers may have been notified twice.",
    ),
}


def publication_needs_human(publication: Publication, *, reason: str, waiting: int = 0) -> Notification | None:
    """Tell the team's approvers and the draft's author that a publication waits for a human. ``waiting``: how many
    changes to the same IsDown incident go out after it (publishing.behind, in the order they are due)."""
    draft = publication.draft
    label, meaning = HUMAN_STATE_WORDS.get(PublicationState(publication.state), ("Needs a human", ""))
    # The author, and whoever submitted the revision (an alert's draft is authored by a user without an address).
    users = [*team_approvers(publication.team), draft.author, publication.revision.submitted_by]
    body = (
        f"{label}: publication #{publication.pk} of draft #{draft.pk} "
        f"({draft.title or draft.get_kind_display()}, {publication.service.name}, {publication.team.name}).\n\n"
        f"{meaning}\n\nWhy: {reason}\n"
    )
    if waiting:
        body += f"\n{waiting} later change(s) to the same incident wait behind it until someone decides.\n"
    body += (
        f"\nApprovers of {publication.team.name} can act on it here: {_link('incidents:draft_detail', pk=draft.pk)}\n"
    )
    return queue(
        kind=f"publication_{publication.state}",
        team=publication.team,
        users=users,
        subject=f"[isdown-admin] {label}: {draft.title or draft.get_kind_display()} ({publication.service.name})",
        body=body,
        target=publication,
    )


# --- Break-glass and reminders (issue 12 §4, §5) ------------------------------------------------------------
def break_glass_published(review: Review) -> Notification | None:
    """Every other approver hears at once that a revision was published without a second approver, and where to:
    every service its requests go to."""
    draft = review.revision.draft
    services = services_of(review.revision)
    return queue(
        kind="break_glass",
        team=draft.team,
        users=team_approvers(draft.team).exclude(pk=review.reviewer_id),
        subject=f"[isdown-admin] BREAK-GLASS: {review.reviewer.get_username()} published "
        f"{draft.title or draft.get_kind_display()} without review ({services})",
        body=(
            f"{review.reviewer.get_username()} published revision {review.revision.number} of draft #{draft.pk} "
            f"({services}, {draft.team.name}) without a second approver (break-glass), after an "
            f"authenticator check.\n\nTheir reason:\n{review.comment}\n\n"
            f"It must be reviewed after the fact by another approver: {_link('incidents:draft_review', pk=draft.pk)}\n"
        ),
        target=draft,
    )


def update_overdue(
    incident: Incident, *, due_at_text: str, team: Team, members: list[Incident] | None = None
) -> Notification | None:
    """The next update of ``incident`` is overdue; ``members``: every overdue service's incident of its group (one
    email for one outage). Told: the team's approvers and the people of the incident's drafts — their authors and
    whoever submitted them (an alert's draft is authored by a system user that has no address)."""
    incidents = members or [incident]
    remote_ids = [member.remote_id for member in incidents if member.remote_id]
    drafts = Draft.objects.filter(Q(incident__in=incidents) | Q(publications__remote_id__in=remote_ids))
    people = get_user_model().objects.filter(
        Q(pk__in=drafts.values("author")) | Q(pk__in=Revision.objects.filter(draft__in=drafts).values("submitted_by"))
    )
    names = ", ".join(dict.fromkeys(m.service.name for m in sorted(incidents, key=lambda m: (m.service.name, m.pk))))
    return queue(
        kind="update_overdue",
        team=team,
        users=[*team_approvers(team), *people],
        subject=f"[isdown-admin] Update overdue: {incident.title} ({names})",
        body=(
            f"The next public update of “{incident.title}” ({names}, {team.name}) was due at "
            f"{due_at_text} and none has been approved since.\n\n"
            f"Write one: {_link('incidents:update_new', pk=incident.pk)}\n"
            f"The incident: {_link('incidents:incident_detail', pk=incident.pk)}\n"
        ),
        target=incident,
    )


def review_escalated(revision: Revision, *, waited_minutes: int) -> Notification | None:
    draft = revision.draft
    services = services_of(revision)
    return queue(
        kind="review_escalated",
        team=draft.team,
        users=team_approvers(draft.team),
        subject=f"[isdown-admin] Still waiting for review: {draft.title or draft.get_kind_display()} ({services})",
        body=(
            f"Revision {revision.number} of draft #{draft.pk} ({services}, {draft.team.name}) has waited "
            f"{waited_minutes} minutes for a second approver.\n\n"
            f"Review it: {_link('incidents:draft_review', pk=draft.pk)}\n"
        ),
        target=draft,
    )


def team_drafters(team: Team) -> QuerySet[User]:
    """Who writes the team's drafts: its responders and approvers."""
    return get_user_model().objects.filter(
        memberships__team=team, memberships__role__in=(Role.RESPONDER, Role.APPROVER), is_active=True
    )


def alert_draft_proposed(draft: Draft, *, source: str, note: str = "") -> Notification | None:
    """Tell the team's responders (and approvers, who draft too) that an alert wrote a draft for them to check,
    edit and submit: it is never submitted on its own."""
    what = "a resolve" if draft.stage == "resolved" else f"a {draft.get_kind_display().lower()}"
    body = (
        f"An alert from {source} proposed {what} draft #{draft.pk} for {draft.service.name} ({draft.team.name}).\n"
        "Nothing is published: read it, edit it and submit it for review, or discard it.\n\n"
        f"{_link('incidents:draft_detail', pk=draft.pk)}\n"
    )
    if note:
        body += f"\n{note}\n"
    return queue(
        kind="alert_draft",
        team=draft.team,
        users=team_drafters(draft.team),
        subject=f"[isdown-admin] Alert draft: {draft.title or draft.get_kind_display()} ({draft.service.name})",
        body=body,
        target=draft,
    )


# --- Delivery ------------------------------------------------------------------------------------------------
def _backoff(attempts: int) -> float:
    ceiling = min(settings.NOTIFY_BACKOFF_CAP, settings.NOTIFY_BACKOFF_BASE * 2 ** max(attempts - 1, 0))
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography


def deliver(notification_id: int) -> str:
    """Send one due notification; returns its state afterwards ("" when it was not due or someone else has it).

    The claim is one conditional UPDATE with a lease, so two workers never send the same row at once and no
    transaction stays open while the mail server answers."""
    now = timezone.now()
    lease = now + timedelta(seconds=max(2 * settings.EMAIL_TIMEOUT, 30))
    claimed = (
        Notification.objects.filter(pk=notification_id, state=N.PENDING, next_attempt_at__lte=now)
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lte=now))
        .update(lease_expires_at=lease, attempts=F("attempts") + 1)
    )
    if not claimed:
        return ""
    notification = Notification.objects.select_related("team").get(pk=notification_id)
    try:
        with get_connection(fail_silently=False) as connection:
            connection.send_messages(
                [
                    EmailMessage(notification.subject, notification.body, settings.DEFAULT_FROM_EMAIL, [address])
                    for address in notification.recipients
                ]
            )
    except Exception as exc:  # any failure of the mail path is retried; the reason is kept for the dashboard
        return _record_failure(notification, error=f"{type(exc).__name__}: {exc}"[:ERROR_LIMIT])
    Notification.objects.filter(pk=notification.pk).update(
        state=N.SENT, sent_at=timezone.now(), lease_expires_at=None, last_error=""
    )
    return N.SENT


def _record_failure(notification: Notification, *, error: str) -> str:
    logger.warning("notification %s (%s) not delivered: %s", notification.pk, notification.kind, error)
    if notification.attempts >= settings.NOTIFY_MAX_ATTEMPTS:
        Notification.objects.filter(pk=notification.pk).update(state=N.GAVE_UP, lease_expires_at=None, last_error=error)
        audit.record(
            "notification.gave_up",
            summary=f"Email “{notification.subject[:120]}” could not be delivered after "
            f"{notification.attempts} attempts: {error[:200]}",
            actor_label=audit.SYSTEM_WORKER,
            team=notification.team,
            target=notification,
            context={"recipients": len(notification.recipients)},
        )
        return N.GAVE_UP
    Notification.objects.filter(pk=notification.pk).update(
        next_attempt_at=timezone.now() + timedelta(seconds=_backoff(notification.attempts)),
        lease_expires_at=None,
        last_error=error,
    )
    return N.PENDING


def due_ids(limit: int = 200) -> list[int]:
    now = timezone.now()
    return list(
        Notification.objects.filter(state=N.PENDING, next_attempt_at__lte=now)
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lte=now))
        .order_by("next_attempt_at", "pk")
        .values_list("pk", flat=True)[:limit]
    )


def deliver_due(limit: int = 200) -> dict[str, int]:
    """Deliver everything that is due (the beat task, and tests). Returns counts by resulting state."""
    counts: dict[str, int] = {}
    for notification_id in due_ids(limit):
        state = deliver(notification_id)
        if state:
            counts[state] = counts.get(state, 0) + 1
    return counts
