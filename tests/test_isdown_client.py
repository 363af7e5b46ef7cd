"""The IsDown client against respx: what it sends, how it parses, and which error class each failure becomes."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import respx

from incidents.isdown import (
    BadResponse,
    IsDownClient,
    IsDownError,
    NotSent,
    OutcomeUnknown,
    RateLimited,
    Rejected,
    RemoteIncident,
    parse_incident,
    parse_retry_after,
)

BASE = "https://isdown.test"
KEY = "sk-live-very-secret-0123456789"
INCIDENTS = f"{BASE}/api/v2/incidents"


def incident_data(**overrides) -> dict:
    """The documented example response's ``data`` object (create-an-incident.md)."""
    attributes = {
        "url": None,
        "title": "API response times elevated",
        "description": "We are seeing elevated response times on our API.",
        "status": "minor",
        "resolved": False,
        "created_at": "2024-03-15T10:00:00.000Z",
        "resolved_at": None,
        "updated_at": "2024-03-15T10:00:00.000Z",
        "service_id": 1234,
        "service": "My API",
        "service_status_url": None,
        "service_urlname": "my-api",
        "user_generated": False,
        "severity_from_provider": None,
        "components": [],
        "updates": [
            {
                "status": "investigating",
                "created_at": "2024-03-15T10:00:00.000Z",
                "description": "We are seeing elevated response times on our API.",
            }
        ],
        "isdown_url": None,
    }
    attributes.update(overrides)
    return {"id": "55001", "type": "incidents", "attributes": attributes}


HTML_502 = (
    "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>"
)


@pytest.fixture
def api():
    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        yield mock


@pytest.fixture
def client():
    with IsDownClient(BASE, KEY, timeout=10) as c:
        yield c


# --- What goes out ----------------------------------------------------------------------------------------
def test_create_sends_documented_body_with_bearer_key_and_parses_the_example(api, client):
    route = api.post("/api/v2/incidents").respond(201, json={"data": incident_data()})

    incident = client.create_incident(
        service_id=1234,
        title="API response times elevated",
        description="We are seeing elevated response times on our API.",
    )

    request = route.calls.last.request
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {
        "service_id": 1234,
        "title": "API response times elevated",
        "status": "minor",
        "description": "We are seeing elevated response times on our API.",
        "resolution_stage": "investigating",
    }
    assert incident == RemoteIncident(
        id="55001",
        title="API response times elevated",
        description="We are seeing elevated response times on our API.",
        severity="minor",
        resolved=False,
        created_at=datetime(2024, 3, 15, 10, 0, tzinfo=UTC),
        updated_at=datetime(2024, 3, 15, 10, 0, tzinfo=UTC),
        resolved_at=None,
        service_id=1234,
        service_name="My API",
        url=None,
        updates=incident.updates,
    )
    assert incident.stage == "investigating"
    assert incident.updates[0].description == "We are seeing elevated response times on our API."


def test_timeouts_are_explicit_and_connect_is_capped_at_five_seconds(api):
    route = api.get("/api/v2/incidents/55001").respond(200, json={"data": incident_data()})
    with IsDownClient(BASE, KEY, timeout=30) as client:
        client.get_incident("55001")
    timeouts = route.calls.last.request.extensions["timeout"]
    assert timeouts == {"connect": 5.0, "read": 30.0, "write": 30.0, "pool": 30.0}


def test_short_timeout_is_also_the_connect_timeout(api):
    route = api.get("/api/v2/incidents/55001").respond(200, json={"data": incident_data()})
    with IsDownClient(BASE, KEY, timeout=0.5) as client:
        client.get_incident("55001")
    assert route.calls.last.request.extensions["timeout"]["connect"] == 0.5


def test_base_url_path_prefix_is_kept():
    with respx.mock(assert_all_called=True) as mock:
        route = mock.get("http://127.0.0.1:8000/sandbox/api/v2/incidents/7").respond(
            200, json={"data": incident_data()}
        )
        with IsDownClient("http://127.0.0.1:8000/sandbox/", KEY, timeout=1) as client:
            client.get_incident("7")
        assert route.called


