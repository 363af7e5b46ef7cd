"""The admin site every ``admin.register`` lands on (ours, django-axes', Django's auth): Django's admin with its
two 500s on malformed input closed, for every model at once.

- An action posted with a selected id that is not a key (``_selected_action=x``): Django filters the changelist by
  it unvalidated and the database layer raises. Here the action is refused with a message, and nothing
  changes.
- An autocomplete field re-rendered after an invalid submission (``user=x``): the widget looks the submitted value
  up unvalidated. Here values that are not keys of the related model are left out of the lookup (the form already
  says the choice is invalid).

The login form is bounded too (``forms.AdminLoginForm``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin import helpers, widgets
from django.contrib.admin.apps import AdminConfig as DjangoAdminConfig
from django.core.exceptions import ValidationError


def _is_key(field, value) -> bool:
    try:
        field.to_python(value)
        field.get_prep_value(field.to_python(value))
    except (ValidationError, ValueError, TypeError, OverflowError):
        return False
    return True


class BoundedAutocompleteSelect(widgets.AutocompleteSelect):
    def optgroups(self, name, value, attr=None):
        target = self.field.remote_field.model._meta.get_field(
            getattr(self.field.remote_field, "field_name", None) or self.field.remote_field.model._meta.pk.name
        )
        value = [item for item in value if _is_key(target, item)]
        return super().optgroups(name, value, attr)


if TYPE_CHECKING:
    _MixedInto = admin.ModelAdmin[Any]
else:
    _MixedInto = object


class BoundedInputAdmin(_MixedInto):
    """Mixed into every registered ModelAdmin and inline by ``AdminSite.register``."""

    def response_action(self, request, queryset):
        pk = self.model._meta.pk
        selected = request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)
        if not all(_is_key(pk, value) for value in selected):
            self.message_user(
                request,
                "The selection holds something that is not an id: nothing was changed.",
                messages.ERROR,
            )
            return None
        return super().response_action(request, queryset)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name in self.get_autocomplete_fields(request) and "widget" not in kwargs:
            kwargs["widget"] = BoundedAutocompleteSelect(db_field, self.admin_site, using=kwargs.get("using"))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


def _bounded(admin_class):
    return type(admin_class.__name__, (BoundedInputAdmin, admin_class), {"__module__": admin_class.__module__})


class AdminSite(admin.AdminSite):
    def register(self, model_or_iterable, admin_class=None, **options):
        admin_class = _bounded(admin_class or admin.ModelAdmin)
        inlines = [_bounded(inline) for inline in getattr(admin_class, "inlines", [])]
        if inlines:
            admin_class = type(admin_class.__name__, (admin_class,), {"inlines": inlines})
        return super().register(model_or_iterable, admin_class, **options)


class AdminConfig(DjangoAdminConfig):
    """Django's admin app on this site (``INSTALLED_APPS`` names it in place of ``django.contrib.admin``)."""

    default_site = "incidents.admin_site.AdminSite"
