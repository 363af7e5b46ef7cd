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
    Notification,
    NotificationState,
    PublicationState,
    Revision,
)

PANEL_LIMIT = 20


@require_GET
def dashboard(request: HtmxHttpRequest) -> HttpResponse:
    user = request.user
    my_drafts = (
        access.drafts(user)
        .filter(Q(author=user) | Q(last_editor=user) | Q(editors__contains=[user.pk]), state__in=FOLLOWED_DRAFT_STATES)
        # One query for the revisions with their reviews and reviewers (the panel shows the last review's comment).
        .prefetch_related(Prefetch("revisions", queryset=Revision.objects.select_related("review__reviewer")))
        .order_by("-updated_at")[:PANEL_LIMIT]
    )
    reviews = list(selectors.awaiting_review(user)[: PANEL_LIMIT + 1])
    if len(reviews) <= PANEL_LIMIT:
        # Every waiting review is in hand: the navigation's badge counts them without a query of its own.
        setattr(request, selectors.AWAITING_REVIEW_COUNT, len(reviews))
    publishing = (
        access.publications(user)
        .exclude(state=PublicationState.PUBLISHED)
        .select_related("draft__service")
        .order_by("-updated_at")[:PANEL_LIMIT]
    )
    health = heartbeat.status()
    context = {
        "needs_human": access.publications(user)
        .filter(state__in=HUMAN_PUBLICATION_STATES)
        .select_related("draft__service")
        .order_by("pk")[:PANEL_LIMIT],
        "worker_silent": health.worker_silent(),
        "beat_silent": health.beat_silent(),
        "health": health,
        "undelivered": Notification.objects.filter(
            team_id__in=access.team_ids(user), state=NotificationState.GAVE_UP
        ).count(),
        "reviews": reviews[:PANEL_LIMIT],
        "my_drafts": my_drafts,
        "publishing": publishing,
        "open_incidents": access.incidents(user).filter(resolved=False).order_by("-last_activity_at")[:PANEL_LIMIT],
        "can_draft": bool(access.team_ids(user, access.DRAFTING_ROLES)),
        # Issue 12: break-glass publications nobody else has reviewed yet (red), and overdue updates.
        "break_glass": selectors.break_glass_queue(user)[:PANEL_LIMIT],
        "overdue_incidents": selectors.overdue_incidents(user)[:PANEL_LIMIT],
    }
    return render(request, "incidents/dashboard.html", context)
