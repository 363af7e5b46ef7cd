"""The sandbox's tables in Django's admin: superusers only, as the control page (the request log holds every
team's bodies). Faults are read-only here: they are queued and cleared on the control page or with
``manage.py sandbox_fault``, both audited."""

from __future__ import annotations

from django.contrib import admin

from .models import SandboxFault, SandboxIncident, SandboxRequest, SandboxService


class SuperuserOnlyAdmin(admin.ModelAdmin):
    # A selection that is not an id is refused by the site for every admin (incidents/admin_site.py).

    def has_module_permission(self, request) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_add_permission(self, request) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_change_permission(self, request, obj=None) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_delete_permission(self, request, obj=None) -> bool:
        return request.user.is_active and request.user.is_superuser


@admin.register(SandboxService)
class SandboxServiceAdmin(SuperuserOnlyAdmin):
    list_display = ["service_id", "name", "urlname"]


@admin.register(SandboxIncident)
class SandboxIncidentAdmin(SuperuserOnlyAdmin):
    list_display = ["id", "title", "service", "status", "resolved", "created_at"]
    list_filter = ["resolved", "status", "service"]


@admin.register(SandboxFault)
class SandboxFaultAdmin(SuperuserOnlyAdmin):
    list_display = ["id", "kind", "status", "latency_ms", "hang_seconds", "remaining", "method", "created_at"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(SandboxRequest)
class SandboxRequestAdmin(SuperuserOnlyAdmin):
    list_display = ["id", "created_at", "method", "path", "status", "fault"]
    list_filter = ["method", "status"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
