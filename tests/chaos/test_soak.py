"""A small chaos soak inside ``make test``: the driver (tests/chaos/soak.py) as a subprocess, with a world of its own
(database, Redis, gunicorn, workers, beat), so nothing here touches the test database or the shared Redis.
``make chaos`` runs the full one (N=300 by default)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.chaos

ROOT = Path(__file__).resolve().parents[2]
# The driver builds its own database and Redis URLs; nothing of this run's may leak into it.
NOT_INHERITED = {"DATABASE_URL", "REDIS_URL", "ISDOWN_API_URL", "ISDOWN_API_KEY", "SITE_URL", "DJANGO_SETTINGS_MODULE"}


def run_soak(*args: str, limit_seconds: float) -> tuple[int, str]:
    env = {key: value for key, value in os.environ.items() if key not in NOT_INHERITED}
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.chaos.soak", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=limit_seconds)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)  # the driver stops its processes and drops its database
        output, _ = process.communicate(timeout=60)
        pytest.fail(f"the soak did not finish in {limit_seconds:g} s:\n{output[-6000:]}")
    return process.returncode, output


def test_a_small_soak_publishes_every_approved_change_once_in_order_or_tells_a_human():
    code, output = run_soak(
        "--n", "30", "--seed", "20261127", "--workers", "2", "--minutes-limit", "3", limit_seconds=240
    )

    assert "CHAOS SOAK" in output and "undetected duplicates" in output, output[-6000:]
    assert code == 0, output[-12000:]
