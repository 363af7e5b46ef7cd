"""Reads that several views (or the context processor) share. Reads only: nothing here writes.

Every queryset starts from ``access.py``, so a selector never returns another team's rows. The audit-log reads
never OFFSET and never COUNT: pages walk ``seq`` from a cursor (``?before=`` / ``?after=``), which the
``(team_id, -seq)``, ``(actor_id, -seq)`` and ``(target_type, target_id, -seq)`` indexes serve directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import CharField, Max, Q, QuerySet, Value
from django.urls import NoReverseMatch, reverse

from . import access, notifications, publishing, reminders
from .forms import NO_TEAM, PublicationActionForm
from .models import (
    REVIEWABLE_DRAFT_STATES,
    AuditEvent,
    Draft,
    Incident,
    Publication,
    PublicationState,
    PublishAttempt,
    Review,
    ReviewDecision,
    Team,
)

AUDIT_PAGE_SIZE = 50


# --- The audit log ------------------------------------------------------------------------------------------
@dataclass
class Page:
    events: list[AuditEvent]
    older_cursor: int | None = None  # the ``before=`` of the next older page, if there is one
    newer_cursor: int | None = None  # the ``after=`` of the next newer page, if there is one


@dataclass
class History:
    """What ``_history.html`` renders for one object (and, optionally, its related objects)."""

    visible: bool
    events: list[AuditEvent] = field(default_factory=list)
    truncated: bool = False
    more_url: str = ""


def filtered_events(user, filters: Mapping[str, Any]) -> QuerySet[AuditEvent]:
    """The user's readable events narrowed by cleaned filter values. Unordered; callers page on ``seq``."""
    events = access.audit_log_events(user)
    team = filters.get("team")
    if team == NO_TEAM:
        events = events.filter(team_id__isnull=True)
    elif team:
        events = events.filter(team_id=int(team))
    if actor := (filters.get("actor") or "").strip():
        # A current username resolves to its id (indexed; survives renames); anything else (system:worker,
        # a deleted or renamed user) matches the name snapshot on the row.
        user_ids = list(get_user_model().objects.filter(username__iexact=actor).values_list("pk", flat=True))
        events = events.filter(actor_id__in=user_ids) if user_ids else events.filter(actor_label__iexact=actor)
    if action := filters.get("action"):
        prefix = action.rstrip("*")
        events = events.filter(action__startswith=prefix) if prefix.endswith(".") else events.filter(action=action)
    if incident_id := filters.get("incident"):
        drafts, publications = incident_related_ids(user, incident_id)
        events = events.filter(
            Q(target_type="incident", target_id=str(incident_id))
            | Q(target_type="draft", target_id__in=[str(pk) for pk in drafts])
            | Q(target_type="publication", target_id__in=[str(pk) for pk in publications])
        )
    if target_type := (filters.get("target_type") or "").strip():
        events = events.filter(target_type=target_type.lower())
    if target_id := (filters.get("target_id") or "").strip():
        events = events.filter(target_id=target_id)
    if target := (filters.get("target") or "").strip():
        events = events.filter(target_label__icontains=target)
    if since := filters.get("since"):
        events = events.filter(created_at__gte=since)
    if until := filters.get("until"):
        # A datetime-local input names a minute; "to 14:30" includes 14:30:59.999999 (the last microsecond
        # PostgreSQL can store). Not "< 14:31": the minute after 9999-12-31 23:59 is not a date Python can hold.
        if until.second == 0 and until.microsecond == 0:
            until = until.replace(second=59, microsecond=999_999)
        events = events.filter(created_at__lte=until)
    return events


