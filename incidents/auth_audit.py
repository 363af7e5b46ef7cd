"""Audit logins, logouts, failed logins and lockouts (Django's auth signals and django-axes')."""

from __future__ import annotations

from axes.signals import user_locked_out
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from . import audit


@receiver(user_logged_in)
def audit_login(sender, request, user, **kwargs) -> None:
    audit.record("auth.login", actor=user, target=user, summary=f"{user.get_username()} signed in")


@receiver(user_logged_out)
def audit_logout(sender, request, user, **kwargs) -> None:
    if user is None:
        return
    audit.record("auth.logout", actor=user, target=user, summary=f"{user.get_username()} signed out")


@receiver(user_login_failed)
def audit_login_failed(sender, credentials, request=None, **kwargs) -> None:
    username = str(credentials.get("username", ""))[:150]
    user = get_user_model().objects.filter(username=username).first()
    audit.record(
        "auth.login_failed",
        actor=None,
        actor_label=f"anonymous:{username}" if username else "anonymous",
        target=user,
        target_type="user",
        target_label=username,
        summary=f"Failed sign-in for {username or '(no username)'}",
    )


@receiver(user_locked_out)
def audit_lockout(sender, request, username, ip_address, **kwargs) -> None:
    user = get_user_model().objects.filter(username=username).first()
    audit.record(
        "auth.locked_out",
        actor=None,
        actor_label=f"anonymous:{username}" if username else "anonymous",
        target=user,
        target_type="user",
        target_label=username or "",
        summary=f"{username} locked out for 15 minutes after repeated failures from {ip_address}",
        context={"ip": ip_address},
    )
