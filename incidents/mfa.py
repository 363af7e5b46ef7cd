"""Two-factor authentication for approvers: allauth.mfa's Authenticator (TOTP and recovery codes), checked here.

The app keeps its own sign-in (django-axes, auth_audit.py); allauth's account flow is not installed. This module uses
allauth.mfa's model and its TOTP and recovery-code helpers for enrolment and for the one place a second factor is
asked for: break-glass (workflow.break_glass), which needs a code typed *now*. A code is accepted once: the TOTP's
last accepted time step is kept in Postgres (``data["last_counter"]``, under a row lock), so a code read over a
shoulder, or sent twice, is refused for every worker and process, not only in one process's cache.

``MFA_REQUIRED_FOR_APPROVERS`` makes an approver without an authenticator enrol before approving (workflow.py asks
``missing_for_approval``); it is off in development and tests, and ``check --deploy`` warns when it is off.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from allauth.core.internal.cryptokit import compare_user_code
from allauth.mfa import app_settings as mfa_settings
from allauth.mfa.adapter import get_adapter
from allauth.mfa.models import Authenticator
from allauth.mfa.recovery_codes.internal.auth import RecoveryCodes
from allauth.mfa.totp.internal.auth import format_hotp_value, generate_totp_secret, hotp_value
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from . import access, audit
from .models import Team

TOTP = Authenticator.Type.TOTP


class MfaError(Exception):
    """A code was refused, or there is no authenticator to check it with. The message is for the person who typed."""


def has_totp(user: User) -> bool:
    return Authenticator.objects.filter(user_id=user.pk, type=TOTP).exists()


def required_for_approvers() -> bool:
    return bool(getattr(settings, "MFA_REQUIRED_FOR_APPROVERS", False))


def missing_for_approval(user: User, team: Team) -> bool:
    """True when this approver must enrol an authenticator before deciding (MFA_REQUIRED_FOR_APPROVERS is on)."""
    return required_for_approvers() and access.has_role(user, team, access.REVIEWING_ROLES) and not has_totp(user)


# --- Enrolment ------------------------------------------------------------------------------------------------
def new_secret() -> str:
    return generate_totp_secret()


def otpauth_url(user: User, secret: str) -> str:
    return get_adapter().build_totp_url(user, secret)


def qr_svg(url: str) -> str:
    return get_adapter().build_totp_svg(url)


def _counters(now: datetime | None) -> list[int]:
    moment = now.timestamp() if now is not None else time.time()
    step = int(moment) // mfa_settings.TOTP_PERIOD
    return [step + i for i in range(-mfa_settings.TOTP_TOLERANCE, mfa_settings.TOTP_TOLERANCE + 1)]


def _matching_counter(secret: str, code: str, now: datetime | None) -> int | None:
    code = "".join(code.split())
    for counter in _counters(now):
        if compare_user_code(actual=code, expected=format_hotp_value(hotp_value(secret, counter))):
            return counter
    return None


@dataclass(frozen=True)
class Enrolment:
    authenticator: Authenticator
    recovery_codes: list[str]


def enrol(*, user: User, secret: str, code: str, now: datetime | None = None) -> Enrolment:
    """Activate a TOTP authenticator for ``secret`` once ``code`` proves the app shows it; make recovery codes."""
    counter = _matching_counter(secret, code, now)
    if counter is None:
        raise MfaError("That code does not match: check the app's clock and type the code it shows now.")
    with transaction.atomic():
        if Authenticator.objects.select_for_update().filter(user_id=user.pk, type=TOTP).exists():
            raise MfaError("You already have an authenticator app.")
        authenticator = Authenticator.objects.create(
            user=user, type=TOTP, data={"secret": get_adapter().encrypt(secret), "last_counter": counter}
        )
        codes = RecoveryCodes.activate(user).get_unused_codes()
        audit.record(
            "mfa.enrolled",
            actor=user,
            target=user,
            target_label=user.get_username(),
            summary=f"{user.get_username()} enrolled an authenticator app",
        )
    return Enrolment(authenticator=authenticator, recovery_codes=codes)


def recovery_codes(user: User) -> list[str]:
    instance = Authenticator.objects.filter(user_id=user.pk, type=Authenticator.Type.RECOVERY_CODES).first()
    return RecoveryCodes(instance).get_unused_codes() if instance is not None else []


# --- A fresh check --------------------------------------------------------------------------------------------
def verify_fresh(*, user: User, code: str, team: Team | None, purpose: str, now: datetime | None = None) -> None:
    """Accept ``code`` only if it is the user's TOTP for now (± the tolerance) and newer than any code accepted
    before; record the outcome in the audit log either way (a refusal in a transaction of its own, so it stays
    recorded when the caller's action is refused). Call it outside the action's transaction."""
    refusal = ""
    with transaction.atomic():
        authenticator = Authenticator.objects.select_for_update().filter(user_id=user.pk, type=TOTP).first()
        if authenticator is None:
            raise MfaError("Enrol an authenticator app first (your account page).")
        counter = _matching_counter(get_adapter().decrypt(authenticator.data["secret"]), code or "", now)
        if counter is None:
            refusal = "That code is not the one your authenticator app shows now."
        elif counter <= int(authenticator.data.get("last_counter", -1)):
            refusal = "That code was already used: wait for the next one."
        else:
            authenticator.data["last_counter"] = counter
            authenticator.last_used_at = now or timezone.now()
            authenticator.save(update_fields=["data", "last_used_at"])
            audit.record(
                "mfa.code_accepted",
                actor=user,
                team=team,
                target=user,
                target_label=user.get_username(),
                summary=f"{user.get_username()} passed an authenticator check to {purpose}",
            )
    if refusal:
        with transaction.atomic():
            audit.record(
                "mfa.code_refused",
                actor=user,
                team=team,
                target=user,
                target_label=user.get_username(),
                summary=f"An authenticator code of {user.get_username()} was refused ({purpose})",
                changes={"reason": [None, refusal]},
            )
        raise MfaError(refusal)


def replace_with_recovery_code(*, user: User, code: str) -> None:
    """A lost app: one unused recovery code removes the TOTP authenticator so a new one can be enrolled (the code
    is spent; the remaining ones stay valid). Audited either way."""
    with transaction.atomic():
        instance = (
            Authenticator.objects.select_for_update()
            .filter(user_id=user.pk, type=Authenticator.Type.RECOVERY_CODES)
            .first()
        )
        accepted = instance is not None and RecoveryCodes(instance).validate_code("".join((code or "").split()))
        if accepted:
            Authenticator.objects.filter(user_id=user.pk, type=TOTP).delete()
            audit.record(
                "mfa.replaced",
                actor=user,
                target=user,
                target_label=user.get_username(),
                summary=f"{user.get_username()} used a recovery code to replace their authenticator app",
            )
    if not accepted:
        with transaction.atomic():
            audit.record(
                "mfa.code_refused",
                actor=user,
                target=user,
                target_label=user.get_username(),
                summary=f"A recovery code of {user.get_username()} was refused",
            )
        raise MfaError("That recovery code is not one of yours, or it was used already.")
