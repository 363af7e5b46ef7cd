"""Benchmark: verifying the audit chain at a million events (goal P3: ≤ 10 s), measured, not extrapolated.

Not part of the test run. Uses its own database (DATABASE_URL's name + ``_verifybench``, created if missing, so
run it as a role that may: e.g. DATABASE_URL=postgres://root@127.0.0.1:5432/isdown_admin), fills it with a valid
hash chain computed by audit.py's own rule (once: a database that already holds ``--rows`` events is reused), signs
a checkpoint of its head, then times in the same run:

- the verification as it runs now: ``checkpoints.verify`` (the command, the page and the background job), which
  reads rows as tuples and checks them against every checkpoint;
- the background job end to end (``verifications.run``: segments in ``AUDIT_VERIFY_PROCESSES`` processes, progress
  rows, the verdict as an audit event);
- the baseline: the previous loop (model instances through the ORM, ``compute_hash``).

    .venv/bin/python tests/bench/bench_audit_verify.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.bench_audit_pagination import ensure_database  # noqa: E402

BATCH = 5000
SINK_DIR = ROOT / "var"


def setup_django(*, migrate: bool = True) -> None:
    base = os.environ.get("DATABASE_URL", "postgres://root@127.0.0.1:5432/isdown_admin")
    parts = urlsplit(base)
    name = parts.path.lstrip("/") or "isdown_admin"
    name = name if name.endswith("_verifybench") else name + "_verifybench"
    url = urlunsplit(parts._replace(path="/" + name))
    ensure_database(url)
    os.environ["DATABASE_URL"] = url
    # The bench database's checkpoints go to a sink of its own (the development sink belongs to make run's).
    os.environ["AUDIT_CHECKPOINT_SINK"] = str(SINK_DIR / f"{name}-checkpoints.jsonl")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "isdown_admin.settings")
    import django

    django.setup()
    from django.core.management import call_command

    if migrate:
        call_command("migrate", verbosity=0)


def fill(rows: int) -> None:
    from django.db import connection
    from django.utils import timezone

    from incidents import audit
    from incidents.models import AuditEvent

    with connection.cursor() as cursor:
        # The bench's own database, as its owner or a superuser: the append-only triggers refuse TRUNCATE otherwise.
        for table in ("incidents_auditevent", "incidents_auditcheckpoint"):
            cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER {table}_no_truncate")
            cursor.execute(f"TRUNCATE {table}")
            cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER {table}_no_truncate")
    from django.conf import settings

    Path(settings.AUDIT_CHECKPOINT_SINK).unlink(missing_ok=True)  # its checkpoints went with the table
    start = timezone.now() - timedelta(seconds=rows)
    prev_hash, batch = audit.GENESIS_HASH, []
    started = time.perf_counter()
    for seq in range(1, rows + 1):
        event = AuditEvent(
            seq=seq,
            created_at=start + timedelta(seconds=seq),
            actor_id=seq % 3 + 1,
            actor_label="approver",
            team_id=1,
            team_label="Platform",
            action="draft.saved",
            target_type="draft",
            target_id=str(seq // 20),
            target_label=f"Draft #{seq // 20}: API latency above 2 s",
            summary=f"approver saved draft #{seq // 20}",
            changes={"title": [f"Old {seq}", f"New {seq}"]},
            context={"ip": "10.0.0.1", "request_id": f"{seq:032x}"},
            prev_hash=prev_hash,
        )
        event.hash = prev_hash = audit.compute_hash(prev_hash, event)
        batch.append(event)
        if len(batch) == BATCH:
            AuditEvent.objects.bulk_create(batch)
            batch = []
    AuditEvent.objects.bulk_create(batch)
    print(f"filled {rows:,} chained events in {time.perf_counter() - started:.1f} s")


def baseline_orm_loop() -> int:
    """The verification loop as it was: model instances, compute_hash per row (links and hashes only)."""
    from django.db import transaction

    from incidents import audit
    from incidents.models import AuditEvent

    prev_hash, count = audit.GENESIS_HASH, 0
    with transaction.atomic():
        for event in AuditEvent.objects.order_by("seq").iterator(chunk_size=2000):
            assert event.prev_hash == prev_hash and audit.compute_hash(prev_hash, event) == event.hash
            prev_hash, count = event.hash, count + 1
    return count


def timed(function):
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--json", help="write the goal row here for make bench's table (tests/bench/report.py)")
    args = parser.parse_args()
    setup_django()
    from django.contrib.auth import get_user_model

    from incidents import checkpoints, verifications
    from incidents.models import AuditCheckpoint, AuditEvent, AuditVerification

    # Reused when filled before (each run adds a checkpoint and the job's audit.verified event), and only while its
    # checkpoints are this checkout's key's: a new checkout's development key would rightly fail them all.
    foreign_checkpoints = AuditCheckpoint.objects.exclude(public_key=checkpoints.public_key()).exists()
    if foreign_checkpoints or not args.rows <= AuditEvent.objects.count() <= args.rows + 1000:
        fill(args.rows)
    checkpoints.sign_head("bench")
    elapsed, result = timed(checkpoints.verify)
    assert result.ok and result.count >= args.rows, result.message()
    print(f"verify: {elapsed:.1f} s for {result.count:,} events", flush=True)
    user, _ = get_user_model().objects.get_or_create(username="verify-bench")
    verification = AuditVerification.objects.create(requested_by=user, total=args.rows)
    job_elapsed, verdict = timed(lambda: verifications.run(verification.pk))
    assert verdict == "ok", AuditVerification.objects.get(pk=verification.pk).message
    print(f"background job: {job_elapsed:.1f} s", flush=True)
    from django.conf import settings

    line = (
        f"P3 verify {args.rows:,} events: background job {job_elapsed:.1f} s in {settings.AUDIT_VERIFY_PROCESSES} "
        f"processes (goal ≤ 10 s; one process, as the command: {elapsed:.1f} s"
    )
    baseline = "not run (--no-baseline)"
    if not args.no_baseline:
        base_elapsed, count = timed(baseline_orm_loop)
        assert count >= args.rows
        line += f"; baseline v1 ORM loop {base_elapsed:.1f} s; ratio {base_elapsed / job_elapsed:.1f}x"
        baseline = f"v1 ORM loop {base_elapsed:.1f} s; one process (the command) {elapsed:.1f} s"
    print(line + ")")
    if args.json:
        row = {
            "goal": f"P3 verify {args.rows:,} events ≤ 10 s (background job)",
            "measured": f"{job_elapsed:.1f} s in {settings.AUDIT_VERIFY_PROCESSES} processes",
            "baseline": baseline,
            "ratio": f"{job_elapsed / 10:.2f} of the goal",
            "met": job_elapsed <= 10,
        }
        Path(args.json).write_text(json.dumps([row]))


if __name__ == "__main__":
    main()
