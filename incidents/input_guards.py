"""Refuse, with a clear 400, a request declaring a text encoding other than UTF-8 — before Django reads it.

Why at the WSGI entry point (``isdown_admin/wsgi.py`` wraps the application), not in a view or a Django
middleware: Django decodes the query string and form bodies in the charset the Content-Type declares, and with a
codec that is not a text encoding (``charset=rot13``) and a query string it fails while *building the request
object*, before any middleware runs: the server answers a bare 500. With other charsets (``utf-16``) the failure
moves to wherever ``request.GET``/``request.POST`` is first read (the CSRF middleware, django-axes, any view),
and Django itself refuses only urlencoded bodies that are not spelled exactly ``utf-8``. One check in front of
Django covers every view (ours, the admin's, the login page, the sandbox's API) the same way. Our pages and the
IsDown client only ever send UTF-8, and HTML forms declare no charset at all, so nothing legitimate is refused.

A Content-Type Django cannot parse at all (an RFC 2231 parameter in an unknown charset) fails the same way, at
the same place, and is refused here too. The header is parsed by Django's own function, so the guard sees exactly
the charset Django would use. Needs no Django set-up: it runs before Django has seen the request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.utils.http import parse_header_parameters

ACCEPTED_CHARSETS = frozenset({"utf-8"})
SHOWN_CHARSET_MAX = 40

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def why_unreadable(environ: dict[str, Any]) -> str | None:
    """Why Django could not read this request's text (a charset other than UTF-8, or a Content-Type that cannot be
    parsed), or None if it can."""
    try:
        _content_type, parameters = parse_header_parameters(str(environ.get("CONTENT_TYPE") or ""))
    except Exception:  # whatever fails here would fail in Django's request constructor: a 500 without this guard
        return "its Content-Type cannot be parsed"
    charset = parameters.get("charset")
    if charset is None or charset.strip().lower() in ACCEPTED_CHARSETS:
        return None
    shown = charset[:SHOWN_CHARSET_MAX] + ("…" if len(charset) > SHOWN_CHARSET_MAX else "")
    return f"it declared charset={shown!r}"


def refuse_foreign_charsets(application: WSGIApp) -> WSGIApp:
    """Wrap a WSGI application: a request declaring any charset but UTF-8 is answered 400 (plain text) and never
    reaches it."""

    def guarded(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        reason = why_unreadable(environ)
        if reason is None:
            return application(environ, start_response)
        body = f"400 Bad Request: this request cannot be read ({reason}). Send text as UTF-8.\n".encode()
        start_response(
            "400 Bad Request",
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]

    return guarded
