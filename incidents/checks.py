"""``manage.py check --deploy``: what would make this deployment unsafe, beyond Django's own list.

Each check names what is wrong and what to do. ``make check-deploy`` runs them with the documented production
environment (deploy/production.env.example) and fails on any warning.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Warning, register
from django.db import DatabaseError, connection

from . import dbroles


@register(deploy=True)
def production_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    problems: list[Any] = []
    if settings.SANDBOX_ENABLED:
        problems.append(
            Error(
                "The IsDown sandbox is mounted: anyone with its key can write to its incidents.",
                hint="Unset SANDBOX_ENABLED; the sandbox is for development (DEBUG=1) only.",
                id="isdown.E001",
            )
        )
    if settings.PUBLISHES_TO_SANDBOX:
        problems.append(
            Error(
                "No ISDOWN_API_KEY: the app would publish to its own sandbox, not to IsDown.",
                hint="Set ISDOWN_API_KEY (an IsDown API key of your company).",
                id="isdown.E002",
            )
        )
    if settings.SECRET_KEY.startswith("dev-only-"):
        problems.append(
            Error(
                "SECRET_KEY is the development key.", hint="Set SECRET_KEY to 50+ random characters.", id="isdown.E003"
            )
        )
    if settings.EMAIL_BACKEND.rsplit(".", 2)[-2] in {"console", "locmem", "dummy"}:
        problems.append(
            Warning(
                "Email goes nowhere (EMAIL_URL is console:// or locmem://): nobody is told when a publication fails.",
                hint="Set EMAIL_URL to your mail server, e.g. smtp+tls://user:password@mail.example.com:587.",
                id="isdown.W001",
            )
        )
    if not settings.ISDOWN_API_URL.startswith("https://"):
        problems.append(Warning("ISDOWN_API_URL is not https.", hint="Use https://isdown.app.", id="isdown.W002"))
    if not settings.MFA_REQUIRED_FOR_APPROVERS:
        problems.append(
            Warning(
                "Approvers may approve without an authenticator app (MFA_REQUIRED_FOR_APPROVERS is off).",
                hint="Set MFA_REQUIRED_FOR_APPROVERS=1: each approver then enrols an authenticator before approving.",
                id="isdown.W004",
            )
        )
    if not settings.AUDIT_CHECKPOINT_SINK:
        problems.append(
            Warning(
                "AUDIT_CHECKPOINT_SINK is unset: signed audit checkpoints are kept only in the database, whose owner "
                "can delete them.",
                hint="Set AUDIT_CHECKPOINT_SINK to a file outside the database (shipped to storage the owner cannot "
                "rewrite).",
                id="isdown.W005",
            )
        )
    return problems


@register(deploy=True, databases=["default"])
def database_role(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list[Any]:
    """The role the app connects as must not be able to rewrite the audit log."""
    if not databases:
        return []
    try:
        with connection.cursor() as cursor:
            problems = dbroles.role_problems(cursor)
    except DatabaseError as exc:
        return [
            Warning(
                f"Could not check the database role the app connects as: {str(exc).splitlines()[0]}",
                hint="Run the check where the database is reachable.",
                id="isdown.W003",
            )
        ]
    return [
        Error(
            f"Unsafe database role: {problem}.",
            hint="Run the app as a least-privilege role and migrations as the owner (README, Deployment).",
            id="isdown.E004",
        )
        for problem in problems
    ]
