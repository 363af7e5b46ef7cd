"""A publication's status (a self-refreshing fragment) and the human actions approvers may take on a failed,
needs-attention or duplicated publication. The actions themselves live in publishing.py.

Other pages include ``incidents/_publication.html`` with the context from ``selectors.publication_block``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.template.loader import render_to_string
from django.urls import Resolver404, resolve, reverse
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect

from .. import access, publishing, selectors
from ..forms import next_path, return_path
from ..http import HtmxHttpRequest
from ..models import COMMENT_MAX_LENGTH, Publication

FRAGMENT = "incidents/_publication.html"
PAGE = "incidents/publication.html"


def publication_context(request: HtmxHttpRequest, publication: Publication, **extra: Any) -> dict[str, Any]:
    return selectors.publication_block(request.user, publication, return_to=return_path(request), **extra)


def _scoped(request: HtmxHttpRequest, pk: int) -> Publication:
    return access.get_scoped_or_404(access.publications(request.user), pk=pk)


def _page_updates(request: HtmxHttpRequest, publication: Publication) -> str:
    """Out-of-band swaps for the page the poll runs on: the draft's state badge or the incident's header, and
    the history, so they follow the publication as it settles. Nothing for any other page."""
    try:
        match = resolve((request.htmx.current_url_abs_path or "").split("?")[0])
    except Resolver404:
        return ""
    page_pk = match.kwargs.get("pk")
    if match.view_name == "incidents:draft_detail" and page_pk == publication.draft_id:
        draft = access.drafts(request.user).get(pk=publication.draft_id)
        history = selectors.draft_history(request.user, draft)
        parts = [render_to_string(f"{PAGE}#draft-state", {"draft": draft}, request)]
    elif match.view_name == "incidents:incident_detail" and page_pk == publication.incident_id:
        incident = access.get_scoped_or_404(access.incidents(request.user), pk=page_pk)
        history = selectors.incident_history(request.user, incident)
        context = {"incident": incident, "oob": True}
        parts = [render_to_string("incidents/incident_detail.html#incident-state", context, request)]
    else:
        return ""
    parts.append(render_to_string("incidents/_history.html", {"history": history, "oob": True}, request))
    return "".join(parts)


@require_GET
def publication_status(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """The fragment for htmx polling (it stops polling itself at a final state), with the page's state badge and
    history swapped out of band; a small page otherwise."""
    publication = _scoped(request, pk)
    if not request.htmx:
        return render(request, PAGE, publication_context(request, publication))
    response = render(request, FRAGMENT, publication_context(request, publication))
    response.write(_page_updates(request, publication))
    return response


def _act(request: HtmxHttpRequest, pk: int, *, action: str, run: Callable[..., None]) -> HttpResponse:
    publication = _scoped(request, pk)
    access.require_role(request.user, publication.team, access.REVIEWING_ROLES, action=action)
    expected_state = request.POST.get("state") or None
    status, error = 200, ""
    try:
        run(publication=publication, expected_state=expected_state)
    except publishing.InvalidTransition as exc:
        status, error = 409, str(exc)
    except publishing.VerificationFailed as exc:
        status, error = 422, str(exc)
    publication.refresh_from_db()
    if request.htmx:
        context = publication_context(request, publication, action_error=error)
        return render(request, FRAGMENT, context, status=status)
    if error:
        messages.error(request, error)
    else:
        messages.success(request, f"{publication}: {publication.get_state_display().lower()}.")
    return HttpResponseRedirect(next_path(request) or reverse("incidents:publication_status", args=[publication.pk]))


@require_POST
def publication_retry(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    def run(*, publication: Publication, expected_state: str | None) -> None:
        publishing.retry_now(publication_id=publication.pk, user=request.user, expected_state=expected_state)

    return _act(request, pk, action="retry a publication", run=run)


@require_POST
def publication_edit_and_resubmit(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """IsDown refused it for good: supersede it and open its draft for editing (responders and approvers)."""
    publication = _scoped(request, pk)
    access.require_role(request.user, publication.team, access.DRAFTING_ROLES, action="edit and resubmit a draft")
    try:
        publishing.edit_and_resubmit(
            publication_id=publication.pk, user=request.user, expected_state=request.POST.get("state") or None
        )
    except publishing.InvalidTransition as exc:
        publication.refresh_from_db()
        if request.htmx:
            context = publication_context(request, publication, action_error=str(exc))
            return render(request, FRAGMENT, context, status=409)
        messages.error(request, str(exc))
        return HttpResponseRedirect(next_path(request) or reverse("incidents:publication_status", args=[pk]))
    messages.success(
        request,
        f"Draft #{publication.draft_id} is open for editing: fix what IsDown refused, then submit it for review.",
    )
    url = reverse("incidents:draft_detail", args=[publication.draft_id])
    return HttpResponseClientRedirect(url) if request.htmx else HttpResponseRedirect(url)


@require_POST
def publication_send_again(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    def run(*, publication: Publication, expected_state: str | None) -> None:
        publishing.send_again(publication_id=publication.pk, user=request.user, expected_state=expected_state)

    return _act(request, pk, action="send a publication again", run=run)


@require_POST
def publication_mark_published(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    def run(*, publication: Publication, expected_state: str | None) -> None:
        publishing.mark_published(
            publication_id=publication.pk,
            user=request.user,
            # Only a bound against huge input: mark_published itself refuses anything but up to 18 digits.
            remote_id=request.POST.get("remote_id", "")[:100],
            expected_state=expected_state,
        )

    return _act(request, pk, action="mark a publication published", run=run)


@require_POST
def publication_abandon(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    def run(*, publication: Publication, expected_state: str | None) -> None:
        publishing.abandon(
            publication_id=publication.pk,
            user=request.user,
            reason=request.POST.get("reason", "")[:COMMENT_MAX_LENGTH],
            expected_state=expected_state,
        )

    return _act(request, pk, action="abandon a publication", run=run)


@require_POST
def publication_cancel(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Approvers: a scheduled publication will not go out (issue 12 §7)."""

    def run(*, publication: Publication, expected_state: str | None) -> None:
        publishing.cancel_scheduled(publication_id=publication.pk, user=request.user, expected_state=expected_state)

    return _act(request, pk, action="cancel a scheduled publication", run=run)


@require_POST
def publication_delete_duplicates(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    def run(*, publication: Publication, expected_state: str | None) -> None:
        publishing.delete_duplicates(publication_id=publication.pk, user=request.user, expected_state=expected_state)

    return _act(request, pk, action="delete a duplicate", run=run)


@require_POST
def publication_acknowledge(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    def run(*, publication: Publication, expected_state: str | None) -> None:
        publishing.acknowledge_duplicate(
            publication_id=publication.pk,
            user=request.user,
            note=request.POST.get("note", "")[:COMMENT_MAX_LENGTH],
            expected_state=expected_state,
        )

    return _act(request, pk, action="acknowledge a duplicate", run=run)
