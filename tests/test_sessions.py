"""Sessions end after SESSION_IDLE_TIMEOUT without activity (background polling is not activity) and 8 hours after
sign-in; signed-in pages are never cached; the request id is ours, not the client's."""

from __future__ import annotations

import time

import pytest
from django.conf import settings

from incidents.middleware import SESSION_ACTIVITY_KEY, SESSION_STARTED_KEY
from incidents.models import AuditEvent
from tests.publishing.factories import approved_publication

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"


@pytest.fixture
def signed_in(client, responder, password):
    response = client.post(LOGIN, {"username": "responder", "password": password})
    assert response.status_code == 302
    return client


def set_session(client, **values: float) -> None:
    session = client.session
    for key, value in values.items():
        session[key] = value
    session.save()


def last_activity(client) -> float:
    return client.session[SESSION_ACTIVITY_KEY]


def poll(client, url: str):
    return client.get(url, HTTP_HX_REQUEST="true", HTTP_HX_CURRENT_URL=f"http://testserver{url}")


@pytest.fixture
def publication(api_service, responder):
    return approved_publication(service=api_service, author=responder)


def test_the_idle_timeout_is_30_minutes_by_default():
    assert settings.SESSION_IDLE_TIMEOUT == 30 * 60


def test_an_idle_session_goes_back_to_the_login_page_with_a_message(signed_in):
    set_session(signed_in, **{SESSION_ACTIVITY_KEY: time.time() - settings.SESSION_IDLE_TIMEOUT - 1})
    response = signed_in.get("/incidents/")
    assert response.status_code == 302
    assert response["Location"] == f"{LOGIN}?next=%2Fincidents%2F"
    page = signed_in.get(response["Location"])
    assert b"Your session ended after 30 minutes without activity" in page.content
    assert signed_in.get("/").status_code == 302  # signed out for good, not just this once
    event = AuditEvent.objects.filter(action__startswith="auth.").order_by("-seq").first()
    assert event.action == "auth.session_expired"
    assert event.actor_label == "responder"


def test_activity_keeps_the_session_alive(signed_in):
    almost = time.time() - settings.SESSION_IDLE_TIMEOUT + 120
    set_session(signed_in, **{SESSION_ACTIVITY_KEY: almost})
    assert signed_in.get("/incidents/").status_code == 200
    assert last_activity(signed_in) > almost + 60


def test_a_click_that_htmx_makes_is_activity(signed_in, publication):
    before = time.time() - 120
    set_session(signed_in, **{SESSION_ACTIVITY_KEY: before})
    response = signed_in.post(
        f"/publications/{publication.pk}/retry/", HTTP_HX_REQUEST="true", HTTP_HX_CURRENT_URL="http://testserver/"
    )
    assert response.status_code == 403  # a responder may not retry; still someone at the keyboard
    assert last_activity(signed_in) > before + 60


def test_background_polling_does_not_count_as_activity(signed_in, publication):
    url = f"/publications/{publication.pk}/"
    before = time.time() - 600
    set_session(signed_in, **{SESSION_ACTIVITY_KEY: before})
    response = poll(signed_in, url)
    assert response.status_code == 200
    assert last_activity(signed_in) == before


def test_polling_after_the_idle_timeout_sends_the_whole_page_to_the_login_page(signed_in, publication):
    set_session(signed_in, **{SESSION_ACTIVITY_KEY: time.time() - settings.SESSION_IDLE_TIMEOUT - 1})
    response = poll(signed_in, f"/publications/{publication.pk}/")
    # htmx would swap a redirect's login page into the fragment; HX-Redirect navigates the whole page.
    assert response["HX-Redirect"] == f"{LOGIN}?next=%2Fpublications%2F{publication.pk}%2F"
    assert signed_in.get("/").status_code == 302


def test_the_idle_timeout_is_a_setting(signed_in, settings):
    settings.SESSION_IDLE_TIMEOUT = 5 * 60
    set_session(signed_in, **{SESSION_ACTIVITY_KEY: time.time() - 5 * 60 - 1})
    response = signed_in.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith(LOGIN)


def test_an_active_session_still_ends_8_hours_after_sign_in(signed_in):
    set_session(signed_in, **{SESSION_STARTED_KEY: time.time() - settings.SESSION_COOKIE_AGE - 1})
    response = signed_in.get("/")
    assert response.status_code == 302
    assert signed_in.get(response["Location"]).status_code == 200
    assert signed_in.get("/").status_code == 302


def test_signing_in_again_starts_both_clocks_afresh(signed_in, password):
    signed_in.post("/accounts/logout/")
    signed_in.post(LOGIN, {"username": "responder", "password": password})
    session = signed_in.session
    assert time.time() - session[SESSION_ACTIVITY_KEY] < 60
    assert time.time() - session[SESSION_STARTED_KEY] < 60


# --- Caching --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/", "/incidents/", "/accounts/password/", "/admin/"])
def test_signed_in_pages_are_never_stored(as_user, staff, path):
    response = as_user(staff).get(path)
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]


def test_a_polled_fragment_is_never_stored(signed_in, publication):
    assert "no-store" in poll(signed_in, f"/publications/{publication.pk}/")["Cache-Control"]


# --- Request ids ----------------------------------------------------------------------------------------------
def test_the_request_id_is_ours_not_the_clients(client, responder, password):
    response = client.post(
        LOGIN, {"username": "responder", "password": password}, HTTP_X_REQUEST_ID="chosen-by-the-client"
    )
    ours = response["X-Request-Id"]
    assert ours != "chosen-by-the-client"
    event = AuditEvent.objects.get(action="auth.login")
    assert event.context["request_id"] == ours
    # Kept apart, for tracing a client's own id, never as ours.
    assert event.context["client_request_id"] == "chosen-by-the-client"


def test_a_clients_request_id_is_sanitised_and_bounded(client, responder, password):
    client.post(
        LOGIN,
        {"username": "responder", "password": password},
        HTTP_X_REQUEST_ID="<script>alert(1)</script>\u202e" + "x" * 500,
    )
    kept = AuditEvent.objects.get(action="auth.login").context["client_request_id"]
    assert kept == ("scriptalert1script" + "x" * 500)[:64]


def test_every_request_gets_a_fresh_id(client):
    first, second = client.get(LOGIN)["X-Request-Id"], client.get(LOGIN)["X-Request-Id"]
    assert first and second and first != second
