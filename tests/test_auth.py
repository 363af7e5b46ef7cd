"""Login, logout, lockout, and the audit events each leaves."""

from __future__ import annotations

import pytest
from django.conf import settings

from incidents.models import AuditEvent

pytestmark = pytest.mark.django_db


def actions() -> list[str]:
    return list(AuditEvent.objects.order_by("seq").values_list("action", flat=True))


def test_login_with_good_password_signs_in_and_is_audited(client, responder, password):
    response = client.post("/accounts/login/", {"username": "responder", "password": password})
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert client.get("/").status_code == 200
    event = AuditEvent.objects.get(action="auth.login")
    assert event.actor_id == responder.pk
    assert event.actor_label == "responder"
    assert event.context["ip"] == "127.0.0.1"
    assert event.context["request_id"]


def test_logout_is_a_post_and_is_audited(client, responder, password):
    client.post("/accounts/login/", {"username": "responder", "password": password})
    assert client.get("/accounts/logout/").status_code == 405
    response = client.post("/accounts/logout/")
    assert response.status_code == 302
    assert client.get("/").status_code == 302  # back to the login page
    assert actions()[-1] == "auth.logout"


def test_failed_login_shows_error_and_is_audited(client, responder):
    response = client.post("/accounts/login/", {"username": "responder", "password": "wrong"})
    assert response.status_code == 200
    assert b"Please enter a correct username and password" in response.content
    event = AuditEvent.objects.get(action="auth.login_failed")
    assert event.actor_id is None
    assert event.target_label == "responder"
    assert event.target_id == str(responder.pk)


def test_five_failures_lock_the_username_and_ip_for_15_minutes(client, responder, password):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post("/accounts/login/", {"username": "responder", "password": "wrong"})
    # Even the right password is refused now, and the page says why.
    response = client.post("/accounts/login/", {"username": "responder", "password": password})
    assert response.status_code == 429
    assert b"locked for 15 minutes" in response.content
    assert "auth.locked_out" in actions()
    assert actions().count("auth.login_failed") >= settings.AXES_FAILURE_LIMIT
    assert not AuditEvent.objects.filter(action="auth.login").exists()


def test_lockout_is_per_username_and_ip(client, responder, approver, password):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post("/accounts/login/", {"username": "responder", "password": "wrong"})
    # Another username from the same address can still sign in.
    response = client.post("/accounts/login/", {"username": "approver", "password": password})
    assert response.status_code == 302


def test_session_cookie_is_httponly_lax_and_expires_in_8_hours(client, responder, password):
    client.post("/accounts/login/", {"username": "responder", "password": password})
    cookie = client.cookies[settings.SESSION_COOKIE_NAME]
    assert cookie["httponly"]
    assert cookie["samesite"] == "Lax"
    assert int(cookie["max-age"]) == 8 * 60 * 60


def test_password_change_works(as_user, responder, password):
    client = as_user(responder)
    response = client.post(
        "/accounts/password/",
        {
            "old_password": password,
            "new_password1": "a-new-long-passphrase-42",
            "new_password2": "a-new-long-passphrase-42",
        },
    )
    assert response.status_code == 302
    responder.refresh_from_db()
    assert responder.check_password("a-new-long-passphrase-42")
