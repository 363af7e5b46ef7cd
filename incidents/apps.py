from django.apps import AppConfig


class IncidentsConfig(AppConfig):
    name = "incidents"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Django's auth signals are the only signals we use: to audit logins, logouts and failures.
        from . import auth_audit  # noqa: F401
