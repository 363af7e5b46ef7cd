"""Benchmark: the audit-log pages over 1,000,000 events.

Not part of the test run (pyproject ignores tests/bench). It uses its own database, named after the one in
DATABASE_URL with ``_bench`` appended (created and migrated if missing), fills it with one
``INSERT ... SELECT generate_series`` (plausible values; the hash chain is not valid and does not need to be),
then times whole requests through the real views, as an auditor, and prints a table.

    DATABASE_URL=postgres://root@127.0.0.1:5432/isdown_admin_h3 REDIS_URL=redis://127.0.0.1:6379/3 \\
        .venv/bin/python tests/bench/bench_audit_pagination.py [--rows 1000000] [--keep]

``--keep`` reuses rows already there when the count matches.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

TEAMS = 10  # Platform is one of ten teams, so a team filter keeps ~10 % of the rows
ACTIONS = (
    "draft.saved",
    "draft.submitted",
    "review.approved",
    "publication.attempt",
    "publication.published",
    "incident.drifted",
    "auth.login",  # team-less, like real sign-ins
)
RARE_ACTION = "membership.changed"  # one row in a thousand
RUNS = 5

# Values as the app writes them: a sign-in is team-less; one row in a thousand is a rare action; a draft id is
# shared by ~20 consecutive events; one event per second, ending now.
FILL_SQL = """
    INSERT INTO incidents_auditevent (seq, created_at, actor_id, actor_label, team_id, team_label, action,
        target_type, target_id, target_label, summary, changes, context, prev_hash, hash)
    SELECT g,
        now() - make_interval(secs => %(rows)s - g),
        (%(user_ids)s::bigint[])[1 + g %% 3],
        (%(user_names)s::text[])[1 + g %% 3],
        CASE WHEN g %% %(n)s = %(n)s - 1 THEN NULL ELSE (%(team_ids)s::bigint[])[1 + (g / 7) %% %(teams)s] END,
        CASE WHEN g %% %(n)s = %(n)s - 1 THEN '' ELSE (%(team_names)s::text[])[1 + (g / 7) %% %(teams)s] END,
        CASE WHEN g %% 1000 = 500 THEN %(rare)s ELSE (%(actions)s::text[])[1 + g %% %(n)s] END,
        CASE WHEN g %% %(n)s = %(n)s - 1 THEN 'user' ELSE 'draft' END,
        (g / 20)::text,
        'Draft ' || (g / 20) || ': API latency above 2 s in eu-west',
        'Event ' || g || ' recorded by the benchmark',
        jsonb_build_object('title', jsonb_build_array('Old ' || g, 'New ' || g)),
        jsonb_build_object('ip', '10.0.0.1', 'request_id', md5(g::text)),
        lpad(to_hex(g - 1), 64, '0'),
        lpad(to_hex(g), 64, '0')
    FROM generate_series(1, %(rows)s) AS g
