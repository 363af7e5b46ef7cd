"""Sandbox fixtures: a registered service, the API called in-process (Django's test client) for validation
tests, and the sandbox over real HTTP (``live_server``) with the real IsDown client for fault tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.test import Client

from incidents.isdown import IsDownClient
from sandbox.registry import register_service

API = "/sandbox/api/v2/incidents"

if not settings.SANDBOX_ENABLED:  # pragma: no cover - only when someone runs the suite against real IsDown
    pytest.skip("the sandbox is not mounted (SANDBOX_ENABLED is off)", allow_module_level=True)


@pytest.fixture
def sandbox_key() -> str:
    return settings.SANDBOX_API_KEY


@pytest.fixture
def sandbox_service(db):
    """Service 1001, "API": the sandbox accepts writes for it."""
    return register_service(1001, "API")


@pytest.fixture
def call(db, sandbox_key) -> Callable[..., Any]:
    """``call(method, path, body=None, raw=None, key=...)``: one in-process API request. ``body`` is sent as
    JSON, ``raw`` as bytes as they are. The test client re-raises any exception, so a 500 fails the test."""
    client = Client()

    def request(method: str, path: str = API, body: Any = None, *, raw: bytes | None = None, key: str | None = ...):
        token = sandbox_key if key is ... else key
        headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token is not None else {}
        data = raw if raw is not None else (json.dumps(body) if body is not None else "")
        return client.generic(method, path, data=data, content_type="application/json", **headers)

    return request


@pytest.fixture
def live_sandbox(live_server) -> Iterator[str]:
    """The sandbox's base URL on a real, threaded HTTP server, with service 1001 registered.

    On teardown it waits for the server's request threads to finish (a hang fault outlives the client's
    timeout), so no request touches the database after the test has given it back."""
    register_service(1001, "API")
    # Only this test's connections: earlier ones (a browser's or a worker's keep-alive) may idle for long.
    before = set(threading.enumerate())
    yield f"{live_server.url}/sandbox"
    for thread in set(threading.enumerate()) - before:
        # socketserver names its per-connection threads after their target.
        if "process_request_thread" in thread.name:
            thread.join(timeout=30)


@pytest.fixture
def isdown(live_sandbox, sandbox_key) -> Iterator[IsDownClient]:
    with IsDownClient(live_sandbox, sandbox_key, timeout=5) as client:
        yield client


@pytest.fixture
def raw_http(live_sandbox, sandbox_key) -> Iterator[httpx.Client]:
    """Plain httpx against the sandbox with the key, for checks below the client's abstractions."""
    with httpx.Client(base_url=live_sandbox, headers={"Authorization": f"Bearer {sandbox_key}"}, timeout=5) as client:
        yield client
