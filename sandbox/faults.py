"""Fault injection: queue faults for the next N API requests, take one per request, and act it out.

Kinds, and whether the request is processed (the incident created or changed):
- ``status``  answer 4xx/5xx at once, NOT processed. 429 carries ``Retry-After`` (1 s unless given); 502/503/504
              answer an HTML page like a proxy would; 500 and 4xx answer IsDown's JSON error format.
- ``latency`` sleep, then process and answer normally.
- ``drop``    close the connection without any answer, NOT processed: it models a request that died on the
              way (the client cannot tell that from a crash after processing, and that is the point).
- ``hang``    process and COMMIT, then sleep ``hang_seconds`` before answering: the change is applied but the
              answer arrives after the client gave up.
"""

from __future__ import annotations

import logging
import math
import socket
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from incidents import audit

from .models import FaultKind, SandboxFault

logger = logging.getLogger(__name__)

DEFAULT_HANG_SECONDS = 30.0
DEFAULT_RETRY_AFTER_429 = 1
HTML_STATUSES = {502, 503, 504}
REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


# The bounds of what a fault may ask for. The control page and the command both go through add_fault (the admin
# only reads faults), so these are the only limits.
COUNT_MAX = 1000
STATUS_MIN, STATUS_MAX = 400, 599  # as the table's CHECK constraint says too
RETRY_AFTER_MAX = 86_400  # a day
LATENCY_MS_MAX = 600_000  # ten minutes
HANG_SECONDS_MAX = 600.0
METHODS = ("GET", "POST", "PATCH", "DELETE")
# Who queued a fault when the caller names no one (a test, the chaos soak): the audit log says so.
SYSTEM_ACTOR = "system:sandbox"