def test_update_sends_only_given_fields_as_patch(api, client):
    route = api.patch("/api/v2/incidents/55001").respond(200, json={"data": incident_data()})
    client.update_incident("55001", description="Fix deployed", resolution_stage="monitoring")
    assert route.calls.last.request.method == "PATCH"
    assert json.loads(route.calls.last.request.content) == {
        "description": "Fix deployed",
        "resolution_stage": "monitoring",
    }


def test_update_refuses_unknown_fields_before_sending(client):
    with pytest.raises(TypeError, match="severity"):
        client.update_incident("55001", severity="major")


def test_remote_id_cannot_escape_the_incident_path(api, client):
    route = api.get("/api/v2/incidents/..%2F1").respond(200, json={"data": incident_data()})
    client.get_incident("../1")
    assert route.called


def test_list_incidents_asks_for_the_service_and_keeps_server_order(api, client):
    newer = incident_data()
    newer["id"] = "55002"
    route = api.get("/api/v2/incidents", params={"service_id": "1234"}).respond(
        200, json={"data": [newer, incident_data()]}
    )
    incidents = client.list_incidents(1234)
    assert [incident.id for incident in incidents] == ["55002", "55001"]
    assert route.called


def test_list_incidents_refuses_a_non_list(api, client):
    api.get("/api/v2/incidents").respond(200, json={"data": incident_data()})
    with pytest.raises(BadResponse, match="not a list"):
        client.list_incidents(1234)


@pytest.mark.parametrize("status", [200, 204])
def test_delete_accepts_any_2xx(api, client, status):
    route = api.delete("/api/v2/incidents/55001").respond(status)
    assert client.delete_incident("55001") is None
    assert route.called


def test_delete_of_missing_incident_counts_as_done(api, client):
    api.delete("/api/v2/incidents/55001").respond(404, json={"errors": [{"status": 404, "detail": "Not found"}]})
    assert client.delete_incident("55001") is None


def test_delete_other_4xx_is_rejected(api, client):
    api.delete("/api/v2/incidents/55001").respond(403, json={"errors": [{"status": 403, "detail": "Not yours"}]})
    with pytest.raises(Rejected, match="Not yours"):
        client.delete_incident("55001")


# --- Parsing ----------------------------------------------------------------------------------------------
def test_updates_are_sorted_oldest_first_and_stage_is_the_latest():
    data = incident_data(
        updates=[
            {"status": "resolved", "created_at": "2024-03-15T12:00:00.000Z", "description": "Fixed"},
            {"status": "investigating", "created_at": "2024-03-15T10:00:00.000Z", "description": "Looking"},
            {"status": "identified", "created_at": "2024-03-15T11:00:00.000Z", "description": "Found it"},
        ],
        resolved=True,
        resolved_at="2024-03-15T12:00:00.000Z",
    )
    incident = parse_incident(data)
    assert [update.stage for update in incident.updates] == ["investigating", "identified", "resolved"]
    assert incident.stage == "resolved"
    assert incident.resolved_at == datetime(2024, 3, 15, 12, tzinfo=UTC)


def test_stage_without_updates_is_investigating():
    assert parse_incident(incident_data(updates=[])).stage == "investigating"


def test_timestamps_keep_milliseconds_and_are_utc():
    incident = parse_incident(incident_data(created_at="2024-03-15T10:00:00.123Z"))
    assert incident.created_at == datetime(2024, 3, 15, 10, 0, 0, 123000, tzinfo=UTC)
    assert incident.created_at.utcoffset() == timedelta(0)


def test_integer_id_is_normalised_to_a_string():
    data = incident_data()
    data["id"] = 55001
    assert parse_incident(data).id == "55001"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("attributes"),
        lambda d: d.update(id=None),
        lambda d: d.update(id=True),
        lambda d: d["attributes"].update(resolved="false"),
        lambda d: d["attributes"].update(service_id="1234"),
        lambda d: d["attributes"].update(service_id=True),
        lambda d: d["attributes"].update(created_at="yesterday"),
        lambda d: d["attributes"].update(created_at=None),
        lambda d: d["attributes"].update(title=None),
        lambda d: d["attributes"].update(updates={"status": "investigating"}),
        lambda d: d["attributes"].update(updates=[{"status": "investigating", "created_at": 5}]),
    ],
)
def test_malformed_data_is_bad_response(mutate):
    data = incident_data()
    mutate(data)
    with pytest.raises(BadResponse):
        parse_incident(data)


