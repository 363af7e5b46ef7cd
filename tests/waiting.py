"""Waiting on an observable condition, never for a fixed time: a sleep proves nothing happened, a condition
proves something did."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest


def wait_for(
    condition: Callable[[], Any],
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "",
    context: Callable[[], str] | None = None,
) -> Any:
    """Poll ``condition`` until it returns something truthy, and return that; fail the test at the deadline,
    with ``context()`` (a process's log, say) under the message."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(
                f"timed out after {timeout:g} s waiting for {what or condition}" + (f"\n{context()}" if context else "")
            )
        time.sleep(interval)