class FaultError(ValueError):
    """A fault that cannot be set as asked (the message says why; ``field`` names the argument at fault)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class TakenFault:
    """A fault as taken for one request: a detached copy, so the row can be gone already."""

    kind: str
    label: str
    status: int | None = None
    retry_after: int | None = None
    latency_ms: int | None = None
    hang_seconds: float | None = None


def _whole(value: object, name: str, field: str, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FaultError(f"{name} must be a whole number from {low} to {high}", field)
    return value


def add_fault(
    *,
    kind: str,
    count: int = 1,
    method: str = "",
    status: int | None = None,
    retry_after: int | None = None,
    latency_ms: int | None = None,
    hang_seconds: float | None = None,
    actor: Any = None,
    actor_label: str | None = None,
) -> SandboxFault:
    """Queue a fault for the next ``count`` requests (of ``method``, or any), and audit who queued it, in one
    transaction. The one place that decides what a fault may be: raises FaultError if incoherent or out of
    bounds. Arguments that do not belong to ``kind`` are ignored, except ``retry_after`` (a status fault's)."""
    if kind not in FaultKind.values:
        raise FaultError(f"unknown fault kind {kind!r}", "kind")
    count = _whole(count, "count", "count", low=1, high=COUNT_MAX)
    method = (method or "").strip().upper()
    if method and method not in METHODS:
        raise FaultError("method must be GET, POST, PATCH or DELETE (or empty for any)", "method")
    if kind == FaultKind.STATUS:
        if status is None:
            raise FaultError(f"a status fault needs a status between {STATUS_MIN} and {STATUS_MAX}", "status")
        status = _whole(status, "status", "status", low=STATUS_MIN, high=STATUS_MAX)
        if status == 429 and retry_after is None:
            retry_after = DEFAULT_RETRY_AFTER_429
    elif retry_after is not None:
        raise FaultError("--retry-after only goes with a status fault", "retry_after")
    if retry_after is not None:
        retry_after = _whole(retry_after, "retry-after", "retry_after", low=0, high=RETRY_AFTER_MAX)
    if kind == FaultKind.LATENCY:
        if latency_ms is None:
            raise FaultError("a latency fault needs a latency in ms (0 or more)", "latency_ms")
        latency_ms = _whole(latency_ms, "latency (ms)", "latency_ms", low=0, high=LATENCY_MS_MAX)
    if kind == FaultKind.HANG:
        hang_seconds = DEFAULT_HANG_SECONDS if hang_seconds is None else hang_seconds
        if not isinstance(hang_seconds, (int, float)) or not math.isfinite(hang_seconds) or hang_seconds <= 0:
            raise FaultError("hang seconds must be positive", "hang_seconds")
        if hang_seconds > HANG_SECONDS_MAX:
            raise FaultError(f"hang seconds must be at most {HANG_SECONDS_MAX:g}", "hang_seconds")
        hang_seconds = float(hang_seconds)
    with transaction.atomic():
        fault = SandboxFault.objects.create(
            kind=kind,
            remaining=count,
            method=method,
            status=status if kind == FaultKind.STATUS else None,
            retry_after=retry_after,
            latency_ms=latency_ms if kind == FaultKind.LATENCY else None,
            hang_seconds=hang_seconds if kind == FaultKind.HANG else None,
        )
        # Team-less: a fault stalls every team's publishing, so only staff read it in the audit log.
        audit.record(
            "sandbox.fault_added",
            actor=actor,
            actor_label=None if actor is not None else (actor_label or SYSTEM_ACTOR),
            target=fault,
            target_label=str(fault),
            summary=f"Queued a sandbox fault: {fault}",
            context={"fault": {"kind": kind, "count": count, "method": method, "label": fault.label}},
        )
    return fault


def clear_faults(*, actor: Any = None, actor_label: str | None = None) -> int:
    """Remove every queued fault and audit it, in one transaction; returns how many there were."""
    with transaction.atomic():
        deleted, _ = SandboxFault.objects.all().delete()
        audit.record(
            "sandbox.faults_cleared",
            actor=actor,
            actor_label=None if actor is not None else (actor_label or SYSTEM_ACTOR),
            target_type="sandboxfault",
            target_label="Sandbox faults",
            summary=f"Cleared {deleted} sandbox fault(s)",
            context={"cleared": deleted},
        )
    return deleted


def take(method: str) -> TakenFault | None:
    """Consume one use of the oldest fault matching ``method``. Race-safe: the row is locked, so N concurrent
    requests consume exactly N uses between them, never the same use twice. Commits before returning, so a
    fault is spent even if the request then dies (as a real failure would be)."""
    with transaction.atomic():
        fault = (
            SandboxFault.objects.select_for_update()
            .filter(Q(method="") | Q(method=method.upper()), remaining__gt=0)
            .order_by("id")
            .first()
        )
        if fault is None:
            return None
        taken = TakenFault(
            kind=fault.kind,
            label=fault.label,
            status=fault.status,
            retry_after=fault.retry_after,
            latency_ms=fault.latency_ms,
            hang_seconds=fault.hang_seconds,
        )
        if fault.remaining <= 1:
            fault.delete()
        else:
            fault.remaining -= 1
            fault.save(update_fields=["remaining"])
    return taken


def status_response(fault: TakenFault) -> HttpResponse:
    """The answer of a status fault. 502/503/504 look like a proxy's HTML page; the rest is IsDown's format."""
    status = fault.status or 500
    reason = REASONS.get(status, "Error")
    response: HttpResponse
    if status in HTML_STATUSES:
        html = (
            f"<html><head><title>{status} {reason}</title></head>"
            f"<body><center><h1>{status} {reason}</h1></center><hr><center>nginx</center></body></html>\n"
        )
        response = HttpResponse(html, status=status, content_type="text/html; charset=utf-8")
    else:
        detail = f"{reason} (sandbox fault)"
        body = {"errors": [{"status": status, "title": reason, "detail": detail}]}
        response = JsonResponse(body, status=status)
    if fault.retry_after is not None:
        response["Retry-After"] = str(fault.retry_after)
    return response


def _client_socket(request: HttpRequest) -> socket.socket | None:
    """The client's socket under gunicorn (it hands it over) or Django's dev/live server (found by walking
    the wrapped input stream). None elsewhere."""
    sock = request.META.get("gunicorn.socket")
    if isinstance(sock, socket.socket):
        return sock
    stream: object = request.META.get("wsgi.input")
    for _ in range(8):
        if isinstance(stream, socket.socket):
            return stream
        # Django's LimitedStream keeps only bound methods of what it wraps; BufferedReader has .raw,
        # SocketIO has ._sock.
        read = getattr(stream, "_read", None)
        following = getattr(read, "__self__", None) or getattr(stream, "raw", None) or getattr(stream, "_sock", None)
        if following is None:
            return None
        stream = following
    return None


def _die_midway():
    # Only reached on a server whose socket we could not find: the headers and a first byte go out, then the
    # exception makes the server close the connection short of the promised Content-Length.
    yield b"{"
    raise ConnectionAbortedError("sandbox fault: connection dropped")


def drop_connection(request: HttpRequest) -> HttpResponseBase:
    """Make the client see the connection close with no answer (httpx: RemoteProtocolError "Server disconnected
    without sending a response"). Shuts the socket down when the server exposes it; otherwise falls back to a
    response cut short (httpx: RemoteProtocolError while reading the body). Either way the client cannot know
    whether the request was processed; here it was not."""
    sock = _client_socket(request)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            logger.info("sandbox drop: socket already closed")
        # Whatever we return now cannot be delivered; the server's write fails quietly (broken pipe).
        return HttpResponse(status=200)
    response = StreamingHttpResponse(_die_midway(), content_type="application/json")
    response["Content-Length"] = "1000"
    return response
