"""The dashboard: what needs me now."""

from __future__ import annotations

from django.db.models import Prefetch, Q
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from .. import access, heartbeat, selectors
from ..http import HtmxHttpRequest
from ..models import (
    FOLLOWED_DRAFT_STATES,
    HUMAN_PUBLICATION_STATES,
    Incident,
    Notification,
    NotificationState,
    PublicationState,
    Revision,
)

PANEL_LIMIT = 20
# What the open and overdue incidents panels show of an incident (and the keys they are ordered by).
INCIDENT_COLUMNS = (
    "title",
    "severity",
    "stage",
    "resolved",
    "missing_on_remote",
    "last_activity_at",
    "next_update_due_at",
    "group_id",
    "service__name",
)


@require_GET
def dashboard(request: HtmxHttpRequest) -> HttpResponse:
    user = request.user
    # Each panel joins only what it shows (the columns of a join cost to compile and to read even when it is empty).
    my_drafts = (
        access.drafts(user)
        .select_related(None)
        .select_related("service")
        .filter(Q(author=user) | Q(last_editor=user) | Q(editors__contains=[user.pk]), state__in=FOLLOWED_DRAFT_STATES)
        # One query for the revisions with their reviews and reviewers (the panel shows the last review's comment).
        .prefetch_related(Prefetch("revisions", queryset=Revision.objects.select_related("review__reviewer")))
        .order_by("-updated_at")[:PANEL_LIMIT]
    )
    reviews = list(
        selectors.awaiting_review(user).select_related(None).select_related("service", "author")[: PANEL_LIMIT + 1]
    )
    if len(reviews) <= PANEL_LIMIT:
        # Every waiting review is in hand: the navigation's badge counts them without a query of its own.
        setattr(request, selectors.AWAITING_REVIEW_COUNT, len(reviews))
    # Two panels of publications in one statement, and two of incidents in another (selectors.read_together).
    publications = access.publications(user).select_related(None).select_related("draft__service")
    incidents = access.incidents(user).select_related(None).select_related("service").only(*INCIDENT_COLUMNS)
    by_panel = selectors.read_together(
        {
            "needs_human": selectors.Panel(
                publications.filter(state__in=HUMAN_PUBLICATION_STATES).order_by("pk")[:PANEL_LIMIT],
                key=lambda publication: publication.pk,
            ),
            "publishing": selectors.Panel(
                publications.exclude(state=PublicationState.PUBLISHED).order_by("-updated_at")[:PANEL_LIMIT],
                key=lambda publication: publication.updated_at,
                reverse=True,
            ),
        }
    ) | selectors.read_together(
        {
            "open_incidents": selectors.Panel(
                incidents.filter(resolved=False).order_by("-last_activity_at")[:PANEL_LIMIT],
                key=lambda incident: incident.last_activity_at,
                reverse=True,
            ),
            "overdue_incidents": selectors.Panel(
                selectors.overdue_incidents(user)
                .select_related(None)
                .select_related("service")
                .only(*INCIDENT_COLUMNS)[:PANEL_LIMIT],
                key=lambda incident: (incident.next_update_due_at, incident.pk),
            ),
        }
    )
    health = heartbeat.status()
    context = {
        "needs_human": by_panel["needs_human"],
        "worker_silent": health.worker_silent(),
        "beat_silent": health.beat_silent(),
        "health": health,
        "undelivered": Notification.objects.filter(
            team_id__in=access.team_ids(user), state=NotificationState.GAVE_UP
        ).count(),
        "reviews": reviews[:PANEL_LIMIT],
        "my_drafts": my_drafts,
        "publishing": by_panel["publishing"],
        "open_incidents": by_panel["open_incidents"],
        "can_draft": bool(access.team_ids(user, access.DRAFTING_ROLES)),
        # Issue 12: break-glass publications nobody else has reviewed yet (red), and overdue updates.
        "break_glass": selectors.break_glass_queue(user)
        .select_related(None)
        .select_related("reviewer", "revision__draft__service")[:PANEL_LIMIT],
        "overdue_incidents": _one_per_group(by_panel["overdue_incidents"]),
    }
    return render(request, "incidents/dashboard.html", context)


def _one_per_group(incidents: list[Incident]) -> list[Incident]:
    """One line per outage: a grouped incident's services (one IsDown incident each, one reminder clock) are listed
    on its earliest-due member as ``services_label``."""
    lines: list[Incident] = []
    first_of_group: dict[int, Incident] = {}
    for incident in incidents:
        first = first_of_group.get(incident.group_id) if incident.group_id is not None else None
        if first is None:
            incident.services_label = incident.service.name
            lines.append(incident)
            if incident.group_id is not None:
                first_of_group[incident.group_id] = incident
        else:
            first.services_label += f", {incident.service.name}"
    return lines
