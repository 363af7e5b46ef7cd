"""The emulated API, in-process: documented shape, update and resolve rules, and every 401/404/422 path."""

from __future__ import annotations

import json
import re

import pytest

from incidents.isdown import parse_incident
from sandbox.models import SandboxIncident, SandboxRequest

from .conftest import API

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

# The request and response of create-an-incident.md, verbatim.
DOC_REQUEST = {
    "service_id": 1234,
    "title": "API response times elevated",
    "status": "minor",
    "description": "We are seeing elevated response times on our API.",
    "resolution_stage": "investigating",
}
DOC_RESPONSE = json.loads("""
{
  "data": {
    "id": "55001",
    "type": "incidents",
    "attributes": {
      "url": null,
      "title": "API response times elevated",
      "description": "We are seeing elevated response times on our API.",
      "status": "minor",
      "resolved": false,
      "created_at": "2024-03-15T10:00:00.000Z",
      "resolved_at": null,
      "updated_at": "2024-03-15T10:00:00.000Z",
      "service_id": 1234,
      "service": "My API",
      "service_status_url": null,
      "service_urlname": "my-api",
      "user_generated": false,
      "severity_from_provider": null,
      "components": [],
      "updates": [
        {
          "status": "investigating",
          "created_at": "2024-03-15T10:00:00.000Z",
          "description": "We are seeing elevated response times on our API."
        }
      ],
      "isdown_url": null
    }
  }
}
""")


