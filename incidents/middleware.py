"""Request-level policies: a request id of our own, the client's real address, ip / user agent for the audit
log's context, the idle timeout of signed-in sessions, no caching of signed-in pages, and the user's time zone."""

from __future__ import annotations

import re
import threading
import time
import uuid
import zoneinfo
from collections.abc import Callable
from urllib.parse import urlencode, urlsplit

from django.conf import settings
from django.contrib import auth, messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django_htmx.http import HttpResponseClientRedirect
from ipware.ip import get_client_ip

from . import audit, preferences

# Only what a request id is made of is kept of the client's, never more than 64 characters.
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._:-]")
CLIENT_REQUEST_ID_MAX = 64
# Session keys: when the session was first seen signed in, and its last activity (epoch seconds).
SESSION_STARTED_KEY = "_session_started"
SESSION_ACTIVITY_KEY = "_last_activity"
# Set on a request whose session this middleware ended ("idle" or "age"): the logout audit event says why.
SESSION_END_REASON = "session_end_reason"
# Activity is written to the session at most this often (a write per request would be a write per click).
ACTIVITY_RESOLUTION_SECONDS = 60

_local = threading.local()


def client_ip(request: HttpRequest) -> str:
    """The address of the client, seen through ``settings.PROXY_COUNT`` reverse proxies.

    Axes (``AXES_CLIENT_IP_CALLABLE``) and the audit log both use this. With no proxies, ``X-Forwarded-For`` is
    anyone's to write and is never read. Behind N proxies, each appends the address it was called from, so the
    client is the N-th address from the right (everything left of it came from the client); django-ipware does
    the parsing. A request with fewer addresses than that did not come through the proxies: its peer is the client.
    """
    remote_addr = request.META.get("REMOTE_ADDR", "") or ""
    proxies = int(getattr(settings, "PROXY_COUNT", 0) or 0)
    if proxies <= 0:
        return remote_addr
    # ipware counts the proxies listed in the header; the last proxy is the peer (REMOTE_ADDR), not listed.
    ip, _routable = get_client_ip(
        request,
        proxy_order="left-most",
        proxy_count=proxies - 1,
        request_header_order=["HTTP_X_FORWARDED_FOR"],
        strict=False,
    )
    return ip or remote_addr


def current_request() -> HttpRequest | None:
    """The request this thread is serving, if any (for audit-only signal receivers that need the actor)."""
    return getattr(_local, "request", None)


def sanitised_client_request_id(raw: str) -> str:
    return _UNSAFE_ID_CHARS.sub("", raw[: CLIENT_REQUEST_ID_MAX * 4])[:CLIENT_REQUEST_ID_MAX]


class RequestIdMiddleware:
    """Every request gets an id of ours (a client's ``X-Request-Id`` is never trusted as ours: it would let anyone
    choose what the audit log records); the client's, sanitised, is kept under its own key."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request_id = uuid.uuid4().hex
        request.request_id = request_id
        context = {
            "ip": client_ip(request),
            "user_agent": request.headers.get("User-Agent", "")[:300],
            "request_id": request_id,
        }
        client_request_id = sanitised_client_request_id(request.headers.get("X-Request-Id", ""))
        if client_request_id:
            context["client_request_id"] = client_request_id
        audit.set_request_context(context)
        _local.request = request
        try:
            response = self.get_response(request)
        finally:
            audit.set_request_context(None)
            _local.request = None
        response["X-Request-Id"] = request_id
        return response


def is_background_request(request: HttpRequest) -> bool:
    """A read that htmx makes to refresh a fragment (the publication status polls every 2 s). It is not a person
    at the keyboard, so it does not keep a session alive. Boosted links and history restores are navigation."""
    htmx = getattr(request, "htmx", None)
    return bool(htmx and request.method in ("GET", "HEAD") and not htmx.boosted and not htmx.history_restore_request)


class SessionIdleTimeoutMiddleware:
    """Signs a session out after ``SESSION_IDLE_TIMEOUT`` seconds without activity, or ``SESSION_COOKIE_AGE``
    seconds after sign-in, whichever comes first; back to the login page with a message.

    Background polling is not activity. Goes after the auth and message middleware (it needs both)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            response = self.get_response(request)
            if getattr(request, "user", None) is not None and request.user.is_authenticated:
                # Signed in by this request: both clocks start now (login() may keep an older session's data).
                request.session[SESSION_STARTED_KEY] = request.session[SESSION_ACTIVITY_KEY] = time.time()
            return response
        now = time.time()
        session = request.session
        started = session.get(SESSION_STARTED_KEY)
        last = session.get(SESSION_ACTIVITY_KEY)
        idle_limit = settings.SESSION_IDLE_TIMEOUT
        if isinstance(last, (int, float)) and now - last > idle_limit:
            minutes = max(1, round(idle_limit / 60))
            return self._expire(request, f"Your session ended after {minutes} minutes without activity.", "idle")
        if isinstance(started, (int, float)) and now - started > settings.SESSION_COOKIE_AGE:
            hours = max(1, round(settings.SESSION_COOKIE_AGE / 3600))
            return self._expire(request, f"Your session ended after {hours} hours.", "age")
        if not isinstance(started, (int, float)):
            session[SESSION_STARTED_KEY] = now
        resolution = min(ACTIVITY_RESOLUTION_SECONDS, idle_limit / 10)
        if not isinstance(last, (int, float)) or (not is_background_request(request) and now - last >= resolution):
            # Written at most once a minute, so the timeout may come up to a minute early, never late.
            session[SESSION_ACTIVITY_KEY] = now
        return self.get_response(request)

    def _expire(self, request: HttpRequest, message: str, reason: str) -> HttpResponse:
        setattr(request, SESSION_END_REASON, reason)
        auth.logout(request)
        messages.info(request, f"{message} Please sign in again.")
        login = reverse(settings.LOGIN_URL)
        # Back to where they were after signing in (for a fragment, the page it sits in); the login view checks it.
        if getattr(request, "htmx", None):
            current = urlsplit(request.headers.get("HX-Current-URL", ""))
            back = current.path + (f"?{current.query}" if current.query else "")
        else:
            back = request.get_full_path() if request.method in ("GET", "HEAD") else ""
        target = f"{login}?{urlencode({'next': back})}" if back.startswith("/") else login
        if getattr(request, "htmx", None):
            return HttpResponseClientRedirect(target)
        return HttpResponseRedirect(target)


class NoStoreForSignedInMiddleware:
    """What a signed-in user sees is theirs alone: no browser or proxy may keep a copy (``Cache-Control:
    no-store``), so the back button after sign-out, or a shared machine, shows nothing."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        user = getattr(request, "user", None)
        signed_in = bool(user is not None and user.is_authenticated)
        if signed_in or getattr(request, SESSION_END_REASON, None):
            add_never_cache_headers(response)
        return response


class TimeZoneMiddleware:
    """Shows and reads times in the signed-in user's zone (preferences.py), the site's otherwise."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        name = preferences.time_zone_of(request.user)
        if name == settings.TIME_ZONE:
            timezone.deactivate()
        else:
            timezone.activate(zoneinfo.ZoneInfo(name))
        try:
            return self.get_response(request)
        finally:
            timezone.deactivate()