def keyset_page(
    events: QuerySet[AuditEvent], *, before: int | None = None, after: int | None = None, size: int = AUDIT_PAGE_SIZE
) -> Page:
    """One page, newest first, anchored on ``seq``: new events never shift an older page."""
    if after is not None:
        rows = list(events.filter(seq__gt=after).order_by("seq")[: size + 1])
        has_newer = len(rows) > size
        rows = rows[:size][::-1]
        has_older = bool(rows) and events.filter(seq__lt=rows[-1].seq).exists()
        if not rows:  # nothing newer than the cursor: show the page just below it instead of an empty one
            return keyset_page(events, before=after + 1, size=size)
    else:
        window = events.filter(seq__lt=before) if before is not None else events
        rows = list(window.order_by("-seq")[: size + 1])
        has_older = len(rows) > size
        rows = rows[:size]
        has_newer = before is not None and bool(rows) and events.filter(seq__gt=rows[0].seq).exists()
    return Page(
        events=rows,
        older_cursor=rows[-1].seq if has_older else None,
        newer_cursor=rows[0].seq if has_newer else None,
    )


def incident_related_ids(user, incident_id: int) -> tuple[list[int], list[int]]:
    """The ids of the drafts and publications (that ``user`` may see) of one incident: its page's timeline and
    history, and the audit log's incident filter, show the same ones."""
    drafts = (
        access.drafts(user)
        .filter(Q(incident_id=incident_id) | Q(publications__incident_id=incident_id))
        .values_list("pk", flat=True)
        .distinct()
    )
    publications = access.publications(user).filter(incident_id=incident_id).values_list("pk", flat=True)
    return list(drafts), list(publications)


def history_for(
    user,
    *,
    target_type: str,
    target_ids: Iterable[str | int],
    limit: int = AUDIT_PAGE_SIZE,
    also: Mapping[str, Iterable[str | int]] | None = None,
    more_filters: Mapping[str, str | int] | None = None,
) -> History:
    """The scoped events about one object (``target_type`` + ``target_ids``) and, via ``also``, about
    related ones (e.g. an incident page passes ``also={"draft": draft_ids}``). Newest first, at most ``limit``.
    ``more_filters`` are the audit log's filters of the "all of it" link (default: this one target).

    Only auditors and approvers of the team (and staff) see history, as with the audit log itself.
    """
    if not access.can_open_audit_log(user):
        return History(visible=False)
    wanted = {target_type: [str(i) for i in target_ids]}
    for other_type, ids in (also or {}).items():
        wanted.setdefault(other_type, []).extend(str(i) for i in ids)
    wanted = {kind: ids for kind, ids in wanted.items() if ids}
    if not wanted:
        return History(visible=True)
    # One indexed subquery per target type (an OR across types would defeat the (type, id, -seq) index), sent as
    # one UNION ALL statement and merged here.
    queries = [
        access.audit_log_events(user).filter(target_type=kind, target_id__in=ids).order_by("-seq")[: limit + 1]
        for kind, ids in wanted.items()
    ]
    combined = queries[0].union(*queries[1:], all=True) if len(queries) > 1 else queries[0]
    events: list[AuditEvent] = sorted(combined, key=lambda event: event.seq, reverse=True)
    more_url = ""
    ids = wanted.get(target_type, [])
    if more_filters:
        more_url = reverse("incidents:audit_log") + "?" + urlencode(more_filters)
    elif len(ids) == 1:
        more_url = reverse("incidents:audit_log") + "?" + urlencode({"target_type": target_type, "target_id": ids[0]})
    return History(visible=True, events=events[:limit], truncated=len(events) > limit, more_url=more_url)


def incident_history(user, incident: Incident, related: tuple[list[int], list[int]] | None = None) -> History:
    """The incident page's history: the incident's events and its drafts' and publications'. ``related``: their
    ids (``incident_related_ids``), when the caller has them already."""
    drafts, publications = related if related is not None else incident_related_ids(user, incident.pk)
    return history_for(
        user,
        target_type="incident",
        target_ids=[incident.pk],
        also={"draft": drafts, "publication": publications},
        more_filters={"incident": incident.pk},
    )