@pytest.mark.parametrize("body", ["<html>OK</html>", "[]", '{"incident": {}}', '{"data": "55001"}'])
def test_2xx_with_unparseable_body_is_bad_response_with_the_exchange(api, client, body):
    api.post("/api/v2/incidents").respond(201, text=body)
    with pytest.raises(BadResponse) as caught:
        client.create_incident(service_id=1234, title="t")
    assert caught.value.status_code == 201
    assert caught.value.excerpt == body
    assert caught.value.latency_ms is not None


# --- Error classes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "exception", [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"), httpx.PoolTimeout("pool full")]
)
def test_errors_before_sending_are_not_sent(api, client, exception):
    api.post("/api/v2/incidents").mock(side_effect=exception)
    with pytest.raises(NotSent) as caught:
        client.create_incident(service_id=1, title="t")
    assert caught.value.status_code is None
    assert caught.value.exchange is None
    assert type(exception).__name__ in str(caught.value)


@pytest.mark.parametrize(
    "exception",
    [
        httpx.ReadTimeout("read timed out"),
        httpx.WriteTimeout("write timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("connection reset"),
        httpx.WriteError("broken pipe"),
    ],
)
def test_errors_after_sending_are_outcome_unknown(api, client, exception):
    api.post("/api/v2/incidents").mock(side_effect=exception)
    with pytest.raises(OutcomeUnknown) as caught:
        client.create_incident(service_id=1, title="t")
    assert caught.value.status_code is None


@pytest.mark.parametrize("status", [500, 502, 504])
def test_server_errors_with_html_bodies_are_outcome_unknown(api, client, status):
    api.post("/api/v2/incidents").respond(status, text=HTML_502, headers={"Content-Type": "text/html"})
    with pytest.raises(OutcomeUnknown) as caught:
        client.create_incident(service_id=1, title="t")
    assert caught.value.status_code == status
    assert caught.value.excerpt == HTML_502
    assert caught.value.exchange.status_code == status


def test_503_without_retry_after_is_outcome_unknown(api, client):
    api.patch("/api/v2/incidents/1").respond(503, text="<h1>Service Unavailable</h1>")
    with pytest.raises(OutcomeUnknown):
        client.update_incident("1", title="x")


def test_429_with_retry_after_seconds(api, client):
    api.post("/api/v2/incidents").respond(429, headers={"Retry-After": "120"}, json={"errors": []})
    with pytest.raises(RateLimited) as caught:
        client.create_incident(service_id=1, title="t")
    assert caught.value.retry_after == 120.0
    assert caught.value.status_code == 429


def test_429_with_retry_after_http_date(api, client):
    when = datetime.now(UTC) + timedelta(seconds=90)
    api.post("/api/v2/incidents").respond(429, headers={"Retry-After": format_datetime(when, usegmt=True)})
    with pytest.raises(RateLimited) as caught:
        client.create_incident(service_id=1, title="t")
    assert 80 <= caught.value.retry_after <= 90


def test_429_without_retry_after_has_none(api, client):
    api.post("/api/v2/incidents").respond(429, text="slow down")
    with pytest.raises(RateLimited) as caught:
        client.create_incident(service_id=1, title="t")
    assert caught.value.retry_after is None


def test_503_with_retry_after_is_rate_limited_even_with_html_body(api, client):
    api.post("/api/v2/incidents").respond(503, headers={"Retry-After": "7"}, text="<html>maintenance</html>")
    with pytest.raises(RateLimited) as caught:
        client.create_incident(service_id=1, title="t")
    assert caught.value.retry_after == 7.0
    assert caught.value.excerpt == "<html>maintenance</html>"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("0", 0.0),
        ("3.5", 3.5),
        ("-4", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("soon", None),
        ("nan", None),
        (None, None),
    ],
)
def test_parse_retry_after_forms(header, expected):
    assert parse_retry_after(header) == expected


