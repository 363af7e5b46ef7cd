"""A service and its incidents, scoped to the user's teams."""

from __future__ import annotations

from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from .. import access
from ..http import HtmxHttpRequest


@require_GET
def service_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    service = access.get_scoped_or_404(access.services(request.user), pk=pk)
    incidents = access.incidents(request.user).filter(service=service)[:50]
    return render(
        request,
        "incidents/service_detail.html",
        {"service": service, "incidents": incidents, "role": access.role_in(request.user, service.team)},
    )
