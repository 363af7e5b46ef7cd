"""Benchmark: audit appends under concurrent writers (issue 13, "appends that do not serialise the app").

Not part of the test run. Uses its own database (DATABASE_URL's name + ``_appendbench``, created if missing, so run
it as a role that may: e.g. DATABASE_URL=postgres://root@127.0.0.1:5432/isdown_admin). For 4, 8 and 16 writer
threads (each its own connection), each writer runs ``--per-writer`` transactions shaped like the app's: change a
row of its own, append one audit event, then the rest of the transaction's work (``--work-ms`` of server time,
``pg_sleep``), commit. Two ways to append, in the same run, one after the other:

- ``lock`` (the baseline): the append as it was before the sealer: ``pg_advisory_xact_lock``, read the head,
  insert the chained row: every writer queues on the lock until the holder commits;
- ``sealer`` (now): ``audit.record`` inserts an entry (no lock); the sealer chains it right after the commit
  (``transaction.on_commit``, production's default), outside the transaction;
- ``beat``: the same appends with the post-commit runs off (AUDIT_SEAL_ON_COMMIT=0): a sealer thread runs every
  ``--beat`` seconds, as beat does.

Printed per row: appends/s (transactions per second of wall time, the sealer's post-commit runs included), p50 and
p95 of the transaction's time (BEGIN to COMMIT), and for the sealer rows how long after the last commit the log
had every event (the drain). The chain is verified at the end.

    .venv/bin/python tests/bench/bench_audit_append.py [--writers 4 8 16] [--per-writer 50] [--work-ms 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.bench_audit_pagination import ensure_database  # noqa: E402


def setup_django() -> None:
    base = os.environ.get("DATABASE_URL", "postgres://root@127.0.0.1:5432/isdown_admin")
    parts = urlsplit(base)
    name = parts.path.lstrip("/") or "isdown_admin"
    name = name if name.endswith("_appendbench") else name + "_appendbench"
    url = urlunsplit(parts._replace(path="/" + name))
    ensure_database(url)
    os.environ["DATABASE_URL"] = url
    os.environ["AUDIT_CHECKPOINT_SINK"] = str(ROOT / "var" / f"{name}-checkpoints.jsonl")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "isdown_admin.settings")
    os.environ["AUDIT_SEAL_INLINE"] = "0"
    os.environ["AUDIT_SEAL_ON_COMMIT"] = "1"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


MODES = ("lock", "sealer", "beat")


def lock_append(summary: str) -> None:
    """The append before the sealer (chain version 1): the global lock, held until the caller commits."""
    from django.db import connection
    from django.utils import timezone

    from incidents import audit
    from incidents.models import AuditEvent

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [audit.SEAL_LOCK_KEY])
    last = AuditEvent.objects.order_by("-seq").values("seq", "hash").first()
    seq, prev_hash = (last["seq"] + 1, last["hash"]) if last else (1, audit.GENESIS_HASH)
    event = AuditEvent(
        seq=seq,
        created_at=timezone.now(),
        actor_label="system:bench",
        action="draft.saved",
        summary=summary,
        changes={"n": [1, 2]},
        context={"request_id": summary},
        prev_hash=prev_hash,
    )
    event.hash = audit.compute_hash(prev_hash, event)
    event.save(force_insert=True)


def sealer_append(summary: str) -> None:
    from incidents import audit

    audit.record(
        "draft.saved",
        actor_label="system:bench",
        summary=summary,
        changes={"n": [1, 2]},
        context={"request_id": summary},
    )


def run(mode: str, writers: int, per_writer: int, work_ms: float, beat_interval: float) -> dict[str, float]:
    from django.db import connection, transaction
    from django.test.utils import override_settings

    from incidents import audit
    from incidents.models import Team

    append = lock_append if mode == "lock" else sealer_append
    # "beat": no post-commit runs; a sealer thread runs every --beat seconds, as beat does.
    settings_override = override_settings(AUDIT_SEAL_ON_COMMIT=mode != "beat")
    settings_override.enable()
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(beat_interval):
                audit.seal()
        finally:
            connection.close()

    beater = threading.Thread(target=beat)
    if mode == "beat":
        beater.start()
    teams = [Team.objects.create(name=f"bench {mode} {writers} {n} {time.time_ns()}") for n in range(writers)]
    durations: list[float] = []
    errors: list[BaseException] = []
    start = threading.Barrier(writers + 1)
    guard = threading.Lock()

    def writer(team_id: int) -> None:
        own: list[float] = []
        try:
            start.wait(timeout=30)
            for n in range(per_writer):
                began, committed = time.perf_counter(), []
                with transaction.atomic():
                    # Runs first after the commit (before the sealer's post-commit run): BEGIN to COMMIT.
                    transaction.on_commit(lambda stamps=committed: stamps.append(time.perf_counter()))
                    with connection.cursor() as cursor:
                        # The action the event records: a row of this writer's own (no contention there).
                        cursor.execute("UPDATE incidents_team SET name = name WHERE id = %s", [team_id])
                    append(f"{mode} w{team_id} #{n}")
                    with connection.cursor() as cursor:
                        # The rest of the transaction's work (server time).
                        cursor.execute("SELECT pg_sleep(%s)", [work_ms / 1000])
                own.append(committed[0] - began)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()
            with guard:
                durations.extend(own)

    threads = [threading.Thread(target=writer, args=(team.pk,)) for team in teams]
    for thread in threads:
        thread.start()
    start.wait(timeout=30)
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    stop.set()
    if mode == "beat":
        beater.join()
    settings_override.disable()
    if errors:
        raise errors[0]
    drain = 0.0
    if mode != "lock":
        drained = time.perf_counter()
        while audit.waiting_count():
            audit.seal()
        drain = time.perf_counter() - drained
    durations.sort()
    return {
        "appends_per_s": len(durations) / wall,
        "p50_ms": statistics.median(durations) * 1000,
        "p95_ms": durations[int(len(durations) * 0.95) - 1] * 1000,
        "drain_ms": drain * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--per-writer", type=int, default=50)
    parser.add_argument("--work-ms", type=float, default=5.0)
    parser.add_argument("--beat", type=float, default=1.0, help="the beat sealer's interval in the beat rows")
    args = parser.parse_args()
    setup_django()
    from incidents import audit

    audit.seal()  # anything a previous run left waiting
    print(f"audit appends: {args.per_writer} transactions per writer, {args.work_ms:g} ms of work after the append")
    print(f"{'writers':>7} {'mode':>7} {'appends/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'drain ms':>9} {'ratio':>6}")
    for writers in args.writers:
        rows = {mode: run(mode, writers, args.per_writer, args.work_ms, args.beat) for mode in MODES}
        lock = rows["lock"]
        for mode, figures in rows.items():
            ratio = figures["appends_per_s"] / lock["appends_per_s"]
            print(
                f"{writers:>7} {mode:>7} {figures['appends_per_s']:>10.1f} {figures['p50_ms']:>8.1f} "
                f"{figures['p95_ms']:>8.1f} {figures['drain_ms']:>9.1f} {ratio:>5.2f}x"
            )
    result = audit.verify_chain()
    print(f"verify: {result.message()}")
    if not result.ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