"""


def bench_database_url() -> str:
    base = os.environ.get("DATABASE_URL", "postgres://root@127.0.0.1:5432/isdown_admin")
    parts = urlsplit(base)
    name = parts.path.lstrip("/") or "isdown_admin"
    return urlunsplit(parts._replace(path="/" + name + "_bench"))


def ensure_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def setup_django() -> None:
    url = bench_database_url()
    ensure_database(url)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "isdown_admin.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.test.utils import setup_test_environment

    setup_test_environment()
    call_command("migrate", verbosity=0)


def fill(rows: int, keep: bool) -> dict:
    from django.contrib.auth import get_user_model
    from django.db import connection

    from incidents.models import AuditEvent, Membership, Role, Team

    teams = [Team.objects.get_or_create(name=name)[0] for name in ["Platform"] + [f"Team {i}" for i in range(1, TEAMS)]]
    User = get_user_model()
    users = [User.objects.get_or_create(username=name)[0] for name in ("approver", "responder", "auditor")]
    auditor = users[2]
    Membership.objects.get_or_create(user=auditor, team=teams[0], defaults={"role": Role.AUDITOR})
    if keep and AuditEvent.objects.count() >= rows:
        print(f"reusing {AuditEvent.objects.count():,} rows")
        return {"teams": teams, "users": users, "auditor": auditor}

    params = {
        "rows": rows,
        "n": len(ACTIONS),
        "teams": TEAMS,
        "rare": RARE_ACTION,
        "team_ids": [t.pk for t in teams],
        "team_names": [t.name for t in teams],
        "user_ids": [u.pk for u in users],
        "user_names": [u.username for u in users],
        "actions": list(ACTIONS),
    }
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE incidents_auditevent")  # the append-only trigger is per row; TRUNCATE is not
        cursor.execute(FILL_SQL, params)
        cursor.execute("ANALYZE incidents_auditevent")
    print(f"inserted {rows:,} rows in {time.perf_counter() - started:.1f} s")
    return {"teams": teams, "users": users, "auditor": auditor}


def time_request(client, url: str) -> tuple[float, float, int]:
    """Median wall time of the whole request, and the SQL time of its audit-table queries."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.get(url)  # warm the cache and the plan
    samples = []
    for _ in range(RUNS):
        started = time.perf_counter()
        response = client.get(url)
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    with CaptureQueriesContext(connection) as queries:
        client.get(url)
    sql_ms = sum(float(q["time"]) for q in queries.captured_queries if "incidents_auditevent" in q["sql"]) * 1000
    return statistics.median(samples), sql_ms, len(response.context["page"].events)


def time_export(client, url: str) -> tuple[float, int, float]:
    """Wall time of a full streamed export, then (second pass) Python's peak allocation while streaming it."""
    started = time.perf_counter()
    lines = sum(chunk.count(b"\n") for chunk in client.get(url).streaming_content)
    elapsed = (time.perf_counter() - started) * 1000
    tracemalloc.start()
    for _chunk in client.get(url).streaming_content:
        pass
    peak = tracemalloc.get_traced_memory()[1] / 1024 / 1024
    tracemalloc.stop()
    return elapsed, lines, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="reuse existing rows when there are enough")
    args = parser.parse_args()

    setup_django()
    from django.test import Client

    world = fill(args.rows, args.keep)
    platform = world["teams"][0]
    client = Client()
    client.force_login(world["auditor"])

    cases = [
        ("first page (my team)", "/audit/"),
        ("deep page (before= near the bottom)", "/audit/?before=2000"),
        ("team filter, first page", f"/audit/?team={platform.pk}"),
        ("team filter, deep page", f"/audit/?team={platform.pk}&before=5000"),
        ("action prefix review.", "/audit/?action=review."),
        ("action prefix, deep page", "/audit/?action=review.&before=5000"),
        (f"rare action prefix ({RARE_ACTION[:11]})", "/audit/?action=membership."),
        ("actor = approver", "/audit/?actor=approver"),
        ("target draft #25000", "/audit/?target_type=draft&target_id=25000"),
        ("time range, one hour, 6 days ago", "/audit/?since={0}&until={1}"),
        ("label contains (no index: worst case)", "/audit/?target=Draft%2049999%3A"),
    ]
    from datetime import timedelta

    from django.utils import timezone

    start = timezone.localtime() - timedelta(days=6)
    window = (start.strftime("%Y-%m-%dT%H:%M"), (start + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))

    print(f"\n{args.rows:,} audit rows; auditor of Platform (1 of {TEAMS} teams); median of {RUNS} requests\n")
    print(f"{'case':<42} {'request ms':>10} {'SQL ms':>8} {'rows':>5}")
    print("-" * 68)
    for label, url in cases:
        ms, sql_ms, count = time_request(client, url.format(*window))
        print(f"{label:<42} {ms:>10.1f} {sql_ms:>8.2f} {count:>5}")

    for query in ("action=review.", f"team={platform.pk}"):
        ms, lines, peak = time_export(client, f"/audit/export.csv?{query}")
        print(f"\nCSV export {query}: {lines - 1:,} rows in {ms:.0f} ms; Python peak while streaming {peak:.1f} MiB")


if __name__ == "__main__":
    main()
