from __future__ import annotations

from django.contrib import admin

from .models import SandboxFault, SandboxIncident, SandboxRequest, SandboxService


@admin.register(SandboxService)
class SandboxServiceAdmin(admin.ModelAdmin):
    list_display = ["service_id", "name", "urlname"]


@admin.register(SandboxIncident)
class SandboxIncidentAdmin(admin.ModelAdmin):
    list_display = ["id", "title", "service", "status", "resolved", "created_at"]
    list_filter = ["resolved", "status", "service"]


@admin.register(SandboxFault)
class SandboxFaultAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "status", "latency_ms", "hang_seconds", "remaining", "method", "created_at"]


@admin.register(SandboxRequest)
class SandboxRequestAdmin(admin.ModelAdmin):
    list_display = ["id", "created_at", "method", "path", "status", "fault"]
    list_filter = ["method", "status"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