def test_parse_retry_after_date_is_relative_to_now():
    now = datetime(2015, 10, 21, 7, 27, tzinfo=UTC)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 60.0


@pytest.mark.parametrize(
    ("status", "detail"),
    [
        (422, "Status must be 'minor' or 'major'"),
        (401, "Invalid API key"),
        (404, "Incident not found"),
        (403, "You do not own this service"),
    ],
)
def test_other_4xx_are_rejected_with_isdowns_detail(api, client, status, detail):
    body = {"errors": [{"status": status, "title": "Error", "detail": detail}]}
    api.post("/api/v2/incidents").respond(status, json=body)
    with pytest.raises(Rejected) as caught:
        client.create_incident(service_id=1, title="t")
    assert caught.value.status_code == status
    assert caught.value.detail == detail
    assert json.loads(caught.value.excerpt) == body


def test_4xx_without_json_still_has_a_detail(api, client):
    api.post("/api/v2/incidents").respond(400, text="<html>Bad Request</html>")
    with pytest.raises(Rejected) as caught:
        client.create_incident(service_id=1, title="t")
    assert caught.value.detail == "Bad Request"


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_rejected_not_followed(api, client, status):
    api.post("/api/v2/incidents").respond(status, headers={"Location": "https://elsewhere.test/api/v2/incidents"})
    with pytest.raises(Rejected) as caught:
        client.create_incident(service_id=1, title="t")
    assert caught.value.status_code == status
    assert "elsewhere.test" in caught.value.detail
    assert len(api.calls) == 1


def test_excerpt_is_capped_at_2000_characters(api, client):
    api.post("/api/v2/incidents").respond(500, text="x" * 5000)
    with pytest.raises(OutcomeUnknown) as caught:
        client.create_incident(service_id=1, title="t")
    assert caught.value.excerpt == "x" * 2000


def test_every_error_is_an_isdown_error():
    for cls in (NotSent, RateLimited, Rejected, OutcomeUnknown, BadResponse):
        assert issubclass(cls, IsDownError)


def test_success_result_carries_the_exchange(api, client):
    api.post("/api/v2/incidents").respond(201, json={"data": incident_data()})
    result = client.send("POST", "/api/v2/incidents", {"service_id": 1234, "title": "t"})
    assert result.exchange.status_code == 201
    assert result.exchange.latency_ms >= 0
    assert '"id":"55001"' in result.exchange.excerpt.replace(" ", "")
    assert result.incident.id == "55001"


# --- The key stays secret ---------------------------------------------------------------------------------
def test_key_never_in_reprs_messages_or_logs(api, client, caplog):
    caplog.set_level(logging.DEBUG)
    # A hostile server echoing the key back must not get it into our records either.
    api.post("/api/v2/incidents").respond(
        422, json={"errors": [{"status": 422, "detail": f"bad key {KEY}"}]}, headers={"X-Echo": KEY}
    )
    api.get("/api/v2/incidents/1").mock(side_effect=httpx.ConnectError(f"refused {KEY}"))
    api.get("/api/v2/incidents/2").respond(302, headers={"Location": f"https://x.test/?k={KEY}"})
    errors: list[IsDownError] = []
    for call in (
        lambda: client.create_incident(service_id=1, title="t"),
        lambda: client.get_incident("1"),
        lambda: client.get_incident("2"),
    ):
        with pytest.raises(IsDownError) as caught:
            call()
        errors.append(caught.value)
    texts = [repr(client), *caplog.messages]
    for error in errors:
        texts += [str(error), repr(error), error.detail, error.excerpt, repr(error.exchange), repr(error.args)]
    assert errors[0].detail == "bad key [redacted]"
    for text in texts:
        assert KEY not in text
    assert any("POST /api/v2/incidents -> 422" in message for message in caplog.messages)
