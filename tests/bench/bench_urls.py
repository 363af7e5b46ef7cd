"""The app's URLs plus ``/bench/bare/``: a template view on the same stack (middleware, sessions, CSP) that reads
nothing, the baseline of the pages' throughput. Only the bench serves it."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.template import engines
from django.urls import include, path

BARE = engines["django"].from_string("<!doctype html><title>Bare</title><p>Hello, {{ request.user.get_username }}.</p>")


def bare(request: HttpRequest) -> HttpResponse:
    return HttpResponse(BARE.render({"request": request}, request))


urlpatterns = [path("bench/bare/", bare), path("", include("isdown_admin.urls"))]