def draft_history(user, draft: Draft) -> History:
    """The draft page's history: the draft's events and its publications'."""
    return history_for(
        user,
        target_type="draft",
        target_ids=[draft.pk],
        also={"publication": list(draft.publications.values_list("pk", flat=True))},
    )


def audit_scope_teams(user, team_filter: str) -> list[Team | None]:
    """Teams whose events an action on the audit log touches: one audit event is written per team, so each
    team's auditors see it in their own log. ``None`` stands for the staff-only team-less events."""
    if team_filter == NO_TEAM:
        return [None]
    teams = access.teams(user, access.AUDIT_ROLES).order_by("pk")
    if team_filter:
        teams = teams.filter(pk=int(team_filter))
    scoped: list[Team | None] = list(teams)
    if not team_filter and user.is_staff:
        scoped.append(None)
    return scoped


# --- Drafts and incidents -----------------------------------------------------------------------------------
# --- Several panels of one model in one statement -----------------------------------------------------------------
@dataclass(frozen=True)
class Panel:
    """One sliced read of a page's panel: its rows (ordered and limited) and the same order as a sort key."""

    queryset: QuerySet[Any]
    key: Callable[[Any], Any]
    reverse: bool = False


def read_together(panels: Mapping[str, Panel]) -> dict[str, list[Any]]:
    """Several panels' reads of one model in one statement: the UNION ALL of their ordered, limited subqueries
    (each keeps its own index and LIMIT), split back by a literal naming the panel. The querysets must select the
    same columns (the same model and ``select_related``). SQL does not promise the order of a UNION's rows, so
    each panel's rows are sorted again by its key."""
    names = list(panels)
    if not names:
        return {}
    tagged = [panels[name].queryset.annotate(_panel=Value(name, output_field=CharField())) for name in names]
    rows: dict[str, list[Any]] = {name: [] for name in names}
    for row in tagged[0].union(*tagged[1:], all=True) if len(tagged) > 1 else tagged[0]:
        rows[row._panel].append(row)
    for name, panel in panels.items():
        rows[name].sort(key=panel.key, reverse=panel.reverse)
    return rows


# A view that read every draft awaiting the user's review sets their number on the request under this name; the
# navigation's badge (context_processors.navigation) then needs no COUNT of its own.
AWAITING_REVIEW_COUNT = "awaiting_review_count"


def awaiting_review(user) -> QuerySet[Draft]:
    """Drafts in review in teams where I approve, that I never edited (four eyes); oldest first."""
    return (
        access.drafts(user)
        .filter(team_id__in=access.team_ids(user, access.REVIEWING_ROLES), state__in=REVIEWABLE_DRAFT_STATES)
        .exclude(Q(author=user) | Q(last_editor=user) | Q(editors__contains=[user.pk]))
        .annotate(submitted_at=Max("revisions__created_at"))
        .order_by("submitted_at", "id")
    )


def incidents_matching(user, filters: Mapping[str, Any]) -> QuerySet[Incident]:
    """The user's incidents narrowed by the incident list's cleaned filters, most recently active first."""
    incidents = access.incidents(user)
    if filters.get("q"):
        incidents = incidents.filter(title__icontains=filters["q"])
    if filters.get("service"):
        incidents = incidents.filter(service=filters["service"])
    if filters.get("severity"):
        incidents = incidents.filter(severity=filters["severity"])
    if filters.get("stage"):
        incidents = incidents.filter(stage=filters["stage"])
    if filters.get("status") == "open":
        incidents = incidents.filter(resolved=False)
    elif filters.get("status") == "resolved":
        incidents = incidents.filter(resolved=True)
    return incidents.order_by("-last_activity_at", "-id")


# --- Publications -------------------------------------------------------------------------------------------
def _attempts(publication: Publication) -> list[PublishAttempt]:
    if "attempt_rows" in getattr(publication, "_prefetched_objects_cache", {}):
        return sorted(publication.attempt_rows.all(), key=lambda attempt: attempt.number)
    return list(publication.attempt_rows.order_by("number"))


