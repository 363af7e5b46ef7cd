"""The account page: the signed-in user's preferences (the time zone times are shown and typed in)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from .. import access, mfa, preferences
from ..forms import MfaEnrolForm, MfaRecoveryForm, TimeZoneForm, next_path
from ..http import HtmxHttpRequest


@require_http_methods(["GET", "POST"])
def account(request: HtmxHttpRequest) -> HttpResponse:
    zones = preferences.time_zone_names()
    if request.method == "POST":
        form = TimeZoneForm(request.POST, zones=zones, site_zone=settings.TIME_ZONE)
        if form.is_valid():
            chosen = form.cleaned_data["time_zone"]
            preferences.set_time_zone(user=request.user, time_zone=chosen)  # type: ignore[arg-type]
            messages.success(request, f"Times are now shown in {chosen or settings.TIME_ZONE}.")
            return redirect("incidents:account")
        return render(
            request, "incidents/account.html", {"form": form, "teams": access.teams(request.user)}, status=422
        )
    current = preferences.time_zone_of(request.user)
    initial = {"time_zone": "" if current == settings.TIME_ZONE else current}
    return render(
        request,
        "incidents/account.html",
        {
            "form": TimeZoneForm(initial=initial, zones=zones, site_zone=settings.TIME_ZONE),
            "teams": access.teams(request.user),
        },
    )


# --- Authenticator app (issue 12 §4) ---------------------------------------------------------------------------
ENROL_SECRET_SESSION_KEY = "incidents.mfa.enrol_secret"  # noqa: S105 - a session key name, not a secret


@require_http_methods(["GET", "POST"])
def mfa_setup(request: HtmxHttpRequest) -> HttpResponse:
    """Enrol an authenticator app (TOTP, allauth.mfa) and receive recovery codes; or see that one is enrolled."""
    user = request.user
    back = next_path(request)
    if mfa.has_totp(user) and request.method == "POST":  # type: ignore[arg-type]
        recovery = MfaRecoveryForm(request.POST)
        if recovery.is_valid():
            try:
                mfa.replace_with_recovery_code(user=user, code=recovery.cleaned_data["recovery_code"])  # type: ignore[arg-type]
            except mfa.MfaError as exc:
                recovery.add_error("recovery_code", str(exc))
            else:
                messages.success(request, "Your old authenticator app is removed: enrol the new one.")
                return redirect("incidents:mfa_setup")
        return render(
            request,
            "incidents/mfa_setup.html",
            {"enrolled": True, "recovery_form": recovery, "recovery_left": len(mfa.recovery_codes(user)), "next": back},  # type: ignore[arg-type]
            status=422,
        )
    if mfa.has_totp(user):  # type: ignore[arg-type]
        return render(
            request,
            "incidents/mfa_setup.html",
            {
                "enrolled": True,
                "recovery_form": MfaRecoveryForm(),
                "recovery_left": len(mfa.recovery_codes(user)),  # type: ignore[arg-type]
                "next": back,
            },
        )
    secret = request.session.get(ENROL_SECRET_SESSION_KEY) or mfa.new_secret()
    request.session[ENROL_SECRET_SESSION_KEY] = secret
    form = MfaEnrolForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        try:
            enrolment = mfa.enrol(user=user, secret=secret, code=form.cleaned_data["code"])  # type: ignore[arg-type]
        except mfa.MfaError as exc:
            form.add_error("code", str(exc))
        else:
            request.session.pop(ENROL_SECRET_SESSION_KEY, None)
            messages.success(request, "Your authenticator app is enrolled.")
            # The recovery codes are shown once, here: each replaces the app once if it is lost.
            return render(
                request,
                "incidents/mfa_setup.html",
                {"enrolled": True, "recovery_codes": enrolment.recovery_codes, "next": back},
            )
    url = mfa.otpauth_url(user, secret)  # type: ignore[arg-type]
    context = {
        "form": form,
        "secret": secret,
        "qr_svg": mfa.qr_svg(url),
        "otpauth_url": url,
        "next": back,
        "mfa_required": mfa.required_for_approvers(),
    }
    return render(request, "incidents/mfa_setup.html", context, status=422 if form.errors else 200)
