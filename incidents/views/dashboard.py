"""The dashboard: what needs me now."""

from __future__ import annotations

from django.shortcuts import render
from django.views.decorators.http import require_GET


@require_GET
def dashboard(request):
    return render(request, "incidents/dashboard.html", {})
