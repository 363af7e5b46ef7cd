"""Benchmark P2: every page's p95 and query count at 10,000 incidents, 100,000 updates and 100,000 then 1,000,000
audit events (flat from one to the other), and under 32 concurrent clients on gunicorn (2 sync workers), the
dashboard's and the audit log's throughput beside a bare template view's, all in the same run.

Not part of the test run (pyproject ignores tests/bench; a tiny one runs in make test, tests/test_bench_smoke.py).
It uses its own database (DATABASE_URL's name + ``_pagesbench``, created and migrated as the owner). Data is made
with bulk SQL (incidents, updates) and COPY (audit events, a VALID chain: each hash computed with audit.py's own
rule, checked at the end with audit.verify_chain over the last rows); an incident has ``--publications``
publications with three attempts each. Pages are timed in-process through the real views and middleware as an
auditor (``--runs`` requests each, after one warm-up); the concurrent part runs gunicorn with a bench-only URL
(``bench_urls.py``: the app's URLs plus ``/bench/bare/``, a template view on the same stack).

    .venv/bin/python tests/bench/bench_audit_pagination.py [--events 1000000] [--incidents 10000] [--keep]
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent

from tests.bench.bench_publishing import (  # noqa: E402
    bench_database_url,
    ensure_database,
    free_port,
    percentile,
    print_table,
    wait_until,
)

TEAMS = 10  # Platform is one of ten teams, so a team filter keeps ~10 % of the rows
ACTIONS = ("draft.saved", "draft.submitted", "review.approved", "publication.sending", "publication.published")
QUERY_GOAL = 15
P95_GOAL_MS = 100.0


def setup(database_url: str, *, fresh: bool = False) -> None:
    os.environ["DATABASE_URL"] = database_url
    # The bench's settings: DEBUG off, as in production, for the in-process pages and gunicorn alike.
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.bench.bench_settings"
    os.environ["LOG_LEVEL"] = "WARNING"
    ensure_database(database_url, fresh=fresh)
    import django

    django.setup()
    from django.core.management import call_command
    from django.template.base import Template
    from django.test.utils import setup_test_environment

    production_render = Template._render
    setup_test_environment()  # the test client's host and the locmem email backend
    # ... but not its instrumentation of template rendering (a signal and a copy of the context for every template,
    # include and partial rendered): production does not pay for it, and it doubled the cost of a page of includes.
    Template._render = production_render
    call_command("migrate", verbosity=0)


def world() -> dict:
    from django.contrib.auth import get_user_model

    from incidents.models import Membership, Role, Service, Team

    teams = [Team.objects.get_or_create(name=name)[0] for name in ["Platform"] + [f"Team {i}" for i in range(1, TEAMS)]]
    User = get_user_model()
    users = {name: User.objects.get_or_create(username=name)[0] for name in ("approver", "responder", "auditor")}
    Membership.objects.get_or_create(user=users["auditor"], team=teams[0], defaults={"role": Role.AUDITOR})
    Membership.objects.get_or_create(user=users["approver"], team=teams[0], defaults={"role": Role.APPROVER})
    Membership.objects.get_or_create(user=users["responder"], team=teams[0], defaults={"role": Role.RESPONDER})
    service, _ = Service.objects.get_or_create(isdown_service_id=1001, defaults={"team": teams[0], "name": "API"})
    return {"teams": teams, "users": users, "service": service}


def fill_incidents(w: dict, incidents: int) -> None:
    from django.db import connection

    from incidents.models import Incident

    have = Incident.objects.count()
    if have >= incidents:
        return
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO incidents_incident (service_id, remote_id, title, severity, stage, description, resolved,
                resolved_at, remote_created_at, remote_updated_at, remote_url, last_synced_at, missing_on_remote,
                created_at, last_activity_at)
            SELECT %(service)s, (100000 + g)::text, 'Incident ' || g || ': API latency above 2 s in eu-west',
                CASE WHEN g %% 5 = 0 THEN 'major' ELSE 'minor' END,
                CASE WHEN g %% 3 = 0 THEN 'resolved' ELSE 'monitoring' END, 'Looking into it.', g %% 3 = 0,
                NULL, now() - make_interval(mins => g), now() - make_interval(mins => g), '', now(), false,
                now() - make_interval(mins => g), now() - make_interval(mins => g)
            FROM generate_series(%(start)s, %(end)s) AS g
            """,
            {"service": w["service"].pk, "start": have + 1, "end": incidents},
        )
        cursor.execute(
            """
            INSERT INTO incidents_incidentupdate (incident_id, position, stage, description, remote_created_at)
            SELECT i.id, p, CASE WHEN p = 0 THEN 'investigating' ELSE 'monitoring' END,
                'Update ' || p || ' of incident ' || i.id, i.remote_created_at + make_interval(mins => p)
            FROM incidents_incident i CROSS JOIN generate_series(0, 9) AS p
            WHERE NOT EXISTS (SELECT 1 FROM incidents_incidentupdate u WHERE u.incident_id = i.id)
            """
        )
        cursor.execute("ANALYZE incidents_incident; ANALYZE incidents_incidentupdate")
    print(f"filled {incidents:,} incidents and {incidents * 10:,} updates in {time.perf_counter() - started:.1f} s")


