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


def _p3(script: str, out_json: Path) -> str:
    """The P3 benches use DATABASE_URL's database + ``_verifybench``: a smoke database of its own, so a real
    ``make bench``'s filled million rows are not refilled."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(os.environ["DATABASE_URL"])
    url = urlunsplit(parts._replace(path=parts.path.rstrip("/") + "_p3smoke"))
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "bench" / script), "--rows", "300", "--json", str(out_json)],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "DATABASE_URL": url, "BENCH_EXPORT_MEASURE": ""},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_the_verify_and_export_benches_write_their_goal_rows_for_the_table(tmp_path):
    import json

    out = _p3("bench_audit_verify.py", tmp_path / "verify.json")
    assert "P3 verify 300 events: background job" in out and "baseline v1 ORM loop" in out
    out = _p3("bench_audit_export.py", tmp_path / "export.json")
    assert "P3 export JSONL 300 rows" in out and "P3 export CSV 300 rows" in out
    rows = [*json.loads((tmp_path / "verify.json").read_text()), *json.loads((tmp_path / "export.json").read_text())]
    assert [row["goal"].split(" ")[:3] for row in rows] == [
        ["P3", "verify", "300"],
        ["P3", "export", "JSONL"],
        ["P3", "export", "CSV"],
    ]
    assert all({"measured", "baseline", "ratio", "met"} <= set(row) for row in rows)


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
