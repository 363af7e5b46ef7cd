"""The incident list and an incident's page."""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from .. import access, reminders, selectors
from ..forms import IncidentFilterForm, NextUpdateDueForm, return_path
from ..http import HtmxHttpRequest
from ..models import PENDING_DRAFT_STATES, Publication, Review

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
    in_group = Q(group_id=incident.group_id) if incident.group_id else Q(pk__in=[])
    drafts = list(
        access.drafts(request.user)
        .filter(Q(incident=incident) | Q(publications__incident=incident) | in_group)
        # The timeline and the drafts panel show the draft's own fields and its author only.
        .select_related(None)
        .select_related("author")
        .distinct()
        .order_by("-updated_at")
    )
    # A grouped incident is one local incident: every service's publications show here, each with its actions.
    # The latest are shown whole; older settled ones (published, abandoned …) are folded behind "Show all" (a busy
    # incident has dozens, each a block with its attempts). All of them are listed narrowly (what folding needs;
    # their ids feed the history), then the shown ones are read whole with their attempts (two queries).
    publications = list(
        selectors.group_publications(request.user, incident)
        # Narrow, but with each one's review: the page lists every break-glass publication of the incident with
        # who reviewed it after the fact (no query of its own).
        .select_related(None)
        .select_related("revision__review__reviewer", "revision__review__post_review__reviewer")
        .only(
            "pk",
            "state",
            "watch_until",
            "created_at",
            "revision__id",
            "revision__draft_id",
            "revision__review__id",
            "revision__review__decision",
            "revision__review__created_at",
            "revision__review__reviewer__id",
            "revision__review__reviewer__username",
            "revision__review__post_review__id",
            "revision__review__post_review__reviewer__id",
            "revision__review__post_review__reviewer__username",
        )
        .order_by("-created_at")
    )
    show_all = request.GET.get("publications") == "all"
    shown = selectors.publication_rows(
        request.user, publications if show_all else selectors.publications_to_show(publications)
    )
    service_rows = selectors.group_services(request.user, incident)
    grouped = {row.service.pk for row in service_rows}
    updates = list(incident.updates.order_by("-position"))
    # Corrections name the update they correct: the timeline shows it beside that update.
    corrections: dict[int, list] = {}
    for draft in drafts:
        if draft.corrects_position is not None:
            corrections.setdefault(draft.corrects_position, []).append(draft)
    for update in updates:
        update.corrected_by = corrections.get(update.position, [])
    context = {
        "incident": incident,
        "updates": updates,
        "pending_drafts": [d for d in drafts if d.state in PENDING_DRAFT_STATES],
        "drafts": drafts,
        "publication_blocks": [
            selectors.publication_block(request.user, publication, return_to=return_path(request))
            for publication in shown
        ],
        "publications_total": len(publications),
        "publications_folded": len(publications) - len(shown),
        "publications_all": show_all,
        # The same drafts and publications as incident_related_ids would read again.
        "history": selectors.incident_history(
            request.user, incident, related=([d.pk for d in drafts], [p.pk for p in publications])
        ),
        "can_draft": access.has_role(request.user, team, access.DRAFTING_ROLES),
        "can_review": access.has_role(request.user, team, access.REVIEWING_ROLES),
        "overdue": reminders.is_overdue(incident),
        "next_update_form": NextUpdateDueForm(initial={"minutes": team.update_interval_minutes}),
        "update_interval": team.update_interval_minutes,
        "break_glass_reviews": _break_glass_reviews(publications),
        "service_rows": service_rows,
        # Removing a service resolves its incident; the last open one is resolved with the incident instead.
        "can_remove_services": sum(1 for row in service_rows if row.incident and not row.incident.resolved) > 1,
        # Services of the team that could be added to the incident (a reviewed create on each).
        "addable_services": [
            service
            for service in access.services(request.user, access.DRAFTING_ROLES).filter(team=team).order_by("name")
            if service.pk not in grouped and service.pk != incident.service_id
        ]
        if not incident.resolved and incident.remote_id
        else [],
    }
    return render(request, "incidents/incident_detail.html", context)


def _break_glass_reviews(publications: list[Publication]) -> list[Review]:
    """The break-glass decisions behind the incident's publications (read with them: no query of its own), oldest
    first."""
    reviews: dict[int, Review] = {}
    for publication in publications:
        review = getattr(publication.revision, "review", None)
        if review is not None and review.is_break_glass:
            reviews[review.pk] = review
    return sorted(reviews.values(), key=lambda review: (review.created_at, review.pk))


@require_POST
def incident_next_update_due(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Move when the incident's next public update is due (issue 12 §5): a responder or approver of its team."""
    incident = access.get_scoped_or_404(access.incidents(request.user), pk=pk)
    access.require_role(request.user, incident.service.team, access.DRAFTING_ROLES, action="change the next update")
    form = NextUpdateDueForm(request.POST)
    if form.is_valid():
        try:
            reminders.set_next_update_due(
                incident_id=incident.pk,
                user=request.user,  # type: ignore[arg-type]
                minutes=form.cleaned_data["minutes"],
            )
        except reminders.ReminderError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"The next update is now due in {form.cleaned_data['minutes']} minutes.")
    else:
        messages.error(request, " ".join(e for errors in form.errors.values() for e in errors))
    return redirect("incidents:incident_detail", pk=incident.pk)
