"""Sandbox views: the emulated IsDown API, the superusers' control page, and the public status page.

The API views take no session and no CSRF token: the bearer key is the only credential, as on IsDown.
Every API request, whatever its fate, is written to the request log (never its headers).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods

from . import api, faults
from .forms import FaultForm
from .models import FaultKind, SandboxFault, SandboxIncident, SandboxRequest, SandboxService

BODY_LOG_LIMIT = 65_536
RECENT_REQUESTS = 50
RECENT_RESOLVED = 10

Handler = Callable[..., HttpResponseBase]


def _scrub(text: str) -> str:
    key = settings.SANDBOX_API_KEY
    return text.replace(key, "[redacted]") if key else text


def _log(request: HttpRequest, body: bytes | None, status: int | None, fault: faults.TakenFault | None) -> None:
    text = "(body too large)" if body is None else body[:BODY_LOG_LIMIT].decode("utf-8", errors="replace")
    SandboxRequest.objects.create(
        method=(request.method or "")[:10],
        path=_scrub(request.get_full_path())[:2000],
        # NUL cannot be stored in PostgreSQL text; the log shows it escaped.
        body=_scrub(text).replace("\x00", "\\u0000"),
        status=status,
        fault=fault.label if fault else "",
    )


def _authenticated(request: HttpRequest) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    expected = settings.SANDBOX_API_KEY
    # Compared as bytes: compare_digest refuses str with non-ASCII characters, and a header can carry any byte
    # (WSGI hands them over as latin-1 text, so every character encodes).
    given = token.strip().encode("utf-8", errors="surrogatepass")
    return scheme.lower() == "bearer" and bool(expected) and hmac.compare_digest(given, expected.encode())


def sandbox_api(view: Handler) -> Handler:
    """Wrap an API handler ``view(request, payload_bytes, **kwargs)`` in what every sandbox endpoint does:
    take a queued fault, act it out around the handler, check the key, turn ApiError into IsDown's error
    format, and log the request. A hang is logged before the sleep so the log is complete when the
    client gives up."""

    @wraps(view)
    @csrf_exempt
    @login_not_required
    def wrapped(request: HttpRequest, **kwargs: Any) -> HttpResponseBase:
        try:
            body: bytes | None = request.body
        except RequestDataTooBig:
            body = None
        fault = faults.take(request.method or "GET")
        if fault and fault.kind == FaultKind.STATUS:
            response: HttpResponseBase = faults.status_response(fault)
            _log(request, body, response.status_code, fault)
            return response
        if fault and fault.kind == FaultKind.DROP:
            _log(request, body, None, fault)
            return faults.drop_connection(request)
        if fault and fault.kind == FaultKind.LATENCY:
            time.sleep((fault.latency_ms or 0) / 1000)  # the fault itself: a slow server
        try:
            if not _authenticated(request):
                raise api.ApiError("Invalid or missing API key", status=401)
            if body is None:
                raise api.ApiError("Request body is too large")
            response = view(request, body, **kwargs)
        except api.ApiError as error:
            response = error.response()
            if error.status == 401:
                response["WWW-Authenticate"] = "Bearer"
        _log(request, body, response.status_code, fault)
        if fault and fault.kind == FaultKind.HANG:
            time.sleep(fault.hang_seconds or faults.DEFAULT_HANG_SECONDS)  # applied and committed; answer late
        return response

    return wrapped


def _method_not_allowed(allowed: str) -> api.ApiError:
    return api.ApiError(f"Method not allowed; use {allowed}", status=405)


@sandbox_api
def api_incidents(request: HttpRequest, body: bytes) -> HttpResponse:
    """/api/v2/incidents: POST creates, GET lists (newest first, optionally one service, a page at a time)."""
    if request.method == "POST":
        return api.document(api.create(api.parse_object(body)), status=201)
    if request.method == "GET":
        page = api.list_for(request.GET.get("service_id"), page=request.GET.get("page"))
        next_url = None
        if page.next_number is not None:
            query = request.GET.copy()
            query["page"] = str(page.next_number)
            next_url = request.build_absolute_uri(f"{request.path}?{query.urlencode()}")
        return api.collection(page, next_url=next_url)
    raise _method_not_allowed("GET, POST")


@sandbox_api
def api_incident(request: HttpRequest, body: bytes, incident_id: str) -> HttpResponse:
    """/api/v2/incidents/<id>: GET, PATCH, DELETE (204, then 404)."""
    if request.method == "GET":
        return api.document(api.find(incident_id))
    if request.method == "PATCH":
        return api.document(api.patch(incident_id, api.parse_object(body)))
    if request.method == "DELETE":
        api.delete(incident_id)
        return HttpResponse(status=204)
    raise _method_not_allowed("GET, PATCH, DELETE")


@sandbox_api
def api_unknown(request: HttpRequest, body: bytes, rest: str) -> HttpResponse:
    """Anything else under /api/: IsDown's 404, not Django's HTML page."""
    raise api.ApiError("Not found", status=404)


# --- Pages ------------------------------------------------------------------------------------------------
def _require_superuser(request: HttpRequest) -> None:
    # LoginRequiredMiddleware has already sent anonymous users to the login page. Superusers only: the request log
    # holds every team's bodies, and a fault stalls every team's publishing.
    if not request.user.is_superuser:
        raise PermissionDenied("The sandbox control page is for superusers only: it shows every team's requests.")


@require_http_methods(["GET", "POST"])
def control(request: HttpRequest) -> HttpResponse:
    """Superusers only: queue and clear faults (both audited), read the request log, find the status pages."""
    _require_superuser(request)
    form = FaultForm()
    if request.method == "POST":
        if "clear" in request.POST:
            cleared = faults.clear_faults(actor=request.user)
            messages.success(request, f"Cleared {cleared} fault(s).")
            return redirect("sandbox:control")
        form = FaultForm(request.POST)
        if form.is_valid() and (fault := form.save(actor=request.user)) is not None:
            messages.success(request, f"Queued: {fault}.")
            return redirect("sandbox:control")
    context = {
        "form": form,
        "faults": SandboxFault.objects.all(),
        "recent_requests": SandboxRequest.objects.all()[:RECENT_REQUESTS],
        "services": SandboxService.objects.all(),
        "api_url": request.build_absolute_uri("/sandbox/api/v2/incidents"),
    }
    return render(request, "sandbox/control.html", context, status=422 if form.errors else 200)


@require_GET
@login_not_required
def status_page(request: HttpRequest, service_id: int) -> HttpResponse:
    """Public, as a real status page: open incidents, then the most recent resolved ones, with timelines."""
    service = get_object_or_404(SandboxService, service_id=service_id)
    incidents = SandboxIncident.objects.filter(service=service).order_by("-created_at", "-id")
    context = {
        "service": service,
        "open_incidents": list(incidents.filter(resolved=False)),
        "resolved_incidents": list(incidents.filter(resolved=True)[:RECENT_RESOLVED]),
    }
    return render(request, "sandbox/status.html", context)
