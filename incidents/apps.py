from django.apps import AppConfig


class IncidentsConfig(AppConfig):
    name = "incidents"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Signals are used only to audit what Django owns: sign-ins, lockouts, users, groups, permissions, passwords.
        from . import auth_audit, checks  # noqa: F401
