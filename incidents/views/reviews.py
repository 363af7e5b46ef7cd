"""The review page: the revision exactly as it will be sent, what changed, and the decision."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from .. import access, mfa, public_text, publishing, selectors, workflow
from ..diffs import diff_fields
from ..forms import DRAFT_FIELD_LABELS, AcceptWarningForm, BreakGlassForm, PostReviewForm, ReviewForm
from ..http import HtmxHttpRequest
from ..models import (
    DRAFT_FIELDS,
    REVIEWABLE_DRAFT_STATES,
    Draft,
    DraftKind,
    PublicationState,
    Review,
    ReviewDecision,
    Severity,
    Stage,
)


def _incident_state(draft: Draft) -> dict[str, str]:
    # An update's description is a new entry on IsDown, never an edit of an earlier one: it compares with nothing.
    incident = draft.incident
    return {name: "" if name == "description" else getattr(incident, name) for name in DRAFT_FIELDS}


def review_context(request: HtmxHttpRequest, draft: Draft) -> dict[str, Any]:
    revisions = list(
        draft.revisions.select_related(
            "review", "review__reviewer", "review__post_review__reviewer", "submitted_by"
        ).order_by("number")
    )
    revision = revisions[-1] if revisions else None
    previous = revisions[-2] if len(revisions) > 1 else None
    fields = revision.fields if revision else {}
    published = (
        revision.publications.filter(state=PublicationState.PUBLISHED).select_related("incident", "incident__service")
        if revision
        else []
    )
    context = {
        "draft": draft,
        "revision": revision,
        "previous": previous,
        # The entry as the status page will read it; labels for known values, the raw value otherwise.
        "entry": {
            "title": fields.get("title", ""),
            "severity": dict(Severity.choices).get(fields.get("severity", ""), fields.get("severity", "")),
            "stage": dict(Stage.choices).get(fields.get("stage", ""), fields.get("stage", "")),
            "description": fields.get("description", ""),
        },
        "published": [
            {"publication": p, "incident": p.incident, "public_url": selectors.public_page_url(p.incident)}
            for p in published
        ],
        # Re-indented for reading; what is approved is the exact bytes, whose hash is shown beside them.
        "requests": [
            {"request": sent, "json": json.dumps(json.loads(sent.body or "{}"), indent=2, ensure_ascii=False)}
            for sent in (revision.requests.select_related("service").order_by("position") if revision else [])
        ],
        "in_review": draft.state in REVIEWABLE_DRAFT_STATES,
        "can_review": access.has_role(request.user, draft.team, access.REVIEWING_ROLES),
        # Only to say why no form is shown: workflow.decide refuses any editor (four eyes over every editor).
        "own_revision": revision is not None and request.user.pk in revision.editors,
        "decisions": ReviewDecision,
        # Break-glass (issue 12 §4): an approver's own revision, when nobody else answers.
        "break_glass_form": BreakGlassForm(
            initial={"revision": getattr(revision, "pk", None), "sha256": getattr(revision, "sha256", "")}
        ),
        "has_totp": mfa.has_totp(request.user),  # type: ignore[arg-type]
        "post_review_form": PostReviewForm(),
    }
    # The public-text lint of the revision as it will be sent; an approver who may decide may accept a warning.
    context["warnings"] = public_text.warnings_by_field(fields, public_text.accepted_by(revision))
    may_accept = context["in_review"] and context["can_review"] and not context["own_revision"]
    context["accept_url"] = reverse("incidents:draft_accept_warning", kwargs={"pk": draft.pk}) if may_accept else ""
    if revision is not None and previous is not None:
        context["revision_diff"] = diff_fields(previous.fields, revision.fields, DRAFT_FIELD_LABELS)
    if revision is not None and draft.kind == DraftKind.UPDATE:
        context["incident_diff"] = diff_fields(_incident_state(draft), revision.fields, DRAFT_FIELD_LABELS)
    if revision is not None and draft.kind in (DraftKind.UPDATE, DraftKind.REMOVE_SERVICE):
        # Scheduled publication (issue 12 §7): the changes still to go out, in the order they will, on every IsDown
        # incident this revision goes to (an update of a grouped incident goes to each open service's).
        context["queues"] = [
            {
                "service": item["request"].service,
                "remote_id": item["request"].target_remote_id,
                "queue": publishing.incident_queue(item["request"].target_remote_id),
            }
            for item in context["requests"]
            if item["request"].target_remote_id
        ]
    return context


@require_http_methods(["GET", "POST"])
def draft_review(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    draft = access.get_scoped_or_404(access.drafts(request.user), pk=pk)
    # Anyone in the team may read the revision; deciding needs the approver role.
    if request.method == "GET":
        context = review_context(request, draft)
        context["form"] = ReviewForm(initial={"revision": getattr(context["revision"], "pk", None)})
        return render(request, "incidents/review.html", context)

    access.require_role(request.user, draft.team, access.REVIEWING_ROLES, action="review a draft")
    form = ReviewForm(request.POST)
    if not form.is_valid():
        context = {**review_context(request, draft), "form": form}
        template = "incidents/review.html#decision" if request.htmx else "incidents/review.html"
        return render(request, template, context, status=422)
    decision = ReviewDecision(form.cleaned_data["decision"])
    try:
        workflow.decide(
            draft_id=draft.pk,
            revision_id=form.cleaned_data["revision"],
            reviewer=request.user,
            decision=decision,
            comment=form.cleaned_data["comment"],
            sha256=form.cleaned_data["sha256"],
            publish_at=form.cleaned_data.get("publish_at"),
        )
    except workflow.MfaRequired as exc:
        return _to_enrolment(request, draft, str(exc))
    except workflow.WorkflowError as exc:
        # The decision panel no longer fits (someone decided first, a newer revision is in review): reload the
        # whole page, with the reason, rather than swap a stale panel.
        messages.error(request, str(exc))
        url = reverse("incidents:draft_review", kwargs={"pk": draft.pk})
        return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    label = f"draft #{draft.pk} ({draft.title or draft.get_kind_display()})"
    publish_at = form.cleaned_data.get("publish_at")
    messages.success(
        request,
        {
            ReviewDecision.APPROVE: f"Approved. It is scheduled for {publish_at:%Y-%m-%d %H:%M %Z}."
            if publish_at
            else "Approved. The publication is queued and will be sent to IsDown shortly.",
            ReviewDecision.REQUEST_CHANGES: f"Changes requested on {label}. The author has been told.",
            ReviewDecision.REJECT: f"Rejected {label}. The author has been told.",
        }[decision],
    )
    if decision == ReviewDecision.APPROVE:
        # The approver follows what they approved out to IsDown.
        url = reverse("incidents:draft_detail", kwargs={"pk": draft.pk})
    else:
        # The draft is the author's again: back to the review queue for the next one.
        url = reverse("incidents:dashboard") + "#panel-reviews"
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


@require_http_methods(["POST"])
def draft_accept_warning(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """An approver accepts one public-text warning of the revision in review (audited with its rule and span)."""
    draft = access.get_scoped_or_404(access.drafts(request.user), pk=pk)
    access.require_role(request.user, draft.team, access.REVIEWING_ROLES, action="accept a warning")
    url = reverse("incidents:draft_review", kwargs={"pk": draft.pk})
    form = AcceptWarningForm(request.POST)
    if not form.is_valid():
        messages.error(request, "That warning could not be read; reload the page and accept it again.")
        return redirect(url)
    try:
        public_text.accept(user=request.user, draft=draft, **form.cleaned_data)
    except public_text.AcceptError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Accepted the {form.cleaned_data['rule']} warning.")
    return redirect(url + "#lint-warnings")


# --- Break-glass (issue 12 §4) ---------------------------------------------------------------------------------
def _to_enrolment(request: HtmxHttpRequest, draft: Draft, reason: str) -> HttpResponse:
    messages.warning(request, reason)
    url = reverse("incidents:mfa_setup") + "?next=" + reverse("incidents:draft_review", kwargs={"pk": draft.pk})
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


@require_POST
def draft_break_glass(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Publish one's own revision without a second approver, with a reason and a fresh authenticator code."""
    draft = access.get_scoped_or_404(access.drafts(request.user), pk=pk)
    access.require_role(request.user, draft.team, access.REVIEWING_ROLES, action="publish without review")
    form = BreakGlassForm(request.POST)
    if not form.is_valid():
        context = {**review_context(request, draft), "form": ReviewForm(), "break_glass_form": form}
        return render(request, "incidents/review.html", context, status=422)
    try:
        workflow.break_glass(
            draft_id=draft.pk,
            revision_id=form.cleaned_data["revision"],
            user=request.user,
            sha256=form.cleaned_data["sha256"],
            reason=form.cleaned_data["reason"],
            totp_code=form.cleaned_data["code"],
        )
    except workflow.MfaRequired as exc:
        return _to_enrolment(request, draft, str(exc))
    except workflow.WorkflowError as exc:
        form.add_error(None, str(exc))
        context = {**review_context(request, draft), "form": ReviewForm(), "break_glass_form": form}
        return render(request, "incidents/review.html", context, status=422)
    messages.warning(
        request,
        "Published without review (break-glass). Every other approver has been emailed; another approver must "
        "review it after the fact.",
    )
    return redirect("incidents:draft_detail", pk=draft.pk)


@require_POST
def draft_post_review(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Another approver reviews a break-glass publication after the fact."""
    draft = access.get_scoped_or_404(access.drafts(request.user), pk=pk)
    access.require_role(request.user, draft.team, access.REVIEWING_ROLES, action="review a break-glass publication")
    form = PostReviewForm(request.POST)
    review = (
        Review.objects.filter(revision__draft=draft, decision=ReviewDecision.BREAK_GLASS, post_review__isnull=True)
        .order_by("pk")
        .first()
    )
    url = reverse("incidents:draft_review", kwargs={"pk": draft.pk})
    if review is None:
        messages.error(request, "This draft has no break-glass publication waiting for review.")
        return redirect(url)
    if not form.is_valid():
        context = {**review_context(request, draft), "form": ReviewForm(), "post_review_form": form}
        return render(request, "incidents/review.html", context, status=422)
    try:
        workflow.post_review(review_id=review.pk, user=request.user, comment=form.cleaned_data["comment"])
    except workflow.WorkflowError as exc:
        messages.error(request, str(exc))
        return redirect(url)
    messages.success(request, "Reviewed after the fact: it is off the break-glass queue.")
    return redirect(url)