def busy_incident(w: dict, publications: int):
    """An incident with many publications, each with three attempts (what the incident page must stay fast for)."""
    from django.utils import timezone

    from incidents.models import AttemptKind, AttemptOutcome, Incident, Publication, PublicationState, PublishAttempt
    from tests.publishing.factories import update_publication

    incident = Incident.objects.get(remote_id="100001")
    have = Publication.objects.filter(draft__incident=incident).count()
    for n in range(have, publications):
        publication = update_publication(incident=incident, author=w["users"]["responder"], description=f"Update {n}.")
        Publication.objects.filter(pk=publication.pk).update(
            state=PublicationState.PUBLISHED, published_at=timezone.now(), remote_id="100001"
        )
        PublishAttempt.objects.bulk_create(
            PublishAttempt(
                publication=publication,
                number=k + 1,
                kind=AttemptKind.SEND,
                started_at=timezone.now(),
                finished_at=timezone.now(),
                method="PATCH",
                path="/api/v2/incidents/100001",
                status_code=503 if k < 2 else 200,
                latency_ms=40,
                outcome=AttemptOutcome.RETRY if k < 2 else AttemptOutcome.PUBLISHED,
                response_excerpt="Service Unavailable" if k < 2 else '{"data": {}}',
            )
            for k in range(3)
        )
    return incident


