"""Benchmark: approve-to-published time for a burst of approvals, against the sandbox over real HTTP.

Not part of the test run (pyproject ignores tests/bench). It uses its own database, named after the one in
DATABASE_URL with ``_pubbench`` appended (created and migrated if missing), serves the sandbox with gunicorn,
runs 1 and 4 real Celery worker processes (solo pool each) on a queue of its own, and for 0 ms and 50 ms of
latency added by the sandbox to every create:

- approves N submitted drafts as fast as one process can (``workflow.approve``: review, outbox row, audit,
  enqueue on commit), then waits until all N are published;
- per approval: time from the start of ``approve()`` to the publication's ``published_at``; p50, p95, and the
  throughput of the burst (N / time from the first approval to the last publication);
- beside it, the bare time of the same create call made directly with httpx, N times, one after another.

    DATABASE_URL=postgres://root@127.0.0.1:5432/isdown_admin_h2 REDIS_URL=redis://127.0.0.1:6379/2 \\
        .venv/bin/python tests/bench/bench_publishing.py [--n 200] [--latencies 0,50] [--workers 1,4]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent


def bench_database_url() -> str:
    parts = urlsplit(os.environ.get("DATABASE_URL", "postgres://root@127.0.0.1:5432/isdown_admin"))
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "_pubbench"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def wait_until(condition, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--latencies", default="0,50")
    parser.add_argument("--workers", default="1,4")
    args = parser.parse_args()
    latencies = [int(v) for v in args.latencies.split(",")]
    worker_counts = [int(v) for v in args.workers.split(",")]

    os.environ["DATABASE_URL"] = bench_database_url()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "isdown_admin.settings")
    os.environ.pop("ISDOWN_API_KEY", None)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/sandbox"
    os.environ["ISDOWN_API_URL"] = api_url
    queue = f"publish-bench-{uuid.uuid4().hex[:8]}"
    os.environ["CELERY_PUBLISH_QUEUE"] = queue
    os.environ["LOG_LEVEL"] = "WARNING"

    _ensure_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    server = subprocess.Popen(
        [
            str(BIN / "gunicorn"),
            "isdown_admin.wsgi",
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            "4",
            "--threads",
            "4",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=os.environ.copy(),
    )
    try:
        import httpx

        wait_until(lambda: _up(httpx, f"http://127.0.0.1:{port}/healthz"), timeout=30, what="gunicorn")
        rows = []
        fixtures = _fixtures()
        for latency in latencies:
            _set_latency(latency)
            bare = _bare_calls(httpx, api_url, fixtures["service"].isdown_service_id, args.n)
            for count in worker_counts:
                result = _run(fixtures, n=args.n, workers=count, queue=queue)
                rows.append((latency, count, result, bare))
        _set_latency(0)
        _print(rows, args.n)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=20)


def _ensure_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def _up(httpx, url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code < 500
    except httpx.HTTPError:
        return False


def _fixtures() -> dict:
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
    return {"team": team, "service": service, "responder": users[Role.RESPONDER], "approver": users[Role.APPROVER]}


def _set_latency(latency_ms: int) -> None:
    from sandbox.faults import add_fault, clear_faults

    clear_faults()
    if latency_ms:
        add_fault(kind="latency", latency_ms=latency_ms, count=10**9, method="POST")


def _bare_calls(httpx, api_url: str, service_id: int, n: int) -> list[float]:
    """The same create, made directly: one httpx client, one call after another (seconds each)."""
    from django.conf import settings

    times = []
    headers = {"Authorization": f"Bearer {settings.SANDBOX_API_KEY}", "Content-Type": "application/json"}
    with httpx.Client(base_url=api_url, headers=headers, timeout=10) as client:
        for i in range(n):
            body = {
                "service_id": service_id,
                "title": f"bare {uuid.uuid4().hex[:8]} {i}",
                "status": "minor",
                "description": "Benchmark.",
                "resolution_stage": "investigating",
            }
            started = time.perf_counter()
            response = client.post("/api/v2/incidents", json=body)
            times.append(time.perf_counter() - started)
            response.raise_for_status()
    return times


def _start_workers(count: int, queue: str) -> list[subprocess.Popen]:
    processes = []
    for index in range(count):
        processes.append(
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
        )
    return processes


def _run(fixtures: dict, *, n: int, workers: int, queue: str) -> dict:
    from incidents import workflow
    from incidents.models import DraftKind, Publication, PublicationState

    drafts = []
    tag = uuid.uuid4().hex[:6]
    for i in range(n):
        draft = workflow.create(
            user=fixtures["responder"],
            service=fixtures["service"],
            kind=DraftKind.OPEN,
            fields={
                "title": f"Bench {tag} {i}",
                "severity": "minor",
                "description": "Benchmark.",
                "stage": "investigating",
            },
        )
        revision = workflow.submit(draft_id=draft.pk, user=fixtures["responder"])
        drafts.append((draft.pk, revision.pk))
    processes = _start_workers(workers, queue)
    try:
        time.sleep(3)  # let every worker connect before the burst (start-up is not what is measured)
        started: dict[int, float] = {}
        from django.utils import timezone

        burst_start = timezone.now()
        for draft_id, revision_id in drafts:
            started[draft_id] = timezone.now().timestamp()
            workflow.approve(draft_id=draft_id, revision_id=revision_id, reviewer=fixtures["approver"])
        ids = [d for d, _ in drafts]
        done = Publication.objects.filter(draft_id__in=ids, state=PublicationState.PUBLISHED)
        wait_until(lambda: done.count() == n, timeout=600, what=f"{n} publications")
        published = dict(done.values_list("draft_id", "published_at"))
        # In-worker time: from the claim (attempt start) to published, without the wait in the queue.
        service_times = [
            (p.published_at - p.attempt_rows.order_by("number").first().started_at).total_seconds()
            for p in done.prefetch_related("attempt_rows")
        ]
        failed = Publication.objects.filter(draft_id__in=ids).exclude(state=PublicationState.PUBLISHED).count()
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=20)
    latencies = [published[d].timestamp() - started[d] for d in ids]
    span = max(p.timestamp() for p in published.values()) - burst_start.timestamp()
    return {
        "p50": statistics.median(latencies),
        "p95": percentile(latencies, 0.95),
        "throughput": n / span,
        "failed": failed,
        "claim_p50": statistics.median(service_times),
    }


def _print(rows: list, n: int) -> None:
    print()
    print(f"Approve-to-published, burst of {n} approvals (sandbox over HTTP, gunicorn 4x4, solo-pool workers)")
    print()
    print(
        "| added latency | workers | approve→published p50 | p95 | throughput | claim→published p50 "
        "| bare httpx create p50 | p95 | bare rate |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for latency, count, result, bare in rows:
        print(
            f"| {latency} ms | {count} | {result['p50'] * 1000:.0f} ms | {result['p95'] * 1000:.0f} ms "
            f"| {result['throughput']:.1f}/s | {result['claim_p50'] * 1000:.1f} ms "
            f"| {statistics.median(bare) * 1000:.1f} ms "
            f"| {percentile(bare, 0.95) * 1000:.1f} ms | {1 / statistics.mean(bare):.1f}/s |"
        )


if __name__ == "__main__":
    main()
