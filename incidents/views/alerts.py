"""Drafts from alerts: the team's webhook (public, answers to its bearer token, JSON in and out) and the page where
the team sees it and its approvers rotate the token and change the label mappings. The work is in alerts.py."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.http import HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST

from .. import access, alerts
from ..forms import AlertRouteForm
from ..http import HtmxHttpRequest
from ..models import AlertRoute, AlertWebhook, Team

PAGE = "incidents/alert_settings.html"


def _error(status: int, message: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"error": message}, status=status)
    for name, value in headers.items():
        response[name] = value
    return response


@csrf_exempt  # authenticated by its bearer token, never by a session: nothing here reads a cookie
@login_not_required
@require_POST
def alerts_webhook(request: HtmxHttpRequest, team_id: int) -> HttpResponse:
    team = Team.objects.filter(pk=team_id).first()
    if team is None:
        return _error(401, "The token is missing or wrong.", **{"WWW-Authenticate": "Bearer"})
    webhook = AlertWebhook.objects.filter(team=team).first()
    authorized = alerts.token_matches(webhook, alerts.bearer_token(request.headers.get("Authorization", "")))
    bucket = alerts.ACCEPTED if authorized else alerts.REFUSED
    count = alerts.count_request(team=team, bucket=bucket)
    if count.over:
        if count.first_over:
            alerts.record_rate_limited(team=team, bucket=bucket, retry_after=count.retry_after)
        return _error(
            429,
            f"Too many requests: at most {settings.ALERTS_RATE_LIMIT} per {settings.ALERTS_RATE_WINDOW} s.",
            **{"Retry-After": str(count.retry_after)},
        )
    if not authorized:
        alerts.record_refusal(team=team, reason="the bearer token is missing or wrong", status=401)
        return _error(401, "The token is missing or wrong.", **{"WWW-Authenticate": "Bearer"})
    limit = settings.ALERTS_MAX_BODY_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    body = request.read(limit + 1) if declared <= limit else b""
    if declared > limit or len(body) > limit:
        alerts.record_refusal(team=team, reason=f"a body over {limit} bytes", status=413)
        return _error(413, f"The body is larger than {limit} bytes.")
    try:
        parsed = alerts.parse(body)
    except alerts.BadPayload as exc:
        alerts.record_refusal(team=team, reason=str(exc), status=400)
        return _error(400, str(exc))
    outcomes = alerts.receive(team=team, alerts=parsed)
    for outcome in outcomes:
        if outcome.get("draft"):
            outcome["url"] = request.build_absolute_uri(reverse("incidents:draft_detail", args=[outcome["draft"]]))
    return JsonResponse({"alerts": outcomes})


def _team(request: HtmxHttpRequest, team_id: int) -> Team:
    return access.get_scoped_or_404(access.teams(request.user), pk=team_id)


def _page(request: HtmxHttpRequest, team: Team, *, form: AlertRouteForm | None = None, **extra: Any) -> dict:
    can_manage = access.has_role(request.user, team, access.REVIEWING_ROLES)
    services = access.services(request.user).filter(team=team)
    return {
        "team": team,
        "webhook": AlertWebhook.objects.filter(team=team).select_related("rotated_by", "system_user").first(),
        "routes": AlertRoute.objects.filter(team=team).select_related("service"),
        "webhook_url": request.build_absolute_uri(reverse("incidents:alerts_webhook", args=[team.pk])),
        "can_manage": can_manage,
        "form": form or AlertRouteForm(services=services),
        "recent": team.alert_deliveries.select_related("draft", "service")[:20],
        **extra,
    }


@require_http_methods(["GET", "POST"])
def alert_settings(request: HtmxHttpRequest, team_id: int) -> HttpResponse:
    """The team's webhook and mappings; a POST adds a mapping (approvers)."""
    team = _team(request, team_id)
    if request.method == "POST":
        access.require_role(request.user, team, access.REVIEWING_ROLES, action="change the alert mappings")
        form = AlertRouteForm(request.POST, services=access.services(request.user).filter(team=team))
        if form.is_valid():
            try:
                route = alerts.add_route(team=team, user=request.user, **form.cleaned_data)  # type: ignore[arg-type]
            except alerts.AlertError as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, f"Alerts with {route} now draft for {route.service.name}.")
                return redirect("incidents:alert_settings", team_id=team.pk)
        return render(request, PAGE, _page(request, team, form=form), status=422)
    return render(request, PAGE, _page(request, team))


@require_POST
def alert_token_rotate(request: HtmxHttpRequest, team_id: int) -> HttpResponse:
    """Approvers: a new token, shown on this one answer only (the page is never cached: no-store)."""
    team = _team(request, team_id)
    token = alerts.rotate_token(team=team, user=request.user)  # type: ignore[arg-type]
    return render(request, PAGE, _page(request, team, new_token=token))


@require_POST
def alert_route_delete(request: HtmxHttpRequest, team_id: int, pk: int) -> HttpResponse:
    team = _team(request, team_id)
    access.require_role(request.user, team, access.REVIEWING_ROLES, action="change the alert mappings")
    try:
        alerts.remove_route(team=team, user=request.user, route_id=pk)  # type: ignore[arg-type]
    except alerts.AlertError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "The mapping is removed.")
    return redirect("incidents:alert_settings", team_id=team.pk)
