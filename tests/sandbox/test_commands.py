"""manage.py sandbox_fault / sandbox_requests, the registry, and the drop fallback."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.http import StreamingHttpResponse
from django.test import RequestFactory

from sandbox import faults
from sandbox.models import SandboxFault, SandboxRequest, SandboxService
from sandbox.registry import register_service

from .conftest import API


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_sandbox_fault_status_with_count_and_method(db):
    assert "status 503" in run("sandbox_fault", "--status", "503", "--count", "2", "--method", "post")
    fault = SandboxFault.objects.get()
    assert (fault.kind, fault.status, fault.remaining, fault.method, fault.retry_after) == (
        "status",
        503,
        2,
        "POST",
        None,
    )


def test_sandbox_fault_429_gets_a_retry_after_by_default(db):
    run("sandbox_fault", "--status", "429")
    assert SandboxFault.objects.get().retry_after == 1


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--latency", "250"], ("latency", 250, None)),
        (["--drop"], ("drop", None, None)),
        (["--hang"], ("hang", None, 30.0)),
        (["--hang", "--hang-seconds", "2.5"], ("hang", None, 2.5)),
    ],
)
def test_sandbox_fault_kinds(db, args, expected):
    run("sandbox_fault", *args)
    fault = SandboxFault.objects.get()
    assert (fault.kind, fault.latency_ms, fault.hang_seconds) == expected


@pytest.mark.parametrize(
    "args",
    [
        ["--status", "200"],
        ["--status", "503", "--count", "0"],
        ["--drop", "--retry-after", "5"],
        ["--latency", "10", "--hang-seconds", "3"],
        ["--drop", "--method", "TRACE"],
    ],
)
def test_sandbox_fault_refuses_incoherent_arguments(db, args):
    with pytest.raises(CommandError):
        run("sandbox_fault", *args)
    assert not SandboxFault.objects.exists()


def test_sandbox_fault_lists_and_clears(db):
    assert "No faults queued" in run("sandbox_fault")
    run("sandbox_fault", "--drop", "--count", "3")
    assert "drop, next 3 request(s)" in run("sandbox_fault")
    assert "Cleared 1 fault(s)" in run("sandbox_fault", "--clear")
    assert not SandboxFault.objects.exists()


def test_take_consumes_in_order_and_by_method(db):
    faults.add_fault(kind="status", status=500, method="PATCH")
    faults.add_fault(kind="drop", count=2)
    assert faults.take("GET").kind == "drop"
    assert faults.take("PATCH").status == 500
    assert faults.take("POST").kind == "drop"
    assert faults.take("POST") is None
    assert not SandboxFault.objects.exists()


def test_sandbox_requests_json_and_table(call, sandbox_service, sandbox_key):
    call("POST", API, {"service_id": 1001, "title": "one"})
    call("GET", f"{API}/1", key="bad")
    entries = json.loads(run("sandbox_requests", "--json"))
    assert [(e["method"], e["path"], e["status"]) for e in entries] == [("POST", API, 201), ("GET", f"{API}/1", 401)]
    assert json.loads(entries[0]["body"]) == {"service_id": 1001, "title": "one"}
    assert set(entries[0]) == {"id", "created_at", "method", "path", "body", "status", "fault"}
    table = run("sandbox_requests")
    assert "POST" in table and "401" in table and sandbox_key not in table
    assert [e["status"] for e in json.loads(run("sandbox_requests", "--json", "--limit", "1"))] == [401]
    run("sandbox_requests", "--clear")
    assert not SandboxRequest.objects.exists()


def test_register_service_is_idempotent(db):
    first = register_service(1001, "API")
    assert register_service(1001, "API") == first
    assert SandboxService.objects.get().urlname == "api"
    register_service(1001, "Public API")
    assert SandboxService.objects.get().urlname == "public-api"


def test_seed_demo_registers_services_and_a_second_run_changes_nothing(db, settings):
    settings.SANDBOX_ENABLED = True
    call_command("seed_demo", force=True, stdout=StringIO())
    snapshot = list(SandboxService.objects.values_list("id", "service_id", "name", "urlname"))
    assert [row[1:] for row in snapshot] == [
        (1001, "API", "api"),
        (1002, "Dashboard", "dashboard"),
        (2001, "Pipeline", "pipeline"),
    ]
    call_command("seed_demo", force=True, stdout=StringIO())
    assert list(SandboxService.objects.values_list("id", "service_id", "name", "urlname")) == snapshot


def test_drop_without_a_reachable_socket_cuts_the_answer_short():
    request = RequestFactory().post(API, b"{}", content_type="application/json")
    response = faults.drop_connection(request)
    assert isinstance(response, StreamingHttpResponse)
    assert response["Content-Length"] == "1000"
    chunks = iter(response.streaming_content)
    assert next(chunks) == b"{"
    with pytest.raises(ConnectionAbortedError):
        next(chunks)
