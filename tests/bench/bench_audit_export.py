"""Benchmark: the audit export (CSV and JSON Lines) at a million rows: rows per second and peak memory, beside the
previous export path (model instances, Python's csv and json.dumps) run on the same rows in the same run.

Not part of the test run. Uses the verify bench's database (DATABASE_URL's name + ``_verifybench``, filled with a
valid chain by ``bench_audit_verify.fill`` when it does not hold ``--rows`` events), as a role that may create it:

    DATABASE_URL=postgres://root@127.0.0.1:5432/isdown_admin .venv/bin/python tests/bench/bench_audit_export.py

The figures are for the export's generator (what the view streams, and the background export writes); peak RSS is
read in a fresh process, before the baseline runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.bench_audit_verify import fill, setup_django  # noqa: E402

GOAL_ROWS_PER_S = 50_000
GOAL_RSS_MB = 150


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: unlike getrusage's maxrss it starts again at exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def consume(chunks) -> tuple[float, int]:
    started = time.perf_counter()
    size = 0
    for chunk in chunks:
        size += len(chunk)
    return time.perf_counter() - started, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--no-baseline", action="store_true", help="skip the previous export path")
    parser.add_argument("--json", help="write the goal rows here for make bench's table (tests/bench/report.py)")
    args = parser.parse_args()
    # A re-run (after the fill) skips migrate: its memory would count in the peak.
    setup_django(migrate=os.environ.get("BENCH_EXPORT_MEASURE") != "1")
    from incidents import audit
    from incidents.models import AuditEvent

    # Reused when filled before (the verify bench adds a checkpoint's worth of events each run).
    if not args.rows <= AuditEvent.objects.count() <= args.rows + 1000:
        fill(args.rows)
        # Measure in a fresh process: the fill's memory would count in the peak.
        os.environ["BENCH_EXPORT_MEASURE"] = "1"
        os.execv(sys.executable, [sys.executable, *sys.argv])  # noqa: S606 (this script, again)
    if os.environ.get("BENCH_EXPORT_MEASURE") != "1":
        os.environ["BENCH_EXPORT_MEASURE"] = "1"
        os.execv(sys.executable, [sys.executable, *sys.argv])  # noqa: S606 (this script, again)
    events = AuditEvent.objects.order_by("-seq")
    results = {}
    for fmt, fast in (("JSONL", audit.fast_jsonl), ("CSV", audit.fast_csv)):
        elapsed, size = consume(fast(events))
        results[fmt] = (elapsed, size)
    peak_mb = peak_rss_mb()
    baselines = {}
    if not args.no_baseline:
        for fmt, old in (("JSONL", audit.iter_jsonl), ("CSV", audit.iter_csv)):
            baselines[fmt] = consume(old(events.iterator(chunk_size=2000)))[0]
    rows = []
    for fmt, (elapsed, size) in results.items():
        rate = args.rows / elapsed
        line = (
            f"P3 export {fmt} {args.rows:,} rows: {elapsed:.1f} s, {rate:,.0f} rows/s, {size / 1e6:.0f} MB, "
            f"peak RSS {peak_mb:.0f} MB (goal ≥ {GOAL_ROWS_PER_S:,} rows/s at ≤ {GOAL_RSS_MB} MB"
        )
        if fmt in baselines:
            old_rate = args.rows / baselines[fmt]
            line += f"; baseline ORM + Python encoders {old_rate:,.0f} rows/s; ratio {rate / old_rate:.1f}x"
        print(line + ")")
        old_text = f"ORM + Python encoders {args.rows / baselines[fmt]:,.0f} rows/s" if fmt in baselines else "not run"
        rows.append(
            {
                "goal": f"P3 export {fmt} ≥ {GOAL_ROWS_PER_S:,} rows/s at ≤ {GOAL_RSS_MB} MB RSS ({args.rows:,} rows)",
                "measured": f"{rate:,.0f} rows/s, peak RSS {peak_mb:.0f} MB",
                "baseline": old_text,
                "ratio": f"{rate / GOAL_ROWS_PER_S:.2f} of the goal",
                "met": rate >= GOAL_ROWS_PER_S and peak_mb <= GOAL_RSS_MB,
            }
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