# An incident page shows this many of its latest publications whole; older settled ones are behind "Show all".
PUBLICATIONS_SHOWN = 10


def publications_to_show(publications: list[Publication], latest: int = PUBLICATIONS_SHOWN) -> list[Publication]:
    """The publications an incident page shows by default, in the given order (newest first): the ``latest``
    ones, and every older one that is not settled yet (in flight, waiting, or needing a human: its block polls or
    carries the actions an approver needs), so nothing that asks for attention is ever folded away."""
    return [
        publication
        for index, publication in enumerate(publications)
        if index < latest or not publication.is_final or publication.needs_human
    ]


def publication_rows(user, publications: list[Publication]) -> list[Publication]:
    """These publications read whole, in the same order, with everything their blocks show (``publication_block``,
    ``_publication.html``) in two queries: the rows with their request, service, revision, review and team, and
    every attempt."""
    ids = [publication.pk for publication in publications]
    rows = (
        access.publications(user)
        .filter(pk__in=ids)
        .select_related(None)
        .select_related("request", "service", "revision", "revision__review", "team")
        .prefetch_related("attempt_rows")
    )
    by_id = {publication.pk: publication for publication in rows}
    return [by_id[pk] for pk in ids if pk in by_id]


def publication_block(user, publication: Publication, *, return_to: str, **extra: Any) -> dict[str, Any]:
    """Everything ``_publication.html`` needs: the row, its attempts, what it waits for, whether this user may
    act on it (and if not, who can). ``return_to`` is where its action forms send the user back."""
    is_approver = access.has_role(user, publication.team_id, access.REVIEWING_ROLES)
    waiting = (*publishing.CLAIMABLE_FOR_SEND, PublicationState.SCHEDULED)
    waiting_for = publishing.ahead_of(publication) if publication.state in waiting else None
    refused_for_good = publishing.refused_for_good(publication)
    # Someone who cannot act on it (or on the one it waits for) is told who can, by name.
    held = publication.needs_human or (waiting_for is not None and waiting_for.needs_human)
    can_cancel = is_approver and publication.state in publishing.CANCELLABLE
    return {
        "publication": publication,
        # A list (the fragment shows the last one and folds the rest); prefetched by a page that lists many.
        "attempts": _attempts(publication),
        "can_act": publication.needs_human and is_approver,
        "refused_for_good": refused_for_good,
        "can_resubmit": refused_for_good and access.has_role(user, publication.team_id, access.DRAFTING_ROLES),
        "can_delete_duplicates": publication.state == PublicationState.DUPLICATE_DETECTED
        and publication.request.method == "POST",
        "approvers": list(notifications.team_approvers(publication.team).order_by("username"))
        if held and not is_approver
        else [],
        "waiting_for": waiting_for,
        # Scheduled publication (issue 12 §7): an approver may cancel it until a worker claims it.
        "can_cancel": can_cancel,
        # A cancel stops one service's publication; the page says when the draft has others still scheduled.
        "scheduled_siblings": Publication.objects.filter(
            revision_id=publication.revision_id, state__in=publishing.CANCELLABLE
        )
        .exclude(pk=publication.pk)
        .count()
        if can_cancel
        else 0,
        "return_to": return_to,
        "action_form": PublicationActionForm(),
        **extra,
    }


# --- Where the public reads it ------------------------------------------------------------------------------
# The addresses IsDown may give an incident (mirror.py keeps its attributes), the incident's own page first.
PUBLIC_URL_ATTRIBUTES = ("url", "isdown_url", "service_status_url")


