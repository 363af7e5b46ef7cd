"""Login, logout, lockout (behind proxies too), and the audit events each leaves."""

from __future__ import annotations

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.hashers import identify_hasher
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError

from incidents.models import AuditEvent

from .factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"
PROXY = "10.0.0.1"  # the reverse proxy in front of the app: every request's peer address
ATTACKER = "198.51.100.9"
USER_ADDRESS = "203.0.113.7"


def actions() -> list[str]:
    return list(AuditEvent.objects.order_by("seq").values_list("action", flat=True))


def fail_sign_in(client, username: str = "responder", times: int = 1, **extra) -> None:
    for _ in range(times):
        client.post(LOGIN, {"username": username, "password": "wrong"}, **extra)


def test_login_with_good_password_signs_in_and_is_audited(client, responder, password):
    response = client.post(LOGIN, {"username": "responder", "password": password})
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert client.get("/").status_code == 200
    event = AuditEvent.objects.get(action="auth.login")
    assert event.actor_id == responder.pk
    assert event.actor_label == "responder"
    assert event.context["ip"] == "127.0.0.1"
    assert event.context["request_id"]


def test_logout_is_a_post_and_is_audited(client, responder, password):
    client.post(LOGIN, {"username": "responder", "password": password})
    assert client.get("/accounts/logout/").status_code == 405
    response = client.post("/accounts/logout/")
    assert response.status_code == 302
    assert client.get("/").status_code == 302  # back to the login page
    assert actions()[-1] == "auth.logout"


def test_failed_login_shows_the_error_and_writes_nothing_to_the_audit_log(client, responder):
    before = AuditEvent.objects.count()
    response = client.post(LOGIN, {"username": "responder", "password": "wrong"})
    assert response.status_code == 200
    assert b"Please enter a correct username and password" in response.content
    # Axes counts it; the audit log hears of failures only when they lock (anonymous traffic is unbounded).
    assert AuditEvent.objects.count() == before
    assert AccessAttempt.objects.get(username="responder").failures_since_start == 1


def test_five_failures_lock_the_username_and_ip_for_15_minutes(client, responder, password):
    fail_sign_in(client, times=settings.AXES_FAILURE_LIMIT)
    # Even the right password is refused now, and the page says why.
    response = client.post(LOGIN, {"username": "responder", "password": password})
    assert response.status_code == 429
    assert b"locked for 15 minutes" in response.content
    assert "auth.locked_out" in actions()
    assert not AuditEvent.objects.filter(action="auth.login").exists()


def test_a_lockout_is_one_audit_event_with_the_count_and_the_address(client, responder, password):
    fail_sign_in(client, times=settings.AXES_FAILURE_LIMIT + 4)  # four more while locked
    client.post(LOGIN, {"username": "responder", "password": password})
    events = AuditEvent.objects.filter(action__startswith="auth.")
    assert [event.action for event in events] == ["auth.locked_out"]
    event = events.get()
    assert event.target_label == "responder"
    assert event.target_id == str(responder.pk)
    assert event.actor_id is None
    assert event.context["failures"] == settings.AXES_FAILURE_LIMIT
    assert event.context["failures_by_address"] == {"127.0.0.1": settings.AXES_FAILURE_LIMIT}
    assert "after 5 failed sign-ins from 127.0.0.1" in event.summary


def test_attempts_while_locked_do_not_extend_the_lockout(client, responder, password):
    fail_sign_in(client, times=settings.AXES_FAILURE_LIMIT)
    locked_at = AccessAttempt.objects.get(username="responder").attempt_time
    fail_sign_in(client, times=3)
    client.post(LOGIN, {"username": "responder", "password": password})
    attempt = AccessAttempt.objects.get(username="responder")
    # 15 minutes from the fifth failure, however often the door is tried after it.
    assert attempt.attempt_time == locked_at
    assert attempt.failures_since_start == settings.AXES_FAILURE_LIMIT


def test_the_lockout_event_counts_the_usernames_failures_from_other_addresses(client, responder):
    fail_sign_in(client, times=3, REMOTE_ADDR="192.0.2.10")
    fail_sign_in(client, times=2, REMOTE_ADDR="192.0.2.11")
    fail_sign_in(client, times=settings.AXES_FAILURE_LIMIT, REMOTE_ADDR=ATTACKER)
    event = AuditEvent.objects.get(action="auth.locked_out")
    assert event.context["ip"] == ATTACKER
    assert event.context["failures_by_address"] == {ATTACKER: 5, "192.0.2.10": 3, "192.0.2.11": 2}
    assert event.context["failures_for_username"] == 10
    assert event.context["addresses_for_username"] == 3
    assert "10 failures for this username from 3 addresses" in event.summary


def test_a_sign_in_after_failures_says_how_many_it_cleared(client, responder, password):
    fail_sign_in(client, times=2)
    client.post(LOGIN, {"username": "responder", "password": password})
    event = AuditEvent.objects.get(action="auth.login")
    assert event.summary == "responder signed in after 2 failed attempts"
    assert event.context["failures_before"] == 2
    assert not AccessAttempt.objects.exists()
    assert not AuditEvent.objects.filter(action="auth.lockout_reset").exists()


def test_lockout_is_per_username_and_ip(client, responder, approver, password):
    fail_sign_in(client, times=settings.AXES_FAILURE_LIMIT)
    # Another username from the same address can still sign in.
    response = client.post(LOGIN, {"username": "approver", "password": password})
    assert response.status_code == 302


