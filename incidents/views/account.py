"""The account page: the signed-in user's preferences (the time zone times are shown and typed in)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from .. import access, preferences
from ..forms import TimeZoneForm
from ..http import HtmxHttpRequest


@require_http_methods(["GET", "POST"])
def account(request: HtmxHttpRequest) -> HttpResponse:
    zones = preferences.time_zone_names()
    if request.method == "POST":
        form = TimeZoneForm(request.POST, zones=zones, site_zone=settings.TIME_ZONE)
        if form.is_valid():
            chosen = form.cleaned_data["time_zone"]
            preferences.set_time_zone(user=request.user, time_zone=chosen)  # type: ignore[arg-type]
            messages.success(request, f"Times are now shown in {chosen or settings.TIME_ZONE}.")
            return redirect("incidents:account")
        return render(
            request, "incidents/account.html", {"form": form, "teams": access.teams(request.user)}, status=422
        )
    current = preferences.time_zone_of(request.user)
    initial = {"time_zone": "" if current == settings.TIME_ZONE else current}
    return render(
        request,
        "incidents/account.html",
        {
            "form": TimeZoneForm(initial=initial, zones=zones, site_zone=settings.TIME_ZONE),
            "teams": access.teams(request.user),
        },
    )