def public_page_url(incident: Incident | None) -> str:
    """Where the public reads this incident: the address IsDown gave it, or (publishing to the sandbox) the
    sandbox's status page of its service; "" when unknown. Only http(s) addresses: IsDown's text is not ours."""
    if incident is None:
        return ""
    payload: dict[str, Any] = incident.remote_payload if isinstance(incident.remote_payload, dict) else {}
    nested = payload.get("attributes")
    attributes: dict[str, Any] = nested if isinstance(nested, dict) else payload
    candidates = [attributes.get(name) for name in PUBLIC_URL_ATTRIBUTES] + [incident.remote_url]
    for candidate in candidates:
        if isinstance(candidate, str) and candidate.startswith(("https://", "http://")):
            return candidate
    if settings.SANDBOX_ENABLED and settings.PUBLISHES_TO_SANDBOX:
        try:
            return reverse("sandbox:status", args=[incident.service.isdown_service_id])
        except NoReverseMatch:
            return ""
    return ""


# --- Break-glass and reminders (issue 12 §4, §5) -------------------------------------------------------------
def break_glass_reviews(user) -> QuerySet[Review]:
    """Every break-glass decision in the user's teams, oldest first, with its post-review if there is one."""
    return (
        Review.objects.filter(decision=ReviewDecision.BREAK_GLASS, revision__draft__team_id__in=access.team_ids(user))
        .select_related("reviewer", "revision__draft__service", "post_review__reviewer")
        .order_by("created_at", "pk")
    )


def break_glass_queue(user) -> QuerySet[Review]:
    """Break-glass publications of the user's teams that nobody has reviewed after the fact yet: red on the
    dashboard until another approver does."""
    return break_glass_reviews(user).filter(post_review__isnull=True)


def overdue_incidents(user) -> QuerySet[Incident]:
    """The user's open incidents whose next public update is overdue (reminders.py sets and tells)."""
    return reminders.overdue(access.incidents(user)).select_related("service").order_by("next_update_due_at", "pk")


# --- One incident, several services (issue 12) ----------------------------------------------------------------
# How a service's row on a grouped incident's page sums up its latest publication.
WAITING_PUBLICATION_STATES = (
    PublicationState.QUEUED,
    PublicationState.SENDING,
    PublicationState.RETRY_WAIT,
    PublicationState.RECONCILING,
)


@dataclass(frozen=True)
class ServiceRow:
    """One service of a grouped incident: its IsDown incident (None until a create landed) and its latest
    publication (what was last sent to it, or is being sent)."""

    service: Any
    incident: Incident | None
    publication: Publication | None

    @property
    def summary(self) -> str:
        """published / failed / waiting / needs attention …: the latest publication's outcome, in a word or two."""
        if self.publication is None:
            return "published" if self.incident is not None else "not sent"
        state = self.publication.state
        if state in WAITING_PUBLICATION_STATES:
            return "waiting"
        return PublicationState(state).label.lower()


def group_publications(user, incident: Incident) -> QuerySet[Publication]:
    """Every publication of the local incident: this IsDown incident's, and, when it is grouped, every one made for
    the group (a create that failed has no IsDown incident to hang on, but belongs here)."""
    scope = Q(incident=incident)
    if incident.group_id is not None:
        scope |= Q(draft__group_id=incident.group_id) | Q(incident__group_id=incident.group_id)
    return access.publications(user).filter(scope).distinct()


def group_services(user, incident: Incident) -> list[ServiceRow]:
    """The services of a grouped incident, each with its IsDown incident and latest publication; [] for an
    incident outside a group."""
    if incident.group_id is None:
        return []
    members = list(access.incidents(user).filter(group_id=incident.group_id).order_by("service__name", "pk"))
    publications = list(
        group_publications(user, incident)
        .exclude(state=PublicationState.SUPERSEDED)
        .select_related("service")
        .order_by("-pk")
    )
    services: dict[int, Any] = {}
    for member in members:
        services.setdefault(member.service_id, member.service)
    for publication in publications:
        services.setdefault(publication.service_id, publication.service)
    rows = []
    for service_id, service in sorted(services.items(), key=lambda item: (item[1].name, item[0])):
        own = next((m for m in members if m.service_id == service_id), None)
        latest = next((p for p in publications if p.service_id == service_id), None)
        rows.append(ServiceRow(service=service, incident=own, publication=latest))
    return rows
