"""Mounted at /sandbox/ when SANDBOX_ENABLED (see isdown_admin/urls.py)."""

from __future__ import annotations

from django.urls import path, re_path

from . import views

app_name = "sandbox"

urlpatterns = [
    path("", views.control, name="control"),
    path("status/<int:service_id>/", views.status_page, name="status"),
    path("api/v2/incidents", views.api_incidents, name="api_incidents"),
    path("api/v2/incidents/<str:incident_id>", views.api_incident, name="api_incident"),
    # Anything else under api/, newlines included: IsDown's JSON 404, never Django's HTML page.
    re_path(r"^api/(?P<rest>[\s\S]*)\Z", views.api_unknown, name="api_unknown"),
]