# --- Behind reverse proxies (PROXY_COUNT) -------------------------------------------------------------------
def test_behind_a_proxy_one_clients_failures_do_not_lock_out_another(client, responder, password, settings):
    settings.PROXY_COUNT = 1
    fail_sign_in(client, times=settings.AXES_FAILURE_LIMIT, REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=ATTACKER)
    response = client.post(
        LOGIN,
        {"username": "responder", "password": password},
        REMOTE_ADDR=PROXY,
        HTTP_X_FORWARDED_FOR=USER_ADDRESS,
    )
    assert response.status_code == 302
    assert AuditEvent.objects.get(action="auth.login").context["ip"] == USER_ADDRESS
    assert AuditEvent.objects.get(action="auth.locked_out").context["ip"] == ATTACKER


def test_behind_a_proxy_the_locked_out_client_stays_locked_whatever_it_forwards(client, responder, password, settings):
    settings.PROXY_COUNT = 1
    for n in range(settings.AXES_FAILURE_LIMIT + 1):
        # The proxy appends the address it saw; whatever the client wrote itself is further left.
        fail_sign_in(client, REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=f"192.0.2.{n}, {ATTACKER}")
    response = client.post(
        LOGIN,
        {"username": "responder", "password": password},
        REMOTE_ADDR=PROXY,
        HTTP_X_FORWARDED_FOR=f"{USER_ADDRESS}, {ATTACKER}",
    )
    assert response.status_code == 429
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {ATTACKER}


def test_without_proxies_x_forwarded_for_is_never_trusted(client, responder, password, settings):
    settings.PROXY_COUNT = 0
    for n in range(settings.AXES_FAILURE_LIMIT):
        fail_sign_in(client, REMOTE_ADDR=ATTACKER, HTTP_X_FORWARDED_FOR=f"192.0.2.{n}")
    response = client.post(
        LOGIN, {"username": "responder", "password": password}, REMOTE_ADDR=ATTACKER, HTTP_X_FORWARDED_FOR=USER_ADDRESS
    )
    assert response.status_code == 429
    assert AuditEvent.objects.get(action="auth.locked_out").context["ip"] == ATTACKER


def test_behind_two_proxies_the_client_is_the_second_address_from_the_right(client, responder, password, settings):
    settings.PROXY_COUNT = 2
    client.post(
        LOGIN,
        {"username": "responder", "password": password},
        REMOTE_ADDR=PROXY,
        HTTP_X_FORWARDED_FOR=f"192.0.2.99, {USER_ADDRESS}, 10.0.0.2",
    )
    assert AuditEvent.objects.get(action="auth.login").context["ip"] == USER_ADDRESS


def test_a_request_that_did_not_come_through_the_proxies_is_its_peers(client, responder, password, settings):
    settings.PROXY_COUNT = 2
    client.post(
        LOGIN, {"username": "responder", "password": password}, REMOTE_ADDR=ATTACKER, HTTP_X_FORWARDED_FOR=USER_ADDRESS
    )
    assert AuditEvent.objects.get(action="auth.login").context["ip"] == ATTACKER


# --- Sessions and passwords -----------------------------------------------------------------------------------
def test_session_cookie_is_httponly_lax_and_expires_in_8_hours(client, responder, password):
    client.post(LOGIN, {"username": "responder", "password": password})
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


def test_a_password_shorter_than_12_characters_is_refused(as_user, responder, password):
    response = as_user(responder).post(
        "/accounts/password/",
        {"old_password": password, "new_password1": "Tq7#vLp2!xZ", "new_password2": "Tq7#vLp2!xZ"},
    )
    assert response.status_code == 200
    assert b"at least 12 characters" in response.content
    responder.refresh_from_db()
    assert responder.check_password(password)


def test_a_password_is_stored_with_a_slow_salted_hash(real_password_hashing):
    # The suite hashes with MD5 for speed (conftest); the settings' own hashers are what production stores.
    user = UserFactory(username="stored")
    hasher = identify_hasher(user.password)
    assert hasher.algorithm in {"pbkdf2_sha256", "argon2", "scrypt", "bcrypt_sha256"}
    assert not hasher.must_update(user.password)  # the iterations or work factor are the current defaults
    assert user.check_password(PASSWORD)


def test_password_validators_ask_for_12_characters():
    with pytest.raises(ValidationError):
        validate_password("Tq7#vLp2!xZ")  # 11
    validate_password("Tq7#vLp2!xZw")  # 12


def test_a_spray_of_unknown_usernames_from_one_address_is_one_lockout_event(client, responder, password):
    for name in ("ghost-1", "ghost-2", "ghost-3"):
        fail_sign_in(client, name, times=settings.AXES_FAILURE_LIMIT, REMOTE_ADDR=ATTACKER)
    fail_sign_in(client, "responder", times=settings.AXES_FAILURE_LIMIT, REMOTE_ADDR=ATTACKER)
    events = AuditEvent.objects.filter(action="auth.locked_out").order_by("seq")
    assert [(event.target_label, event.context["unknown_username"]) for event in events] == [
        ("ghost-1", True),
        ("responder", False),  # a real account's lockout is always written
    ]
    assert "further lockouts of unknown usernames from 198.51.100.9" in events[0].summary
    # Every one of them is still locked out, written or not.
    response = client.post(LOGIN, {"username": "ghost-3", "password": password}, REMOTE_ADDR=ATTACKER)
    assert response.status_code == 429
