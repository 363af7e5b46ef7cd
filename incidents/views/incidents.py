"""The incident list and an incident's page."""

from __future__ import annotations

from django.core.paginator import Paginator
from django.db.models import Q
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from .. import access, selectors
from ..forms import IncidentFilterForm, return_path
from ..http import HtmxHttpRequest
from ..models import PENDING_DRAFT_STATES

PAGE_SIZE = 25


@require_GET
def incident_list(request: HtmxHttpRequest) -> HttpResponse:
    form = IncidentFilterForm(request.GET or None, user=request.user)
    incidents = selectors.incidents_matching(request.user, form.cleaned_data if form.is_valid() else {})
    page = Paginator(incidents, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "form": form,
        "page": page,
        "query": query.urlencode(),
        "can_draft": bool(access.team_ids(request.user, access.DRAFTING_ROLES)),
    }
    template = "incidents/incident_list.html#results" if request.htmx else "incidents/incident_list.html"
    return render(request, template, context)


@require_GET
def incident_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    incident = access.get_scoped_or_404(access.incidents(request.user), pk=pk)
    team = incident.service.team
    drafts = list(
        access.drafts(request.user)
        .filter(Q(incident=incident) | Q(publications__incident=incident))
        .distinct()
        .order_by("-updated_at")
    )
    # One query for the rows and what their blocks show, one for all their attempts (a busy incident has many).
    publications = list(
        access.publications(request.user)
        .filter(incident=incident)
        .select_related("request", "service", "revision", "team")
        .prefetch_related("attempt_rows")
        .order_by("-created_at")
    )
    context = {
        "incident": incident,
        "updates": list(incident.updates.order_by("-position")),
        "pending_drafts": [d for d in drafts if d.state in PENDING_DRAFT_STATES],
        "drafts": drafts,
        "publication_blocks": [
            selectors.publication_block(request.user, publication, return_to=return_path(request))
            for publication in publications
        ],
        # The same drafts and publications as incident_related_ids would read again.
        "history": selectors.incident_history(
            request.user, incident, related=([d.pk for d in drafts], [p.pk for p in publications])
        ),
        "can_draft": access.has_role(request.user, team, access.DRAFTING_ROLES),
        "can_review": access.has_role(request.user, team, access.REVIEWING_ROLES),
    }
    return render(request, "incidents/incident_detail.html", context)