def extend_audit(w: dict, target: int) -> None:
    """Append events up to ``target``, chained by audit.py's own rule, with COPY."""
    from django.db import connection

    from incidents import audit
    from incidents.models import AuditEvent

    head = AuditEvent.objects.order_by("-seq").values("seq", "hash", "created_at").first()
    seq, prev_hash = (head["seq"], head["hash"]) if head else (0, audit.GENESIS_HASH)
    if seq >= target:
        return
    teams = [(t.pk, t.name) for t in w["teams"]]
    users = [(u.pk, u.username) for u in w["users"].values()]
    start = datetime.now(UTC) - timedelta(seconds=target)
    columns = (*audit.HASHED_FIELDS, "prev_hash", "hash")  # the chain version: 1, the column default
    started = time.perf_counter()
    batch = 50_000
    with connection.cursor() as cursor:
        while seq < target:
            buffer = io.StringIO()
            for g in range(seq + 1, min(seq + batch, target) + 1):
                team_id, team_label = teams[(g // 7) % TEAMS] if g % 50 else (None, "")
                actor_id, actor_label = users[g % 3]
                event = AuditEvent(
                    seq=g,
                    created_at=start + timedelta(seconds=g),
                    actor_id=actor_id,
                    actor_label=actor_label,
                    team_id=team_id,
                    team_label=team_label,
                    action="membership.changed" if g % 1000 == 500 else ACTIONS[g % len(ACTIONS)],
                    target_type="draft",
                    target_id=str(g // 20),
                    target_label=f"Draft {g // 20}: API latency above 2 s in eu-west",
                    summary=f"Event {g} recorded by the benchmark",
                    changes={"title": [f"Old {g}", f"New {g}"]},
                    context={"ip": "10.0.0.1", "request_id": f"{g:032x}"},
                    prev_hash=prev_hash,
                )
                event.hash = prev_hash = audit.compute_hash(prev_hash, event)
                values = [getattr(event, name) for name in columns]
                values[1] = event.created_at.isoformat()
                values[11], values[12] = json.dumps(event.changes), json.dumps(event.context)
                buffer.write("\t".join("\\N" if v is None else _copy_text(str(v)) for v in values) + "\n")
            seq = min(seq + batch, target)
            buffer.seek(0)
            with cursor.cursor.copy(f"COPY incidents_auditevent ({', '.join(columns)}) FROM STDIN") as copy:
                copy.write(buffer.read())
        cursor.execute("ANALYZE incidents_auditevent")
    print(f"audit log extended to {target:,} chained events in {time.perf_counter() - started:.1f} s")


def _copy_text(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def chain_tail_is_valid(rows: int = 2000) -> bool:
    """The last ``rows`` events recompute to their hashes and link to each other (the whole chain is audit13's
    verify bench's to time)."""
    from incidents import audit
    from incidents.models import AuditEvent

    events = list(AuditEvent.objects.order_by("-seq")[:rows])[::-1]
    return all(audit.compute_hash(e.prev_hash, e) == e.hash for e in events) and all(
        later.prev_hash == earlier.hash for earlier, later in itertools.pairwise(events)
    )


def page_cases(w: dict, incident) -> list[tuple[str, str, str]]:
    """(label, user, url) for every page a signed-in person reaches, the heaviest filters included."""
    from django.utils import timezone

    platform = w["teams"][0]
    since = timezone.localtime() - timedelta(days=6)
    window = f"since={since:%Y-%m-%dT%H:%M}&until={since + timedelta(hours=1):%Y-%m-%dT%H:%M}"
    return [
        ("dashboard", "approver", "/"),
        ("incident list", "approver", "/incidents/"),
        ("incident list, title contains", "approver", "/incidents/?q=latency+above+2+s+in"),
        (f"incident page, {incident.publications.count()} publications", "approver", f"/incidents/{incident.pk}/"),
        ("audit log, first page", "auditor", "/audit/"),
        ("audit log, deep page", "auditor", "/audit/?before=2000"),
        ("audit log, team filter", "auditor", f"/audit/?team={platform.pk}"),
        ("audit log, action prefix", "auditor", "/audit/?action=review."),
        ("audit log, rare action", "auditor", "/audit/?action=membership."),
        ("audit log, actor", "auditor", "/audit/?actor=approver"),
        ("audit log, target draft", "auditor", "/audit/?target_type=draft&target_id=2500"),
        ("audit log, one hour 6 days ago", "auditor", f"/audit/?{window}"),
        ("audit log, label contains", "auditor", "/audit/?target=Draft%2049999%3A"),
    ]


def time_pages(w: dict, cases, runs: int) -> dict[str, tuple[float, int, int]]:
    """label → (p95 ms, queries, bytes), each page requested ``runs`` times after a warm-up."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    clients = {}
    for name in ("approver", "auditor"):
        clients[name] = Client()
        clients[name].force_login(w["users"][name])
    results = {}
    for label, user, url in cases:
        client = clients[user]
        client.get(url)
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            response = client.get(url)
            samples.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (url, response.status_code)
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url)
        # Savepoints, BEGIN and COMMIT are not queries a page asks for.
        count = sum(
            1 for q in queries.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE", "BEGIN", "COMMIT"))
        )
        results[label] = (percentile(samples, 0.95), count, len(response.content))
    return results


def concurrent(w: dict, *, clients: int, seconds: float, rounds: int = 5) -> dict[str, float]:
    """Requests per second of 32 clients on gunicorn (2 sync workers) for the bare view, the dashboard and the
    audit log, in ``rounds`` interleaved windows (each URL ``seconds`` in all)."""
    import httpx
    from django.conf import settings
    from django.test import Client

    port = free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.bench.bench_settings", "DATABASE_CONN_MAX_AGE": "60"}
    server = subprocess.Popen(
        [str(BIN / "gunicorn"), "isdown_admin.wsgi", "-b", f"127.0.0.1:{port}", "-w", "2", "--log-level", "warning"],
        cwd=ROOT,
        env=env,
    )
    cookies = {}
    for name in ("approver", "auditor"):
        client = Client()
        client.force_login(w["users"][name])
        cookies[name] = {settings.SESSION_COOKIE_NAME: client.cookies[settings.SESSION_COOKIE_NAME].value}
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=1).status_code < 600
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=60, what="gunicorn")
        # Interleaved rounds (bare, dashboard, audit log, then again): on a shared machine the load moves between
        # one window and the next, and a ratio of windows minutes apart measured the neighbours as much as the page.
        targets = (
            ("bare template view", "approver", "/bench/bare/"),
            ("dashboard", "approver", "/"),
            ("audit log", "auditor", "/audit/"),
        )
        served = {label: 0 for label, _, _ in targets}
        spent = {label: 0.0 for label, _, _ in targets}
        for _round in range(rounds):
            for label, user, path in targets:
                done, errors = [0], [0]
                stop = time.monotonic() + seconds / rounds

                def hammer(user=user, path=path, done=done, errors=errors, stop=stop) -> None:
                    with httpx.Client(base_url=base, cookies=cookies[user], timeout=30) as http:
                        while time.monotonic() < stop:
                            response = http.get(path)
                            if response.status_code == 200:
                                done[0] += 1
                            else:
                                errors[0] += 1

                threads = [threading.Thread(target=hammer) for _ in range(clients)]
                started = time.monotonic()
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                if errors[0]:
                    raise SystemExit(f"BENCH FAILED: {errors[0]} non-200 answers from {path}")
                served[label] += done[0]
                spent[label] += time.monotonic() - started
        rates = {label: served[label] / spent[label] for label in served}
        return rates
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="audit events at the second measurement")
    parser.add_argument("--first", type=int, default=100_000, help="audit events at the first measurement")
    parser.add_argument("--incidents", type=int, default=10_000)
    parser.add_argument("--publications", type=int, default=60, help="publications of the busy incident")
    parser.add_argument("--runs", type=int, default=20, help="requests per page (p95 over them)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="per URL in the concurrent part")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved windows the seconds are split into")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--database-suffix", default="_pagesbench")
    parser.add_argument("--fresh", action="store_true", help="drop the bench's database first")
    args = parser.parse_args()

    setup(bench_database_url(args.database_suffix), fresh=args.fresh)
    from incidents.models import AuditEvent

    w = world()
    fill_incidents(w, args.incidents)
    incident = busy_incident(w, args.publications)
    cases = page_cases(w, incident)
    held = AuditEvent.objects.count()
    small: dict[str, tuple[float, int, int]] | None = None
    if held <= args.first:
        extend_audit(w, args.first)
        small = time_pages(w, cases, args.runs)
    elif held < args.events:
        raise SystemExit(
            f"the bench database holds {held:,} events, between --first and --events: drop it (…_pagesbench, or "
            "--fresh) to start over"
        )
    else:
        # A database filled by an earlier run is reused (a before/after comparison in the same hour): only the
        # larger size is measured again.
        print(f"reusing the bench database's {held:,} events: measuring at that size only")
    extend_audit(w, args.events)
    if not chain_tail_is_valid():
        raise SystemExit("BENCH FAILED: the generated chain does not verify")
    large = time_pages(w, cases, args.runs)
    rates = concurrent(w, clients=args.clients, seconds=args.seconds, rounds=args.rounds)
    from django.conf import settings

    print(
        f"\nP2 pages: {args.incidents:,} incidents, {args.incidents * 10:,} updates; "
        f"audit events {args.first:,} → {args.events:,}"
        f" (p95 of {args.runs} requests, in-process without the test instrumentation of templates, "
        f"DEBUG={int(settings.DEBUG)}; 2 shared cores: noisy)\n"
    )
    print(f"| page | p95 at {args.first:,} | p95 at {args.events:,} | ratio | queries | KB |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, _, _ in cases:
        p_large, count, size = large[label]
        if small is None:
            print(f"| {label} | — | {p_large:.0f} ms | — | {count} | {size / 1024:.0f} |")
            continue
        p_small = small[label][0]
        print(
            f"| {label} | {p_small:.0f} ms | {p_large:.0f} ms | {p_large / p_small:.2f} | {count} | {size / 1024:.0f} |"
        )
    worst = max(large.values(), key=lambda r: r[0])
    most = max(r[1] for r in large.values())
    flat = max(large[label][0] / small[label][0] for label, _, _ in cases) if small is not None else None
    rows = [
        {
            "goal": f"P2 every page p95 ≤ {P95_GOAL_MS:.0f} ms at {args.events:,} events",
            "measured": f"worst p95 {worst[0]:.0f} ms",
            "baseline": f"goal {P95_GOAL_MS:.0f} ms",
            "ratio": f"{worst[0] / P95_GOAL_MS:.2f}",
            "met": worst[0] <= P95_GOAL_MS,
        },
        {
            "goal": f"P2 every page ≤ {QUERY_GOAL} queries",
            "measured": f"at most {most}",
            "baseline": f"goal {QUERY_GOAL}",
            "ratio": f"{most / QUERY_GOAL:.2f}",
            "met": most <= QUERY_GOAL,
        },
    ]
    if flat is not None:
        rows.append(
            {
                "goal": f"P2 flat from {args.first:,} to {args.events:,} events",
                "measured": f"worst page ratio {flat:.2f}",
                "baseline": "same pages at the smaller size",
                "ratio": f"{flat:.2f}",
                "met": flat <= 1.5,
            }
        )
    for label in ("dashboard", "audit log"):
        ratio = rates[label] / rates["bare template view"]
        rows.append(
            {
                "goal": f"P2 {label}, {args.clients} clients, gunicorn 2 sync workers: ≥ 50 % of a bare view",
                "measured": f"{rates[label]:.0f} req/s",
                "baseline": f"bare template view {rates['bare template view']:.0f} req/s",
                "ratio": f"{ratio * 100:.0f} %",
                "met": ratio >= 0.5,
            }
        )
    print_table("P2 goals", rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
