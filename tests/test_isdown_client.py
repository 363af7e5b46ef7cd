"""The IsDown client against respx: the exact requests it builds and sends, how it parses (tolerantly), how it
follows a paginated list, and which error class each failure becomes. The deadline needs a real socket: it is
tested against the sandbox in tests/sandbox/test_live.py."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import respx

from incidents import isdown
from incidents.isdown import (
    BadResponse,
    IsDownClient,
    IsDownError,
    NotSent,
    OutcomeUnknown,
    RateLimited,
    Rejected,
    RemoteIncident,
    Request,
    parse_incident,
    parse_retry_after,
)

BASE = "https://isdown.test"
KEY = "sk-live-very-secret-0123456789"
INCIDENTS = f"{BASE}/api/v2/incidents"
# Any create will do where only the answer matters.
CREATE = isdown.create_request(service_id=1, title="t", severity="minor", description="", stage="investigating")


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


def listed(incident_id: str, created_at: str) -> dict:
    data = incident_data(created_at=created_at)
    data["id"] = incident_id
    return data


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


# --- The requests it builds -------------------------------------------------------------------------------
def test_create_request_is_compact_json_with_every_field_in_documented_order():
    request = isdown.create_request(
        service_id=1234,
        title="API response times elevated",
        severity="minor",
        description="We are seeing elevated response times on our API.",
        stage="investigating",
    )
    assert (request.method, request.path) == ("POST", "/api/v2/incidents")
    assert request.body == (
        '{"service_id":1234,"title":"API response times elevated","status":"minor",'
        '"description":"We are seeing elevated response times on our API.","resolution_stage":"investigating"}'
    )


def test_request_body_keeps_non_ascii_text_as_utf8():
    request = isdown.create_request(
        service_id=7, title="Paiements échoués ✗", severity="major", description="Ödeme — 決済", stage="identified"
    )
    assert request.body == (
        '{"service_id":7,"title":"Paiements échoués ✗","status":"major",'
        '"description":"Ödeme — 決済","resolution_stage":"identified"}'
    )
    assert request.content == request.body.encode("utf-8")


@pytest.mark.parametrize(
    ("fields", "body"),
    [
        ({"title": "API slow"}, '{"title":"API slow"}'),
        ({"severity": "major"}, '{"status":"major"}'),
        (
            {"description": "Fix deployed", "stage": "monitoring"},
            '{"description":"Fix deployed","resolution_stage":"monitoring"}',
        ),
        (
            {"stage": "resolved", "description": "Fixed", "severity": "minor", "title": "Done"},
            '{"title":"Done","status":"minor","description":"Fixed","resolution_stage":"resolved"}',
        ),
    ],
)
def test_update_request_is_a_patch_of_only_the_given_fields_in_fixed_order(fields, body):
    request = isdown.update_request("55001", **fields)
    assert (request.method, request.path, request.body) == ("PATCH", "/api/v2/incidents/55001", body)


def test_update_request_refuses_unknown_fields():
    with pytest.raises(TypeError, match="resolution_stage"):
        isdown.update_request("55001", resolution_stage="monitoring")


def test_update_request_path_quotes_the_remote_id():
    assert isdown.update_request("../1", title="x").path == "/api/v2/incidents/..%2F1"


def test_request_sha256_binds_method_path_and_the_exact_body_bytes():
    request = isdown.create_request(service_id=1, title="Outage", severity="minor", description="", stage="resolved")
    expected = hashlib.sha256(b"POST /api/v2/incidents\n" + request.body.encode("utf-8")).hexdigest()
    assert request.sha256 == expected

    one_byte_off = Request(request.method, request.path, request.body.replace("Outage", "Outagf"))
    same_json_other_spacing = Request(request.method, request.path, request.body.replace(":", ": ", 1))
    assert same_json_other_spacing.json() == request.json()  # what the server would read is identical...
    others = {
        one_byte_off.sha256,
        same_json_other_spacing.sha256,  # ...but the approval binds the bytes
        Request("PATCH", request.path, request.body).sha256,
        Request(request.method, "/api/v2/incidents/1", request.body).sha256,
    }
    assert request.sha256 not in others
    assert len(others) == 4


def test_requests_sha256_is_ordered_by_position_not_by_input_order():
    first = isdown.create_request(service_id=1, title="a", severity="minor", description="", stage="investigating")
    second = isdown.update_request("9", title="b")
    combined = isdown.requests_sha256([(0, first.sha256), (1, second.sha256)])
    assert isdown.requests_sha256([(1, second.sha256), (0, first.sha256)]) == combined
    assert combined == hashlib.sha256(f"0 {first.sha256}\n1 {second.sha256}".encode()).hexdigest()
    # The same requests at other positions are a different set to approve.
    assert isdown.requests_sha256([(0, second.sha256), (1, first.sha256)]) != combined


# --- What goes out ----------------------------------------------------------------------------------------
def test_create_sends_documented_body_with_bearer_key_and_parses_the_example(api, client):
    route = api.post("/api/v2/incidents").respond(201, json={"data": incident_data()})
    create = isdown.create_request(
        service_id=1234,
        title="API response times elevated",
        severity="minor",
        description="We are seeing elevated response times on our API.",
        stage="investigating",
    )

    incident = client.send(create).incident

    request = route.calls.last.request
    assert request.method == "POST"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.content == create.body.encode("utf-8")  # byte for byte what was approved
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
    assert incident.raw == incident_data()


def test_base_url_path_prefix_is_kept():
    with respx.mock(assert_all_called=True) as mock:
        route = mock.get("http://127.0.0.1:8000/sandbox/api/v2/incidents/7").respond(
            200, json={"data": incident_data()}
        )
        with IsDownClient("http://127.0.0.1:8000/sandbox/", KEY, timeout=1) as client:
            client.get_incident("7")
        assert route.called


def test_update_is_sent_as_a_patch_of_exactly_the_built_body(api, client):
    route = api.patch("/api/v2/incidents/55001").respond(200, json={"data": incident_data()})
    update = isdown.update_request("55001", description="Fix deployed", stage="monitoring")
    client.send(update)
    assert route.calls.last.request.method == "PATCH"
    assert route.calls.last.request.content == b'{"description":"Fix deployed","resolution_stage":"monitoring"}'


def test_a_get_sends_no_body_and_no_content_type(api, client):
    route = api.get("/api/v2/incidents/55001").respond(200, json={"data": incident_data()})
    client.get_incident("55001")
    assert route.calls.last.request.content == b""
    assert "Content-Type" not in route.calls.last.request.headers


def test_remote_id_cannot_escape_the_incident_path(api, client):
    route = api.get("/api/v2/incidents/..%2F1").respond(200, json={"data": incident_data()})
    client.get_incident("../1")
    assert route.called


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


# --- Listing ----------------------------------------------------------------------------------------------
def test_list_incidents_asks_for_the_service_and_keeps_server_order(api, client):
    route = api.get("/api/v2/incidents", params__eq={"service_id": "1234"}).respond(
        200, json={"data": [listed("55002", "2024-03-15T11:00:00Z"), listed("55001", "2024-03-15T10:00:00Z")]}
    )
    listing = client.list_incidents(1234)
    assert [incident.id for incident in listing.incidents] == ["55002", "55001"]
    assert (listing.complete, listing.pages) == (True, 1)
    assert route.call_count == 1


def test_list_incidents_refuses_a_non_list(api, client):
    api.get("/api/v2/incidents").respond(200, json={"data": incident_data()})
    with pytest.raises(BadResponse, match="not a list"):
        client.list_incidents(1234)


def test_list_incidents_refuses_a_page_with_a_malformed_incident(api, client):
    bad = listed("55001", "2024-03-15T10:00:00Z")
    bad["attributes"]["resolved"] = "no"
    api.get("/api/v2/incidents").respond(200, json={"data": [bad]})
    with pytest.raises(BadResponse, match="resolved") as caught:
        client.list_incidents(1234)
    assert caught.value.status_code == 200


@pytest.mark.parametrize(
    ("base", "next_link", "followed"),
    [
        (BASE, "/api/v2/incidents?service_id=1234&page=2", f"{BASE}/api/v2/incidents"),
        (BASE, f"{BASE}/api/v2/incidents?service_id=1234&page=2", f"{BASE}/api/v2/incidents"),
        (
            "http://127.0.0.1:8000/sandbox",
            "/sandbox/api/v2/incidents?service_id=1234&page=2",
            "http://127.0.0.1:8000/sandbox/api/v2/incidents",
        ),
    ],
)
def test_list_follows_a_next_link_on_the_api_relative_or_absolute(base, next_link, followed):
    with respx.mock(assert_all_called=True) as mock:
        second = mock.get(followed, params__eq={"service_id": "1234", "page": "2"}).respond(
            200, json={"data": [listed("1", "2024-03-15T10:00:00Z")], "links": {"next": None}}
        )
        mock.get(followed, params__eq={"service_id": "1234"}).respond(
            200, json={"data": [listed("2", "2024-03-15T11:00:00Z")], "links": {"next": next_link}}
        )
        with IsDownClient(base, KEY, timeout=1) as client:
            listing = client.list_incidents(1234)
    assert [incident.id for incident in listing.incidents] == ["2", "1"]
    assert (listing.complete, listing.pages, listing.reason) == (True, 2, "read to the end")
    assert second.calls.last.request.headers["Authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize(
    "next_link",
    [
        "https://elsewhere.test/api/v2/incidents?service_id=1234&page=2",  # another host
        "//elsewhere.test/api/v2/incidents?service_id=1234&page=2",  # another host, scheme-relative
        "http://isdown.test/api/v2/incidents?service_id=1234&page=2",  # another scheme: the key in clear text
        "https://isdown.test:8443/api/v2/incidents?page=2",  # another port
        "https://isdown.test/admin/incidents?page=2",  # the right host, outside the API
        "/account/api-keys?page=2",  # relative, outside the API
        "https://isdown.test/api/v2/incidents/../../admin/x?page=2",  # dot segments that leave the API
        "/api/v2/incidentsX?page=2",  # a look-alike path
        {"href": f"{INCIDENTS}?service_id=1234&page=2"},  # a JSON:API link object: not a string
        ["/api/v2/incidents?page=2"],
        2,
    ],
)
def test_list_does_not_follow_a_next_link_it_cannot_trust(next_link):
    with respx.mock(assert_all_called=False) as mock:
        first = mock.get(INCIDENTS, params__eq={"service_id": "1234"}).respond(
            200, json={"data": [listed("2", "2024-03-15T11:00:00Z")], "links": {"next": next_link}}
        )
        anything_else = mock.route().respond(200, json={"data": [], "links": {"next": None}})
        with IsDownClient(BASE, KEY, timeout=1) as client:
            listing = client.list_incidents(1234)
    assert first.call_count == 1
    assert not anything_else.called  # the key went nowhere else
    assert [incident.id for incident in listing.incidents] == ["2"]
    assert listing.complete is False
    assert listing.reason == "the next page is not on IsDown's API"


@pytest.mark.parametrize("links", [None, {}, {"next": None}, {"next": ""}])
def test_list_without_a_next_link_is_complete(api, client, links):
    body = {"data": [listed("1", "2024-03-15T10:00:00Z")]} | ({} if links is None else {"links": links})
    api.get("/api/v2/incidents").respond(200, json=body)
    listing = client.list_incidents(1234)
    assert (listing.complete, listing.pages, len(listing.incidents)) == (True, 1, 1)


def test_list_in_oldest_first_order_reads_on_past_since(api, client):
    # Reaching back past ``since`` proves nothing unless the list is newest first: keep reading.
    second = api.get("/api/v2/incidents", params__eq={"service_id": "1234", "page": "2"}).respond(
        200, json={"data": [listed("3", "2024-03-15T12:00:00Z")], "links": {"next": None}}
    )
    api.get("/api/v2/incidents", params__eq={"service_id": "1234"}).respond(
        200,
        json={
            "data": [listed("1", "2024-03-15T10:00:00Z"), listed("2", "2024-03-15T11:00:00Z")],
            "links": {"next": "/api/v2/incidents?service_id=1234&page=2"},
        },
    )
    listing = client.list_incidents(1234, since=datetime(2024, 3, 15, 11, 30, tzinfo=UTC))
    assert second.called
    assert [incident.id for incident in listing.incidents] == ["1", "2", "3"]
    assert (listing.complete, listing.pages) == (True, 2)


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


def test_updates_with_equal_times_keep_server_order():
    same = "2024-03-15T10:00:00.000Z"
    data = incident_data(
        updates=[
            {"status": "investigating", "created_at": same, "description": "first"},
            {"status": "identified", "created_at": same, "description": "second"},
        ]
    )
    assert [update.description for update in parse_incident(data).updates] == ["first", "second"]


@pytest.mark.parametrize("updates", [[], None])
def test_stage_without_updates_is_investigating(updates):
    incident = parse_incident(incident_data(updates=updates))
    assert incident.updates == ()
    assert incident.stage == "investigating"


def test_timestamps_keep_milliseconds_and_are_utc():
    incident = parse_incident(incident_data(created_at="2024-03-15T10:00:00.123Z"))
    assert incident.created_at == datetime(2024, 3, 15, 10, 0, 0, 123000, tzinfo=UTC)
    assert incident.created_at.utcoffset() == timedelta(0)


def test_timestamps_with_an_offset_or_none_are_read_as_utc():
    incident = parse_incident(incident_data(created_at="2024-03-15T12:00:00+02:00", updated_at="2024-03-15T10:00:00"))
    assert incident.created_at == incident.updated_at == datetime(2024, 3, 15, 10, tzinfo=UTC)
    assert incident.created_at.tzinfo is UTC


def test_integer_id_is_normalised_to_a_string():
    data = incident_data()
    data["id"] = 55001
    assert parse_incident(data).id == "55001"


def test_unknown_values_of_documented_types_are_kept_as_sent(api, client):
    long_title = "Checkout " + "x" * 391
    data = incident_data(
        title=long_title,
        status="critical",
        updates=[{"status": "postmortem", "created_at": "2024-03-15T10:00:00.000Z", "description": "Written up"}],
        components=[{"name": "EU"}],
        brand_new_attribute={"nested": True},
    )
    api.get("/api/v2/incidents/55001").respond(200, json={"data": data})
    incident = client.get_incident("55001")
    assert len(incident.title) == 400 and incident.title == long_title
    assert incident.severity == "critical"
    assert incident.stage == "postmortem"
    assert incident.raw == data  # the whole data object, unknown attributes included


def test_null_strings_are_read_as_empty():
    incident = parse_incident(incident_data(title=None, description=None, service=None, status=None))
    assert (incident.title, incident.description, incident.service_name, incident.severity) == ("", "", "", "")


def test_nul_characters_are_replaced_everywhere_postgresql_would_refuse_them(api, client):
    data = incident_data(
        title="API\x00 slow",
        description="before\x00after",
        updates=[{"status": "investigating", "created_at": "2024-03-15T10:00:00.000Z", "description": "a\x00b"}],
        components=[{"name\x00": "EU\x00"}],
    )
    api.get("/api/v2/incidents/55001").respond(200, json={"data": data})
    incident = client.get_incident("55001")
    assert incident.title == "API\ufffd slow"
    assert incident.description == "before\ufffdafter"
    assert incident.updates[0].description == "a\ufffdb"
    assert incident.raw["attributes"]["description"] == "before\ufffdafter"
    assert incident.raw["attributes"]["components"] == [{"name\ufffd": "EU\ufffd"}]
    assert "\x00" not in json.dumps(incident.raw, ensure_ascii=False)


def test_lone_surrogates_are_replaced_so_the_text_can_be_stored(api, client):
    # "\ud800" is valid JSON but no UTF-8 can hold it.
    body = json.dumps({"data": incident_data(title="x\ud800y", description="\udfff")})
    api.get("/api/v2/incidents/55001").respond(200, text=body, headers={"Content-Type": "application/json"})
    incident = client.get_incident("55001")
    for text in (incident.title, incident.description, incident.raw["attributes"]["title"]):
        text.encode("utf-8")  # raises on a lone surrogate
    assert incident.title.startswith("x") and incident.title.endswith("y") and len(incident.title) == 3


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("attributes"),
        lambda d: d.update(id=None),
        lambda d: d.update(id=True),
        lambda d: d.update(id=""),
        lambda d: d.update(id="1" * 65),
        lambda d: d["attributes"].update(resolved="false"),
        lambda d: d["attributes"].update(resolved=None),
        lambda d: d["attributes"].update(service_id="1234"),
        lambda d: d["attributes"].update(service_id=True),
        lambda d: d["attributes"].update(created_at="yesterday"),
        lambda d: d["attributes"].update(created_at=None),
        lambda d: d["attributes"].update(created_at=1710496800),
        lambda d: d["attributes"].update(resolved_at="soon"),
        lambda d: d["attributes"].update(title=5),
        lambda d: d["attributes"].update(status=2),
        lambda d: d["attributes"].update(description=["x"]),
        lambda d: d["attributes"].update(service={"name": "My API"}),
        lambda d: d["attributes"].update(updates={"status": "investigating"}),
        lambda d: d["attributes"].update(updates=["investigating"]),
        lambda d: d["attributes"].update(updates=[{"status": "investigating", "created_at": 5}]),
        lambda d: d["attributes"].update(updates=[{"status": 3, "created_at": "2024-03-15T10:00:00Z"}]),
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
        client.send(CREATE)
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
        client.send(CREATE)
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
        client.send(CREATE)
    assert caught.value.status_code is None


@pytest.mark.parametrize("status", [500, 502, 504])
def test_server_errors_with_html_bodies_are_outcome_unknown(api, client, status):
    api.post("/api/v2/incidents").respond(status, text=HTML_502, headers={"Content-Type": "text/html"})
    with pytest.raises(OutcomeUnknown) as caught:
        client.send(CREATE)
    assert caught.value.status_code == status
    assert caught.value.excerpt == HTML_502
    assert caught.value.exchange.status_code == status


def test_503_without_retry_after_is_outcome_unknown(api, client):
    api.patch("/api/v2/incidents/1").respond(503, text="<h1>Service Unavailable</h1>")
    with pytest.raises(OutcomeUnknown):
        client.send(isdown.update_request("1", title="x"))


def test_429_with_retry_after_seconds(api, client):
    api.post("/api/v2/incidents").respond(429, headers={"Retry-After": "120"}, json={"errors": []})
    with pytest.raises(RateLimited) as caught:
        client.send(CREATE)
    assert caught.value.retry_after == 120.0
    assert caught.value.status_code == 429


def test_429_with_retry_after_http_date(api, client):
    when = datetime.now(UTC) + timedelta(seconds=90)
    api.post("/api/v2/incidents").respond(429, headers={"Retry-After": format_datetime(when, usegmt=True)})
    with pytest.raises(RateLimited) as caught:
        client.send(CREATE)
    assert 80 <= caught.value.retry_after <= 90


def test_429_without_retry_after_has_none(api, client):
    api.post("/api/v2/incidents").respond(429, text="slow down")
    with pytest.raises(RateLimited) as caught:
        client.send(CREATE)
    assert caught.value.retry_after is None


def test_503_with_retry_after_is_rate_limited_even_with_html_body(api, client):
    api.post("/api/v2/incidents").respond(503, headers={"Retry-After": "7"}, text="<html>maintenance</html>")
    with pytest.raises(RateLimited) as caught:
        client.send(CREATE)
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
        ("inf", None),
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
        client.send(CREATE)
    assert caught.value.status_code == status
    assert caught.value.detail == detail
    assert json.loads(caught.value.excerpt) == body


def test_4xx_without_json_still_has_a_detail(api, client):
    api.post("/api/v2/incidents").respond(400, text="<html>Bad Request</html>")
    with pytest.raises(Rejected) as caught:
        client.send(CREATE)
    assert caught.value.detail == "Bad Request"


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_rejected_not_followed(api, client, status):
    api.post("/api/v2/incidents").respond(status, headers={"Location": "https://elsewhere.test/api/v2/incidents"})
    with pytest.raises(Rejected) as caught:
        client.send(CREATE)
    assert caught.value.status_code == status
    assert "elsewhere.test" in caught.value.detail
    assert len(api.calls) == 1


def test_excerpt_is_capped_at_2000_characters(api, client):
    api.post("/api/v2/incidents").respond(500, text="x" * 5000)
    with pytest.raises(OutcomeUnknown) as caught:
        client.send(CREATE)
    assert caught.value.excerpt == "x" * 2000


def test_every_error_is_an_isdown_error():
    for cls in (NotSent, RateLimited, Rejected, OutcomeUnknown, BadResponse):
        assert issubclass(cls, IsDownError)


def test_success_result_carries_the_exchange(api, client):
    api.post("/api/v2/incidents").respond(201, json={"data": incident_data()})
    result = client.send(Request("POST", "/api/v2/incidents", '{"service_id":1234,"title":"t"}'))
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
        lambda: client.send(CREATE),
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


# --- Regressions found by review --------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_timestamp_out_of_range_is_bad_response_not_a_crash(value):
    with pytest.raises(BadResponse, match="not an ISO 8601 timestamp"):
        parse_incident(incident_data(created_at=value))


def test_a_host_name_that_cannot_even_be_looked_up_is_not_sent():
    with IsDownClient("http://" + "a" * 64 + ".test", KEY, timeout=1) as client, pytest.raises(NotSent):
        client.get_incident("1")


def test_lone_surrogates_become_the_replacement_character():
    from incidents.isdown import clean_text

    assert clean_text("a\ud800b\x00c") == "a\ufffdb\ufffdc"


def test_error_text_that_postgresql_could_not_store_is_cleaned(api, client):
    api.post("/api/v2/incidents").respond(
        422, content=b'{"errors":[{"detail":"bad\\u0000 \\ud800"}]}', headers={"Content-Type": "application/json"}
    )
    with pytest.raises(Rejected) as caught:
        client.send(CREATE)
    assert "\x00" not in caught.value.detail and "\x00" not in caught.value.excerpt
    caught.value.detail.encode("utf-8")
    caught.value.excerpt.encode("utf-8")


def test_a_request_built_from_a_lone_surrogate_can_still_be_hashed_and_sent():
    request = isdown.create_request(
        service_id=1, title="t\ud800", severity="minor", description="", stage="investigating"
    )
    assert "\ufffd" in request.body and len(request.sha256) == 64


# --- A client is cheap to make (issue 13) -----------------------------------------------------------------------
def test_a_plain_http_client_loads_no_ca_bundle(monkeypatch):
    import ssl

    def refuse(*args, **kwargs):
        raise AssertionError("a CA bundle was loaded for a plain-http client")

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", refuse)
    monkeypatch.setattr(httpx, "create_ssl_context", refuse)
    isdown.IsDownClient("http://127.0.0.1:9/sandbox", "key", 5).close()


def test_https_clients_of_one_process_share_one_tls_context(monkeypatch):
    made = []
    real = httpx.create_ssl_context
    monkeypatch.setattr(isdown, "_shared_tls", None)
    monkeypatch.setattr(httpx, "create_ssl_context", lambda *a, **k: made.append(1) or real(*a, **k))
    first = isdown.IsDownClient("https://isdown.app", "key", 5)
    second = isdown.IsDownClient("https://isdown.app", "key", 5)
    try:
        assert len(made) == 1
        assert first._http._transport._pool._ssl_context is second._http._transport._pool._ssl_context
    finally:
        first.close()
        second.close()
