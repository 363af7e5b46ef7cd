"""Benchmark: how long ``verify_chain`` (the Verify chain button and ``manage.py verify_audit_log``) takes.

Not part of the test run. Uses its own database (DATABASE_URL's name + ``_verifybench``), fills it with a
valid hash chain computed by audit.py's own rule, then times a full verification. Prints events per second,
so the time for any table size can be read off.

    .venv/bin/python tests/bench/bench_audit_verify.py [--rows 200000]
"""

from __future__ import annotations

import argparse
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


def setup_django(*, migrate: bool = True) -> None:
    base = os.environ.get("DATABASE_URL", "postgres://root@127.0.0.1:5432/isdown_admin")
    parts = urlsplit(base)
    name = parts.path.lstrip("/") or "isdown_admin"
    name = name if name.endswith("_verifybench") else name + "_verifybench"
    url = urlunsplit(parts._replace(path="/" + name))
    ensure_database(url)
    os.environ["DATABASE_URL"] = url
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    setup_django()
    fill(args.rows)
    from incidents.audit import verify_chain

    started = time.perf_counter()
    result = verify_chain()
    elapsed = time.perf_counter() - started
    assert result.ok and result.count == args.rows, result.message()
    print("| events | verify s | events/s | 1,000,000 events (extrapolated) |\n|---:|---:|---:|---:|")
    rate = args.rows / elapsed
    print(f"| {args.rows:,} | {elapsed:.2f} | {rate:,.0f} | {1_000_000 / rate:.1f} s |")


if __name__ == "__main__":
    main()
