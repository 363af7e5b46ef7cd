"""Arbitrary input at the sandbox's endpoints: never a 500, always a success or a documented error."""

from __future__ import annotations

import json
from urllib.parse import quote

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from incidents.isdown import parse_incident

from .conftest import API

PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    # One database transaction for all examples of a test is fine: the property is about answers, not state.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Text including what PostgreSQL and UTF-8 refuse: NUL and lone surrogates.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40) | st.sampled_from(
    ["", " ", "\x00", "\ud800", "x" * 256, "minor", "major", "investigating", "resolved"]
)
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | any_text
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(any_text, children, max_size=3),
    max_leaves=8,
)
field_values = json_values | st.sampled_from([1001, 1002, 4242, 0, -1, 2**63, True, "1001"])
incident_bodies = st.fixed_dictionaries(
    {},
    optional={
        "service_id": field_values,
        "title": field_values,
        "status": field_values,
        "description": field_values,
        "resolution_stage": field_values,
    },
)
bodies = incident_bodies | json_values
# What can appear in a URL: any text, or any bytes (invalid UTF-8 included), percent-encoded.
url_parts = st.text(max_size=40).map(lambda text: quote(text, safe="")) | st.binary(max_size=20).map(
    lambda raw: quote(raw, safe="")
)


def assert_documented_error(response, allowed: set[int]) -> None:
    assert response.status_code in allowed, (response.status_code, response.content[:300])
    payload = response.json()
    errors = payload["errors"]
    assert isinstance(errors, list) and len(errors) == 1
    assert errors[0]["status"] == response.status_code
    assert isinstance(errors[0]["title"], str) and isinstance(errors[0]["detail"], str)


@PROPERTY_SETTINGS
@given(body=bodies)
def test_create_answers_201_with_an_incident_or_422(call, sandbox_service, body):
    response = call("POST", API, raw=json.dumps(body).encode())
    if response.status_code == 201:
        incident = parse_incident(response.json()["data"])
        assert incident.service_id == body["service_id"] == 1001
        assert incident.title == body["title"]
    else:
        assert_documented_error(response, {422})


@PROPERTY_SETTINGS
@given(raw=st.binary(max_size=200))
def test_raw_bytes_never_break_create(call, sandbox_service, raw):
    response = call("POST", API, raw=raw)
    assert response.status_code in {201, 422}
    if response.status_code == 422:
        assert_documented_error(response, {422})


@PROPERTY_SETTINGS
@given(body=bodies)
def test_patch_answers_200_or_422(call, sandbox_service, body):
    incident_id = call("POST", API, {"service_id": 1001, "title": "target"}).json()["data"]["id"]
    response = call("PATCH", f"{API}/{incident_id}", raw=json.dumps(body).encode())
    if response.status_code == 200:
        incident = parse_incident(response.json()["data"])
        sent_update = isinstance(body, dict) and "resolution_stage" in body
        assert len(incident.updates) == (2 if sent_update else 1)
    else:
        assert_documented_error(response, {422})


@PROPERTY_SETTINGS
@given(incident_id=url_parts, method=st.sampled_from(["GET", "PATCH", "DELETE"]), body=bodies)
@example(incident_id="%2F%0A", method="GET", body={})  # once an HTML 404: "/\n" matched no API route
def test_any_id_is_found_missing_or_refused(call, sandbox_service, incident_id, method, body):
    response = call(method, f"{API}/{incident_id}", raw=json.dumps(body).encode())
    assert response.status_code in {200, 204, 404, 422}
    if response.status_code >= 400:
        assert_documented_error(response, {404, 422})


@PROPERTY_SETTINGS
@given(service_id=url_parts)
def test_any_list_query_is_listed_or_refused(call, sandbox_service, service_id):
    response = call("GET", f"{API}?service_id={service_id}")
    if response.status_code == 200:
        assert isinstance(response.json()["data"], list)
    else:
        assert_documented_error(response, {422})
