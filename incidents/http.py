"""The request our views see: django-htmx's middleware adds ``request.htmx`` (false-y unless htmx sent it).

Annotating views with ``HtmxHttpRequest`` (the pattern from django-htmx's documentation) lets the type checker
know the attribute exists; at runtime it is the same HttpRequest.
"""

from __future__ import annotations

from django.http import HttpRequest
from django_htmx.middleware import HtmxDetails


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails
