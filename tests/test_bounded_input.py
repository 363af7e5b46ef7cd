"""Inputs that once answered a 500: each is now a clear 4xx (or a normal answer), never an unhandled error."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from io import BytesIO
from wsgiref.util import setup_testing_defaults

import pytest
from django.conf import settings
from django.core.servers.basehttp import get_internal_wsgi_application
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import Client

from incidents import audit, input_guards
from incidents.forms import DraftForm
from incidents.models import DraftKind
from sandbox.models import SandboxFault

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"


@pytest.fixture
def server_errors(caplog):
    """What django.request logged at ERROR: a 500 always leaves one."""
    caplog.set_level(logging.ERROR, logger="django.request")
    return lambda: [record for record in caplog.records if record.name == "django.request" and record.levelno >= 40]


def anonymous() -> Client:
    return Client(raise_request_exception=False)


def signed_in(user) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


# --- The login page ------------------------------------------------------------------------------------------
def test_login_with_a_username_over_255_characters_is_a_failed_login_not_a_500(responder, server_errors):
    response = anonymous().post(LOGIN, {"username": "u" * 256, "password": "wrong"})
    assert response.status_code == 200
    assert b"Ensure this value has at most" in response.content or b"correct username" in response.content
    assert server_errors() == []


def test_admin_login_with_a_username_over_255_characters_is_a_failed_login_not_a_500(staff, server_errors):
    response = anonymous().post("/admin/login/", {"username": "u" * 256, "password": "wrong", "next": "/admin/"})
    assert response.status_code == 200
    assert b"Please enter the correct username and password" in response.content
    assert server_errors() == []


@pytest.mark.parametrize("path", [LOGIN, "/admin/login/"])
def test_login_with_a_password_of_a_megabyte_is_refused_before_hashing(responder, path, server_errors, monkeypatch):
    from django.contrib.auth import base_user

    checked = []
    monkeypatch.setattr(base_user, "check_password", lambda *args, **kwargs: checked.append(1) or False)
    response = anonymous().post(path, {"username": "responder", "password": "p" * 1_000_000})
    assert response.status_code == 200
    assert checked == []
    assert server_errors() == []


# --- The sandbox API --------------------------------------------------------------------------------------
def test_sandbox_api_with_a_non_ascii_authorization_header_is_a_401(server_errors):
    response = anonymous().get("/sandbox/api/v2/incidents", HTTP_AUTHORIZATION="Bearer clé-ü")
    assert response.status_code == 401
    assert response.json()["errors"][0]["status"] == 401
    assert server_errors() == []


def test_sandbox_api_with_an_authorization_header_of_raw_latin1_bytes_is_a_401(server_errors):
    # WSGI hands undecodable header bytes over as latin-1 text: "\xe9" arrives as "é".
    response = anonymous().get("/sandbox/api/v2/incidents", HTTP_AUTHORIZATION="Bearer \xe9\xff\x00")
    assert response.status_code == 401
    assert server_errors() == []


# --- The audit log ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/audit/", "/audit/export.csv", "/audit/export.jsonl"])
def test_audit_filter_until_the_last_minute_of_year_9999_is_not_a_500(auditor, path, server_errors):
    response = signed_in(auditor).get(path, {"until": "9999-12-31T23:59"})
    assert response.status_code in (200, 422)
    assert server_errors() == []


@pytest.mark.parametrize("name", ["since", "until"])
@pytest.mark.parametrize("value", ["0001-01-01T00:00", "9999-12-31T23:59", "9999-12-31T23:59:59.999999"])
def test_audit_filter_accepts_the_first_and_last_dates_there_are(auditor, name, value, server_errors):
    response = signed_in(auditor).get("/audit/", {name: value})
    assert response.status_code == 200
    assert server_errors() == []


def test_audit_filter_until_a_minute_includes_its_last_microsecond(auditor, platform, monkeypatch):
    moment = datetime(2025, 3, 1, 14, 30, 59, 999_999, tzinfo=UTC)
    monkeypatch.setattr(audit.timezone, "now", lambda: moment)
    audit.record("draft.saved", team=platform, summary="at the last microsecond")
    monkeypatch.undo()
    client = signed_in(auditor)
    shown = client.get("/audit/", {"until": "2025-03-01T14:30", "action": "draft.saved"})
    hidden = client.get("/audit/", {"until": "2025-03-01T14:29", "action": "draft.saved"})
    assert "at the last microsecond" in shown.content.decode()
    assert "at the last microsecond" not in hidden.content.decode()


# --- Publications --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("action", ["mark-published", "retry", "send-again", "abandon", "acknowledge"])
def test_publication_action_with_a_400_digit_id_is_a_404(approver, action, server_errors):
    response = signed_in(approver).post(f"/publications/{'9' * 400}/{action}/", {"remote_id": "1"})
    assert response.status_code == 404
    assert server_errors() == []


@pytest.mark.parametrize("next_url", ["-1", "x", "dashboard", "https://evil.example/", "//evil.example/", " /x"])
def test_publication_action_with_a_next_that_is_no_local_path_goes_back_to_the_publication(
    approver, api_service, responder, next_url, server_errors
):
    from incidents.models import Publication, PublicationState
    from tests.publishing.factories import approved_publication

    publication = approved_publication(service=api_service, author=responder)
    Publication.objects.filter(pk=publication.pk).update(state=PublicationState.FAILED)
    response = signed_in(approver).post(
        f"/publications/{publication.pk}/abandon/", {"state": "failed", "reason": "x", "next": next_url}
    )
    assert response.status_code == 302
    assert response["Location"] == f"/publications/{publication.pk}/"
    assert server_errors() == []


def test_publication_action_goes_back_to_a_local_next(approver, api_service, responder):
    from incidents.models import Publication, PublicationState
    from tests.publishing.factories import approved_publication

    publication = approved_publication(service=api_service, author=responder)
    Publication.objects.filter(pk=publication.pk).update(state=PublicationState.FAILED)
    response = signed_in(approver).post(
        f"/publications/{publication.pk}/abandon/", {"state": "failed", "reason": "x", "next": "/drafts/1/?a=b\nc"}
    )
    assert response.status_code == 302
    assert response["Location"] == "/drafts/1/?a=b%0Ac"


def test_publication_status_with_a_400_digit_id_is_a_404(approver, server_errors):
    assert signed_in(approver).get(f"/publications/{'9' * 400}/").status_code == 404
    assert server_errors() == []


# --- The sandbox control page ---------------------------------------------------------------------------------
def test_sandbox_fault_with_retry_after_2_to_the_63_is_refused_with_a_message(staff, server_errors):
    response = signed_in(staff).post(
        "/sandbox/", {"kind": "status", "status": 429, "retry_after": str(2**63), "count": 1}
    )
    assert response.status_code == 422
    assert "Retry-After" in response.content.decode() or "less than or equal" in response.content.decode()
    assert not SandboxFault.objects.exists()
    assert server_errors() == []


@pytest.mark.parametrize(
    "data",
    [
        {"kind": "drop", "count": str(2**63)},
        {"kind": "latency", "latency_ms": str(2**63), "count": 1},
        {"kind": "status", "status": str(2**63), "count": 1},
        {"kind": "status", "status": 503, "retry_after": "-1", "count": 1},
        {"kind": "hang", "hang_seconds": "1e308", "count": 1},
        {"kind": "hang", "hang_seconds": "nan", "count": 1},
        {"kind": "drop", "count": "9" * 5000},
    ],
)
def test_sandbox_fault_numbers_out_of_range_are_refused_with_a_message(staff, data, server_errors):
    response = signed_in(staff).post("/sandbox/", data)
    assert response.status_code == 422
    assert 'class="field-error"' in response.content.decode()
    assert not SandboxFault.objects.exists()
    assert server_errors() == []


# --- Text in an encoding we do not read ----------------------------------------------------------------------
# These go through the WSGI application the servers run (settings.WSGI_APPLICATION): a charset can break Django while
# it builds the request, before any middleware, so the guard stands in front of Django.
def through_wsgi(method: str, path: str, *, content_type: str, body: bytes = b"", query: str = "") -> tuple[int, str]:
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "CONTENT_TYPE": content_type,
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_HOST": "testserver",
        "wsgi.input": BytesIO(body),
    }
    setup_testing_defaults(environ)
    answer: dict[str, str] = {}

    def start_response(status: str, headers, exc_info=None) -> None:
        answer["status"] = status

    # As the test client does: the request's end must not close the test's database connection.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        chunks = get_internal_wsgi_application()(environ, start_response)
        text = b"".join(chunks).decode("utf-8", "replace")
        getattr(chunks, "close", lambda: None)()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
    return int(answer["status"].split()[0]), text


def test_a_form_post_declared_utf16_is_a_clear_400():
    body = "title=Down&severity=minor&stage=investigating&action=save".encode("utf-16")
    status, text = through_wsgi(
        "POST", "/drafts/new/", body=body, content_type="application/x-www-form-urlencoded; charset=utf-16"
    )
    assert status == 400
    assert "UTF-8" in text and "utf-16" in text


def test_a_multipart_post_declared_utf32_is_a_clear_400():
    body = b'--b\r\nContent-Disposition: form-data; name="username"\r\n\r\nx\r\n--b--\r\n'
    content_type = "multipart/form-data; boundary=b; charset=utf-32"
    status, text = through_wsgi("POST", LOGIN, body=body, content_type=content_type)
    assert status == 400 and "UTF-8" in text


def test_a_query_string_with_a_charset_that_is_no_text_encoding_is_a_400_not_a_crash():
    # Django decodes the query string while building the request: with rot13 that raised, before any middleware.
    status, text = through_wsgi("GET", "/accounts/login/", query="next=/", content_type="text/plain; charset=rot13")
    assert status == 400 and "UTF-8" in text


def test_a_content_type_django_cannot_parse_is_a_400_not_a_crash():
    status, text = through_wsgi("GET", "/accounts/login/", query="next=/", content_type="text/plain; a*=bogus''x")
    assert status == 400 and "cannot be read" in text


def test_a_sandbox_api_call_declared_utf16_is_a_clear_400():
    body = '{"title": "x"}'.encode("utf-16")
    status, _text = through_wsgi(
        "POST", "/sandbox/api/v2/incidents", query="x=1", body=body, content_type="application/json; charset=utf-16"
    )
    assert status == 400


@pytest.mark.parametrize(
    "charset", ["latin-1", "utf8", "us-ascii", "utf-16", "no-such-codec", "rot13", "unicode_escape", "x" * 300]
)
def test_any_charset_but_utf8_is_a_clear_400(charset):
    body = b"title=Caf\xe9+down&severity=minor"
    content_type = f"application/x-www-form-urlencoded; charset={charset}"
    status, text = through_wsgi("POST", "/drafts/new/", body=body, query="a=b", content_type=content_type)
    assert status == 400
    assert "UTF-8" in text and len(text) < 300


@pytest.mark.parametrize(
    "content_type",
    ["", "application/x-www-form-urlencoded", "text/plain; charset=utf-8", 'text/plain; charset="UTF-8"'],
)
def test_utf8_or_no_charset_reaches_the_application(content_type):
    reached = []

    def application(environ, start_response):
        reached.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b"ok"]

    environ = {"CONTENT_TYPE": content_type, "PATH_INFO": "/x"}
    assert list(input_guards.refuse_foreign_charsets(application)(environ, lambda *args: None)) == [b"ok"]
    assert reached == ["/x"]


# --- Titles are one line ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("title", ["Down\nnow", "Down\r\nnow", "Down\rnow", "Down\u2028now", "Down\x85now", "A\x0bB"])
def test_draft_title_with_a_line_break_is_refused_with_a_clear_error(responder, api_service, title):
    form = DraftForm(
        {"service": api_service.pk, "title": title, "severity": "minor", "stage": "investigating"},
        user=responder,
        kind=DraftKind.OPEN,
    )
    assert not form.is_valid()
    assert "one line" in " ".join(form.errors["title"])


def test_draft_page_refuses_a_title_with_a_newline(responder, api_service, server_errors):
    response = signed_in(responder).post(
        "/drafts/new/",
        {"service": api_service.pk, "title": "Down\nBcc: x", "severity": "minor", "stage": "investigating"},
    )
    assert response.status_code == 422
    assert "one line" in response.content.decode()
    assert server_errors() == []


def test_sandbox_is_mounted_for_these_tests():
    assert settings.SANDBOX_ENABLED


# --- The admin: malformed ids on every model (incidents/admin_site.py) ------------------------------------------
@pytest.mark.parametrize("value", [" ", "x", "1.5"])
def test_admin_autocomplete_with_an_id_that_is_not_a_number_is_not_a_500(staff, value, server_errors):
    response = signed_in(staff).post("/admin/incidents/membership/add/", {"user": value, "team": "", "role": ""})
    assert response.status_code == 200
    assert server_errors() == []


@pytest.mark.parametrize("path", ["/admin/incidents/team/", "/admin/axes/accesslog/"])
def test_admin_action_on_a_selected_id_that_is_not_a_number_is_not_a_500(staff, path, server_errors):
    data = {"action": "delete_selected", "_selected_action": "", "index": "0", "select_across": "0"}
    response = signed_in(staff).post(path, data, follow=True)
    assert response.status_code == 200
    assert "not an id" in response.content.decode()
    assert server_errors() == []
