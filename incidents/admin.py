"""Staff manage teams, memberships and services here; every change is audited with old → new values."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db import transaction
from django.forms.models import model_to_dict

from . import audit
from .models import AuditEvent, Membership, Service, Team


def _snapshot(obj) -> dict[str, Any]:
    data = model_to_dict(obj)
    data.pop("id", None)
    return {key: (value if not hasattr(value, "pk") else value.pk) for key, value in data.items()}


def _team_of(obj) -> Team | None:
    return obj if isinstance(obj, Team) else getattr(obj, "team", None)


def audit_change(request, obj, before: dict[str, Any] | None, *, deleted: bool = False) -> None:
    name = obj._meta.model_name
    if deleted:
        action, verb, changes = f"{name}.deleted", "deleted", audit.field_changes(before or {}, {})
    elif before is None:
        action, verb, changes = f"{name}.created", "created", audit.field_changes({}, _snapshot(obj))
    else:
        action, verb, changes = f"{name}.changed", "changed", audit.field_changes(before, _snapshot(obj))
        if not changes:
            return
    audit.record(
        action,
        actor=request.user,
        team=_team_of(obj),
        target=obj,
        target_id=obj.pk,
        summary=f"{obj._meta.verbose_name.capitalize()} {obj} {verb} in the admin",
        changes=changes,
    )


class AuditedAdmin(admin.ModelAdmin):
    """The admin runs each change and delete view in a transaction, so the audit row commits with the change;
    its bulk delete action does not, so ``delete_queryset`` opens one."""

    def save_model(self, request, obj, form, change) -> None:
        # Read "before" from the database: by now the form has already written the new values onto ``obj``.
        before = _snapshot(type(obj).objects.get(pk=obj.pk)) if change and obj.pk else None
        super().save_model(request, obj, form, change)
        audit_change(request, obj, before)

    def delete_model(self, request, obj) -> None:
        before, pk = _snapshot(obj), obj.pk
        super().delete_model(request, obj)
        # delete() sets the pk to None; the audit row must still name the id that was deleted.
        obj.pk = pk
        audit_change(request, obj, before, deleted=True)

    def delete_queryset(self, request, queryset) -> None:
        # Django's bulk "delete selected" calls queryset.delete(): one SQL DELETE that goes through no
        # delete_model, so nothing would be audited. One by one, each deletion writes its own event with the
        # row's last values; in one transaction, because Django runs admin actions outside one: a failed audit
        # write must undo every deletion of the batch.
        with transaction.atomic():
            for obj in queryset:
                self.delete_model(request, obj)

    def save_formset(self, request, form, formset, change) -> None:
        # The inlines (a team's memberships) are saved by formset.save(), which calls no save_model or
        # delete_model: audit each row here. Validation has already written the new values onto the forms'
        # instances, so "before" is read from the database, for the rows that still exist there.
        befores = {
            obj.pk: _snapshot(type(obj).objects.get(pk=obj.pk))
            for obj in (f.instance for f in formset.forms)
            if obj.pk and type(obj).objects.filter(pk=obj.pk).exists()
        }
        # commit=False: save and delete each row ourselves, so each change is followed by its event.
        instances = formset.save(commit=False)
        for obj in formset.deleted_objects:
            before, pk = _snapshot(obj), obj.pk
            obj.delete()
            obj.pk = pk
            audit_change(request, obj, before, deleted=True)
        for obj in instances:
            earlier = befores.get(obj.pk)
            obj.save()
            audit_change(request, obj, earlier)
        formset.save_m2m()


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    autocomplete_fields = ["user"]


@admin.register(Team)
class TeamAdmin(AuditedAdmin):
    list_display = ["name", "created_at"]
    search_fields = ["name"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(AuditedAdmin):
    list_display = ["user", "team", "role", "created_at"]
    list_filter = ["role", "team"]
    search_fields = ["user__username", "user__email", "team__name"]
    autocomplete_fields = ["user", "team"]


@admin.register(Service)
class ServiceAdmin(AuditedAdmin):
    list_display = ["name", "isdown_service_id", "team", "created_at"]
    list_filter = ["team"]
    search_fields = ["name", "isdown_service_id", "team__name"]


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: the table itself refuses changes."""

    list_display = ["seq", "created_at", "actor_label", "team_label", "action", "summary"]
    list_filter = ["action"]
    search_fields = ["actor_label", "summary", "target_label"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


# --- allauth (issue 12 §4) -------------------------------------------------------------------------------------
# allauth.mfa and allauth.account (installed for the authenticator model) register admins of their own: the first
# shows TOTP secrets and recovery-code seeds, and neither would be audited. Authenticators are managed by their owner
# on the account page (incidents/mfa.py), never from the admin.
def _unregister_allauth() -> None:
    from allauth.account.models import EmailAddress
    from allauth.mfa.models import Authenticator

    for model in (EmailAddress, Authenticator):
        if admin.site.is_registered(model):
            admin.site.unregister(model)


_unregister_allauth()