def shape(value):
    """The JSON types of a document, keys included, values left out."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return type(value).__name__


def create(call, **overrides):
    body = {"service_id": 1001, "title": "API slow", "description": "Looking into it"} | overrides
    response = call("POST", API, body)
    assert response.status_code == 201, response.content
    return response.json()["data"]


def assert_error(response, status: int, detail_fragment: str = "") -> None:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    errors = response.json()["errors"]
    assert len(errors) == 1
    assert errors[0]["status"] == status and isinstance(errors[0]["status"], int)
    assert isinstance(errors[0]["title"], str) and errors[0]["title"]
    assert detail_fragment in errors[0]["detail"]


def test_documented_create_example_returns_the_documented_shape(call, db):
    from sandbox.registry import register_service

    register_service(1234, "My API")
    response = call("POST", API, DOC_REQUEST)

    assert response.status_code == 201
    body = response.json()
    assert shape(body) == shape(DOC_RESPONSE)
    data, expected = body["data"], DOC_RESPONSE["data"]
    assert int(data["id"]) >= 55001
    assert data["type"] == "incidents"
    for key in ("title", "description", "status", "resolved", "service_id", "service", "service_urlname"):
        assert data["attributes"][key] == expected["attributes"][key]
    attributes = data["attributes"]
    assert ISO_MS.match(attributes["created_at"]) and attributes["created_at"] == attributes["updated_at"]
    assert attributes["updates"] == [
        {
            "status": "investigating",
            "created_at": attributes["created_at"],
            "description": "We are seeing elevated response times on our API.",
        }
    ]
    assert parse_incident(data).title == "API response times elevated"


def test_create_defaults_follow_the_docs(call, sandbox_service):
    data = call("POST", API, {"service_id": 1001, "title": "Only a title"}).json()["data"]
    attributes = data["attributes"]
    assert attributes["status"] == "minor"
    assert attributes["description"] == ""
    assert attributes["updates"][0]["status"] == "investigating"
    assert attributes["resolved"] is False


def test_create_resolved_resolves_immediately(call, sandbox_service):
    attributes = create(call, resolution_stage="resolved")["attributes"]
    assert attributes["resolved"] is True
    assert attributes["resolved_at"] == attributes["created_at"]


def test_get_returns_what_create_returned(call, sandbox_service):
    created = create(call)
    response = call("GET", f"{API}/{created['id']}")
    assert response.status_code == 200
    assert response.json()["data"] == created


def test_patch_with_description_and_stage_appends_one_update(call, sandbox_service):
    created = create(call)
    response = call("PATCH", f"{API}/{created['id']}", {"description": "Found it", "resolution_stage": "identified"})
    assert response.status_code == 200
    attributes = response.json()["data"]["attributes"]
    assert [u["status"] for u in attributes["updates"]] == ["investigating", "identified"]
    assert attributes["updates"][-1]["description"] == "Found it"
    assert attributes["description"] == "Found it"
    assert attributes["resolved"] is False
    assert attributes["updated_at"] >= created["attributes"]["updated_at"]
    # Not idempotent, as the real API: the same PATCH again appends again.
    again = call("PATCH", f"{API}/{created['id']}", {"description": "Found it", "resolution_stage": "identified"})
    assert len(again.json()["data"]["attributes"]["updates"]) == 3


def test_patch_title_and_status_alone_change_without_an_update(call, sandbox_service):
    created = create(call)
    response = call("PATCH", f"{API}/{created['id']}", {"title": "API down", "status": "major"})
    attributes = response.json()["data"]["attributes"]
    assert (attributes["title"], attributes["status"]) == ("API down", "major")
    assert len(attributes["updates"]) == 1


def test_patch_resolved_sets_resolved_and_resolved_at(call, sandbox_service):
    created = create(call)
    response = call("PATCH", f"{API}/{created['id']}", {"description": "Fixed", "resolution_stage": "resolved"})
    attributes = response.json()["data"]["attributes"]
    assert attributes["resolved"] is True
    assert ISO_MS.match(attributes["resolved_at"])
    assert attributes["resolved_at"] == attributes["updates"][-1]["created_at"]
    assert parse_incident(response.json()["data"]).stage == "resolved"


@pytest.mark.parametrize(
    "body", [{"description": "half an update"}, {"resolution_stage": "monitoring"}, {"title": "x", "description": "y"}]
)
def test_patch_needs_description_and_stage_together(call, sandbox_service, body):
    created = create(call)
    assert_error(call("PATCH", f"{API}/{created['id']}", body), 422, "together")
    assert len(SandboxIncident.objects.get(pk=created["id"]).updates) == 1


def test_list_is_newest_first_and_per_service(call, sandbox_service):
    from sandbox.registry import register_service

    register_service(1002, "Dashboard")
    first, second = create(call, title="first"), create(call, title="second")
    create(call, service_id=1002, title="other service")
    response = call("GET", f"{API}?service_id=1001")
    assert response.status_code == 200
    assert [item["id"] for item in response.json()["data"]] == [second["id"], first["id"]]
    assert response.json()["links"] == {"next": None}  # one page: the list ends here


def test_list_is_paginated_with_absolute_next_links_to_the_end(call, sandbox_service, settings):
    settings.SANDBOX_PAGE_SIZE = 2
    ids = [create(call, title=f"n{n}")["id"] for n in range(5)]
    seen, url, pages = [], f"{API}?service_id=1001", 0
    while url:
        body = call("GET", url).json()
        seen += [item["id"] for item in body["data"]]
        pages += 1
        url = body["links"]["next"]
        if url:
            assert url.startswith("http://testserver/sandbox/api/v2/incidents?") and "service_id=1001" in url
            url = url.removeprefix("http://testserver")
    assert pages == 3 and seen == ids[::-1]
    assert call("GET", f"{API}?service_id=1001&page=9").json() == {"data": [], "links": {"next": None}}


@pytest.mark.parametrize("page", ["0", "-1", "x", "1" * 30])
def test_a_bad_page_number_is_422(call, sandbox_service, page):
    assert_error(call("GET", f"{API}?service_id=1001&page={page}"), 422, "Page must be a positive integer")


def test_delete_then_404(call, sandbox_service):
    created = create(call)
    assert call("DELETE", f"{API}/{created['id']}").status_code == 204
    assert_error(call("GET", f"{API}/{created['id']}"), 404)
    assert_error(call("DELETE", f"{API}/{created['id']}"), 404)


@pytest.mark.parametrize("key", [None, "", "wrong-key", "sandbox-key-but-longer"])
@pytest.mark.parametrize(("method", "path"), [("POST", API), ("GET", f"{API}/55001"), ("GET", f"{API}?service_id=1")])
def test_missing_or_wrong_key_is_401_in_isdowns_format(call, sandbox_service, key, method, path):
    response = call(method, path, {"service_id": 1001, "title": "x"}, key=key)
    assert_error(response, 401, "API key")
    assert response["WWW-Authenticate"] == "Bearer"
    assert not SandboxIncident.objects.exists()


def test_basic_auth_scheme_is_not_accepted(call, sandbox_service, sandbox_key):
    from django.test import Client

    response = Client().post(API, "{}", content_type="application/json", HTTP_AUTHORIZATION=f"Basic {sandbox_key}")
    assert_error(response, 401)


@pytest.mark.parametrize("incident_id", ["99999999", "abc", "-1", "1.5", "٣"])
@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
def test_unknown_ids_are_404(call, sandbox_service, incident_id, method):
    assert_error(call(method, f"{API}/{incident_id}", {"title": "x"}), 404, "not found")


@pytest.mark.parametrize("path", ["/sandbox/api/v2/teapots", f"{API}/%2F%0A", f"{API}/", "/sandbox/api/%0A"])
def test_unknown_api_paths_are_json_404s(call, sandbox_service, path):
    assert_error(call("GET", path), 404)


def test_wrong_method_is_405_in_isdowns_format(call, sandbox_service):
    assert_error(call("PUT", API, {}), 405)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"service_id": 4242, "title": "x"}, "Service not found"),
        ({"title": "x"}, "Service can't be blank"),
        ({"service_id": "1001", "title": "x"}, "integer"),
        ({"service_id": True, "title": "x"}, "integer"),
        ({"service_id": 1001.0, "title": "x"}, "integer"),
        ({"service_id": None, "title": "x"}, "integer"),
        ({"service_id": 1001}, "Title can't be blank"),
        ({"service_id": 1001, "title": ""}, "Title can't be blank"),
        ({"service_id": 1001, "title": "   "}, "Title can't be blank"),
        ({"service_id": 1001, "title": 5}, "Title must be a string"),
        ({"service_id": 1001, "title": None}, "Title must be a string"),
        ({"service_id": 1001, "title": ["x"]}, "Title must be a string"),
        ({"service_id": 1001, "title": "x" * 256}, "too long"),
        ({"service_id": 1001, "title": "x", "description": "y" * 10_001}, "too long"),
        ({"service_id": 1001, "title": "x", "description": False}, "Description must be a string"),
        ({"service_id": 1001, "title": "x", "status": "critical"}, "Status must be 'minor' or 'major'"),
        ({"service_id": 1001, "title": "x", "status": 1}, "Status must be 'minor' or 'major'"),
        ({"service_id": 1001, "title": "x", "resolution_stage": "fixed"}, "Resolution stage"),
        ({"service_id": 1001, "title": "x", "resolution_stage": None}, "Resolution stage"),
        ({"service_id": 1001, "title": "nul\x00byte"}, "NUL"),
        ({"service_id": 1001, "title": "lone \ud800 surrogate"}, "Unicode"),
    ],
)
def test_invalid_create_input_is_422(call, sandbox_service, body, fragment):
    assert_error(call("POST", API, body), 422, fragment)
    assert not SandboxIncident.objects.exists()


def test_limits_are_inclusive(call, sandbox_service):
    attributes = create(call, title="t" * 255, description="d" * 10_000)["attributes"]
    assert len(attributes["title"]) == 255 and len(attributes["description"]) == 10_000


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b'{"title": NaN}', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'"a string"', "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b"42", "must be a JSON object"),
    ],
)
def test_malformed_or_non_object_bodies_are_422(call, sandbox_service, raw, fragment):
    assert_error(call("POST", API, raw=raw), 422, fragment)


@pytest.mark.parametrize(
    "body",
    [
        {"title": ""},
        {"title": 1},
        {"status": "severe"},
        {"description": "x", "resolution_stage": "done"},
        {"description": 3, "resolution_stage": "resolved"},
    ],
)
def test_invalid_patch_input_is_422_and_changes_nothing(call, sandbox_service, body):
    created = create(call)
    assert_error(call("PATCH", f"{API}/{created['id']}", body), 422)
    assert call("GET", f"{API}/{created['id']}").json()["data"] == created


def test_list_with_bad_service_id_is_422(call, sandbox_service):
    assert_error(call("GET", f"{API}?service_id=abc"), 422)
    assert_error(call("GET", f"{API}?service_id=4242"), 422, "Service not found")


def test_every_request_is_logged_without_the_key(call, sandbox_service, sandbox_key):
    create(call)
    call("GET", f"{API}/1", key="wrong")
    call("POST", API, {"service_id": 1001, "title": f"mentions {sandbox_key}"})
    logged = list(SandboxRequest.objects.order_by("id"))
    assert [(entry.method, entry.status) for entry in logged] == [("POST", 201), ("GET", 401), ("POST", 201)]
    assert json.loads(logged[0].body)["title"] == "API slow"
    assert logged[1].path == f"{API}/1"
    for entry in logged:
        assert sandbox_key not in entry.body and sandbox_key not in entry.path
    assert "[redacted]" in logged[2].body
