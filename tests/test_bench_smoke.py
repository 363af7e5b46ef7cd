"""The benchmarks of tests/bench still run (tiny sizes, their own databases): each prints its goal table. No timed
assertion: make bench measures, this only keeps the benches from rotting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_bench(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "bench" / script), "--fresh", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.worker
def test_the_publishing_bench_prints_p1a_and_p1b_beside_their_baselines():
    out = run_bench(
        "bench_publishing.py",
        "--n",
        "6",
        "--n1",
        "3",
        "--workers",
        "2",
        "--latency",
        "10",
        "--timeout",
        "120",
        "--database-suffix",
        "_pubsmoke",
    )
    assert "| P1a approve→published p95" in out and "bare keep-alive POST p95" in out
    assert "| P1b burst of 6, 2 workers, 10 ms" in out and "bare httpx, 2 threads" in out


def test_the_pages_bench_prints_every_page_and_the_concurrency_goals():
    out = run_bench(
        "bench_audit_pagination.py",
        "--events",
        "600",
        "--first",
        "300",
        "--incidents",
        "30",
        "--publications",
        "3",
        "--runs",
        "2",
        "--clients",
        "2",
        "--seconds",
        "1",
        "--database-suffix",
        "_pagessmoke",
    )
    assert "| incident page, 3 publications |" in out and "| audit log, label contains |" in out
    assert "P2 dashboard, 2 clients" in out and "bare template view" in out


def test_the_append_bench_prints_the_lock_the_sealer_and_beat_beside_each_other():
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "bench" / "bench_audit_append.py"),
            *("--writers", "2", "--per-writer", "3", "--work-ms", "1", "--beat", "0.2"),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.split()[:1] == ["2"]]
    assert [row[1] for row in rows] == ["lock", "sealer", "beat"]
    assert "verify: OK" in result.stdout
