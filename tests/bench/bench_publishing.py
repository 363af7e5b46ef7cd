"""Benchmark P1: approve → published, against the sandbox over real HTTP, each figure beside a baseline measured in
the same run (make bench runs it; a tiny one runs in make test as a smoke test, tests/test_bench_smoke.py).

Not part of the test run (pyproject ignores tests/bench). It uses its own database (DATABASE_URL's name +
``_pubbench``, created and migrated as the owner if missing), serves the app and its sandbox with gunicorn, runs
``--workers`` real Celery workers (solo pool each) on a queue of its own, and the sweeper (publishing.sweep every
second, as beat would), so one lost message costs a second, never a hang:

- **P1a, one approval at a time** (no added latency): approve one draft (``workflow.approve``: review, outbox row,
  audit, enqueue on commit), wait until it is published, next. Per approval: from the start of ``approve()`` to the
  publication's ``published_at``. Baselines: the same create POSTed to the sandbox with one keep-alive httpx
  client, one call after another, and with a fresh client per call. Goal: p95 ≤ 1.5 x bare keep-alive p95 + 20 ms.
- **P1b, a burst** with ``--latency`` ms added by the sandbox to every create: ``--n`` drafts are approved with
  the broker held back (their messages collected, not sent), then all are enqueued at once; throughput is N over
  the time from that release to the last ``published_at`` (the bench's own approving loop is not counted).
  Baseline: bare httpx, as many threads as workers, each with a keep-alive client, the same N creates against the
  same sandbox with the same latency. Goal: ≥ 90 % of the baseline's rate.

Every wait has a deadline (``--timeout``) and fails loudly, naming what is still not published.

    .venv/bin/python tests/bench/bench_publishing.py [--n 200] [--n1 100] [--workers 4] [--latency 50]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent


def bench_database_url(suffix: str = "_pubbench") -> str:
    base = os.environ.get("DATABASE_OWNER_URL") or os.environ.get("DATABASE_URL", "postgres://127.0.0.1/isdown_admin")
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + suffix))


def ensure_database(url: str, *, fresh: bool = False) -> None:
    """Create the bench's database (``fresh``: drop it first) as DATABASE_ADMIN_URL, owned by the URL's user."""
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = os.environ.get("DATABASE_ADMIN_URL") or urlunsplit(parts._replace(path="/postgres"))
    owner = parts.username or "isdown_owner"
    with psycopg.connect(admin, autocommit=True) as conn:
        if fresh:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}" OWNER "{owner}"')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def wait_until(condition, *, timeout: float, what: str, status=None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(
                f"BENCH FAILED: timed out after {timeout:g} s waiting for {what}" + (f"\n{status()}" if status else "")
            )
        time.sleep(0.002)


def setup(database_url: str, api_url: str, queue: str, *, fresh: bool = False) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "isdown_admin.settings")
    os.environ.pop("ISDOWN_API_KEY", None)
    os.environ["ISDOWN_API_URL"] = api_url
    os.environ["CELERY_PUBLISH_QUEUE"] = queue
    os.environ["CELERY_DEFAULT_QUEUE"] = queue
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ["SWEEP_INTERVAL"] = "1"
    ensure_database(database_url, fresh=fresh)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def fixtures() -> dict:
    from django.contrib.auth import get_user_model

    from incidents.models import Membership, Role, Service, Team
    from sandbox.registry import register_service

    team, _ = Team.objects.get_or_create(name="Bench")
    users = {}
    for name, role in (("bench-responder", Role.RESPONDER), ("bench-approver", Role.APPROVER)):
        user, _ = get_user_model().objects.get_or_create(username=name)
        Membership.objects.get_or_create(user=user, team=team, defaults={"role": role})
        users[role] = user
    service, _ = Service.objects.get_or_create(isdown_service_id=9901, defaults={"team": team, "name": "Bench API"})
    register_service(9901, "Bench API")
    return {"service": service, "responder": users[Role.RESPONDER], "approver": users[Role.APPROVER]}


def set_latency(latency_ms: int) -> None:
    from sandbox.faults import COUNT_MAX, add_fault, clear_faults

    clear_faults()
    if latency_ms:
        add_fault(kind="latency", latency_ms=latency_ms, count=COUNT_MAX, method="POST")


def submitted_drafts(world: dict, n: int) -> list[tuple[int, int, str]]:
    from incidents import workflow
    from incidents.models import DraftKind

    tag = uuid.uuid4().hex[:6]
    drafts = []
    for i in range(n):
        draft = workflow.create(
            user=world["responder"],
            service=world["service"],
            kind=DraftKind.OPEN,
            fields={
                "title": f"Bench {tag} {i}",
                "severity": "minor",
                "description": "Benchmark.",
                "stage": "investigating",
            },
        )
        revision = workflow.submit(draft_id=draft.pk, user=world["responder"])
        drafts.append((draft.pk, revision.pk, revision.sha256))
    return drafts


def create_body(service_id: int, i: int) -> dict:
    return {
        "service_id": service_id,
        "title": f"bare {uuid.uuid4().hex[:8]} {i}",
        "status": "minor",
        "description": "Benchmark.",
        "resolution_stage": "investigating",
    }


def bare_calls(api_url: str, service_id: int, n: int, *, fresh: bool) -> list[float]:
    """The same create, made directly, one after another: one keep-alive client, or a new client per call."""
    import httpx
    from django.conf import settings

    headers = {"Authorization": f"Bearer {settings.SANDBOX_API_KEY}"}
    times = []
    keep = httpx.Client(base_url=api_url, headers=headers, timeout=10)
    keep.post("/api/v2/incidents", json=create_body(service_id, -1))  # open the connection
    try:
        for i in range(n):
            started = time.perf_counter()
            if fresh:
                with httpx.Client(base_url=api_url, headers=headers, timeout=10) as client:
                    response = client.post("/api/v2/incidents", json=create_body(service_id, i))
            else:
                response = keep.post("/api/v2/incidents", json=create_body(service_id, i))
            times.append(time.perf_counter() - started)
            response.raise_for_status()
    finally:
        keep.close()
    return times


def bare_rate(api_url: str, service_id: int, n: int, threads: int) -> float:
    """Creates per second with ``threads`` threads, each with its own keep-alive client."""
    import httpx
    from django.conf import settings

    headers = {"Authorization": f"Bearer {settings.SANDBOX_API_KEY}"}
    clients = [httpx.Client(base_url=api_url, headers=headers, timeout=10) for _ in range(threads)]
    for client in clients:
        client.post("/api/v2/incidents", json=create_body(service_id, -1))
    share = [range(i, n, threads) for i in range(threads)]

    def run(index: int) -> None:
        for i in share[index]:
            clients[index].post("/api/v2/incidents", json=create_body(service_id, i)).raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, range(threads)))
    elapsed = time.perf_counter() - started
    for client in clients:
        client.close()
    return n / elapsed


def start_workers(count: int, queue: str) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            [
                str(BIN / "celery"),
                "-A",
                "isdown_admin",
                "worker",
                "--pool=solo",
                f"--queues={queue}",
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
                "--loglevel=WARNING",
                f"--hostname=bench{index}-{uuid.uuid4().hex[:6]}@%h",
            ],
            cwd=ROOT,
            env=os.environ.copy(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for index in range(count)
    ]


def sweeper(stop: threading.Event) -> None:
    """What beat does every SWEEP_INTERVAL: re-enqueue what is due and not moving, move expired leases on."""
    from django.db import connection

    from incidents import enqueue, publishing

    try:
        while not stop.wait(1.0):
            for publication_id, countdown in publishing.sweep(task_id="bench-sweeper"):
                enqueue.publication(publication_id, countdown=countdown or None)
    finally:
        connection.close()


def cpu_seconds(processes: list[subprocess.Popen]) -> float:
    """User + system CPU the worker processes have used so far (Linux /proc)."""
    total = 0
    for process in processes:
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def publications_status(draft_ids: list[int]) -> str:
    from django.db.models import Count

    from incidents.models import Publication

    rows = Publication.objects.filter(draft_id__in=draft_ids).values("state").annotate(n=Count("id"))
    return "publication states: " + ", ".join(f"{row['state']}={row['n']}" for row in rows)


def one_at_a_time(world: dict, n: int, timeout: float) -> list[float]:
    from incidents import workflow
    from incidents.models import Publication, PublicationState

    latencies = []
    for draft_id, revision_id, sha256 in submitted_drafts(world, n):
        started = time.time()
        workflow.approve(draft_id=draft_id, revision_id=revision_id, sha256=sha256, reviewer=world["approver"])
        approved = time.time()
        done = Publication.objects.filter(draft_id=draft_id, state=PublicationState.PUBLISHED)
        wait_until(
            done.exists,
            timeout=timeout,
            what=f"draft {draft_id} to be published",
            status=lambda d=draft_id: publications_status([d]),
        )
        publication = done.get()
        claimed = publication.attempt_rows.order_by("number").first().started_at.timestamp()
        latencies.append(publication.published_at.timestamp() - started)
        PHASES.append((approved - started, claimed - approved, publication.published_at.timestamp() - claimed))
    return latencies


# Where one-at-a-time time goes: approve() itself, approve's return → the worker's claim, claim → published.
PHASES: list[tuple[float, float, float]] = []


def burst(world: dict, n: int, timeout: float) -> float:
    from unittest import mock

    from incidents import enqueue, workflow
    from incidents.models import Publication, PublicationState

    drafts = submitted_drafts(world, n)
    held: list[int] = []
    # Approved with the broker held back: the messages are collected, then released together below.
    with mock.patch.object(enqueue, "publication_on_commit", held.append):
        for draft_id, revision_id, sha256 in drafts:
            workflow.approve(draft_id=draft_id, revision_id=revision_id, sha256=sha256, reviewer=world["approver"])
    ids = [d for d, _, _ in drafts]
    released = time.time()
    for publication_id in held:
        enqueue.publication(publication_id)
    done = Publication.objects.filter(draft_id__in=ids, state=PublicationState.PUBLISHED)
    wait_until(
        lambda: done.count() == n, timeout=timeout, what=f"{n} publications", status=lambda: publications_status(ids)
    )
    last = max(p.timestamp() for p in done.values_list("published_at", flat=True))
    return n / (last - released)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="approvals in the burst (P1b)")
    parser.add_argument("--n1", type=int, default=100, help="approvals one at a time (P1a)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--latency", type=int, default=50, help="ms the sandbox adds to every create in P1b")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before a wait fails loudly")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--database-suffix", default="_pubbench")
    parser.add_argument("--fresh", action="store_true", help="drop the bench's database first")
    args = parser.parse_args()

    port = free_port()
    api_url = f"http://127.0.0.1:{port}/sandbox"
    setup(bench_database_url(args.database_suffix), api_url, f"publish-bench-{uuid.uuid4().hex[:8]}", fresh=args.fresh)
    from django.db import connection

    server = subprocess.Popen(
        [
            str(BIN / "gunicorn"),
            "isdown_admin.wsgi",
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            "2",
            "--threads",
            "8",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=os.environ.copy(),
    )
    workers: list[subprocess.Popen] = []
    stop = threading.Event()
    try:
        import httpx

        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code < 500
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=60, what="gunicorn")
        world = fixtures()
        service_id = world["service"].isdown_service_id
        set_latency(0)
        keep = bare_calls(api_url, service_id, args.n1, fresh=False)
        fresh = bare_calls(api_url, service_id, args.n1, fresh=True)
        workers = start_workers(args.workers, os.environ["CELERY_PUBLISH_QUEUE"])
        threading.Thread(target=sweeper, args=(stop,), daemon=True).start()
        # The workers are up once a first publication goes through (start-up is not what is measured).
        one_at_a_time(world, 1, args.timeout)
        cpu = cpu_seconds(workers)
        p1a = one_at_a_time(world, args.n1, args.timeout)
        cpu_p1a = (cpu_seconds(workers) - cpu) / args.n1
        set_latency(args.latency)
        bare = bare_rate(api_url, service_id, args.n, args.workers)
        set_latency(args.latency)  # a fault covers COUNT_MAX requests: a fresh one for the burst
        cpu = cpu_seconds(workers)
        p1b = burst(world, args.n, args.timeout)
        cpu_p1b = (cpu_seconds(workers) - cpu) / args.n
        set_latency(0)
    finally:
        stop.set()
        for process in [*workers, server]:
            process.send_signal(signal.SIGTERM)
        for process in [*workers, server]:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        connection.close()

    keep_p95, fresh_p95, p1a_p95 = percentile(keep, 0.95), percentile(fresh, 0.95), percentile(p1a, 0.95)
    goal_p1a = 1.5 * keep_p95 + 0.020
    rows = [
        {
            "goal": "P1a approve→published p95 ≤ 1.5 x bare keep-alive p95 + 20 ms",
            "measured": f"p95 {p1a_p95 * 1000:.0f} ms (p50 {statistics.median(p1a) * 1000:.0f} ms, n={args.n1})",
            "baseline": f"bare keep-alive POST p95 {keep_p95 * 1000:.1f} ms; fresh client {fresh_p95 * 1000:.1f} ms "
            f"→ goal ≤ {goal_p1a * 1000:.0f} ms",
            "ratio": f"{p1a_p95 / goal_p1a:.2f} of the goal",
            "met": p1a_p95 <= goal_p1a,
        },
        {
            "goal": f"P1b burst of {args.n}, {args.workers} workers, {args.latency} ms: ≥ 90 % of bare httpx",
            "measured": f"{p1b:.1f} publications/s",
            "baseline": f"bare httpx, {args.workers} threads: {bare:.1f}/s "
            f"(ideal {args.workers / max(args.latency, 1) * 1000:.0f}/s)",
            "ratio": f"{p1b / bare * 100:.0f} %",
            "met": p1b >= 0.9 * bare,
        },
    ]
    print_table("P1 publishing (sandbox over HTTP; 2 shared cores: noisy)", rows)
    phases = PHASES[1:]  # the first one warmed the workers up
    print(
        "\nP1a phases, p50: approve() {:.0f} ms; approve's return → claim {:.0f} ms; "
        "claim → published {:.0f} ms".format(*(statistics.median(p[i] for p in phases) * 1000 for i in range(3)))
    )
    print(
        f"Worker CPU per publication (user + system, all workers): {cpu_p1a * 1000:.0f} ms one at a time, "
        f"{cpu_p1b * 1000:.0f} ms in the burst"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows))


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}\n")
    print("| goal | measured | baseline (same run) | ratio | met |")
    print("|---|---|---|---|---|")
    for row in rows:
        met = "yes" if row["met"] else "NO"
        print(f"| {row['goal']} | {row['measured']} | {row['baseline']} | {row['ratio']} | {met} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
