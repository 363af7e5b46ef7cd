"""Verifying the audit chain: inline for a small log, as a background job (with progress) for a big one.

A million events take longer than a web request may (a gunicorn sync worker is killed after 30 s). A log longer
than ``AUDIT_VERIFY_INLINE_MAX_EVENTS`` is verified by a worker: ``request`` records the run (``AuditVerification``)
and ``run`` walks the chain against every signed checkpoint (``checkpoints.verify``), writing its progress on a
connection of its own (so the page sees it while the walk's own transaction is open), then the verdict: on the
row, and as an ``audit.verified`` event for each team in the requester's scope, as an inline verification does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.db import DatabaseError, connection, connections
from django.utils import timezone

from . import audit, checkpoints, enqueue, selectors
from .models import AuditEvent, AuditExportState, AuditVerification

logger = logging.getLogger(__name__)


def too_long_to_verify_inline() -> bool:
    head = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0
    return head > settings.AUDIT_VERIFY_INLINE_MAX_EVENTS


def verify_now() -> audit.VerifyResult:
    """The chain against every checkpoint; a key or sink problem is a failed verification, said plainly."""
    try:
        return checkpoints.verify()
    except checkpoints.CheckpointError as exc:
        return audit.VerifyResult(False, 0, audit.GENESIS_HASH, None, str(exc))


def record_verdict(user: Any, result: audit.VerifyResult) -> None:
    for team in selectors.audit_scope_teams(user, ""):
        audit.record(
            "audit.verified",
            actor=user,
            team=team,
            target_type="audit_log",
            target_label="Audit log",
            summary=f"Verified the audit chain: {result.message()}"[:500],
        )


def request(user: Any) -> AuditVerification:
    """Record a verification for a worker to run (enqueued once this transaction commits)."""
    head = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0
    verification = AuditVerification.objects.create(requested_by=user, total=head)
    enqueue.audit_verification_on_commit(verification.pk)
    return verification


def latest(user: Any) -> AuditVerification | None:
    return AuditVerification.objects.filter(requested_by=user).order_by("-id").first()


def run(verification_id: int) -> str:
    """Walk the chain for a queued verification; its row says how far it got and what it found."""
    taken = AuditVerification.objects.filter(pk=verification_id, state=AuditExportState.QUEUED).update(
        state=AuditExportState.RUNNING
    )
    if not taken:
        return "gone or already taken"
    verification = AuditVerification.objects.select_related("requested_by").get(pk=verification_id)
    side = connections.create_connection("default")  # progress, committed while the walk's transaction is open

    def progress(count: int) -> None:
        try:
            with side.cursor() as cursor:
                cursor.execute(
                    "UPDATE incidents_auditverification SET checked = %s WHERE id = %s", [count, verification_id]
                )
        except DatabaseError:
            logger.warning("could not write the progress of audit verification %s", verification_id)

    processes = settings.AUDIT_VERIFY_PROCESSES
    walk = None
    if processes > 1 and verification.total >= processes * audit.PROGRESS_EVERY:

        def walk(anchors: Sequence[audit.Anchor], progress: Callable[[int], None] | None) -> audit.VerifyResult:
            # The head now, read after the checkpoints were: every checkpoint names a seq at or below it unless
            # events were removed.
            total = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0
            with side.cursor() as cursor:
                cursor.execute(
                    "UPDATE incidents_auditverification SET total = %s WHERE id = %s", [total, verification_id]
                )
            return verify_in_parallel(total, anchors, processes=processes, progress=progress)

    try:
        try:
            result = checkpoints.verify(progress=progress, walk=walk)
        except checkpoints.CheckpointError as exc:
            result = audit.VerifyResult(False, 0, audit.GENESIS_HASH, None, str(exc))
    finally:
        side.close()
    record_verdict(verification.requested_by, result)
    AuditVerification.objects.filter(pk=verification_id).update(
        state=AuditExportState.DONE,
        checked=result.count,
        ok=result.ok,
        broken_seq=result.broken_seq,
        message=result.message()[:1000],
        finished_at=timezone.now(),
    )
    return "ok" if result.ok else "broken"


def _database_url() -> str:
    """The URL of the database this process uses (the test database in tests), for the segment processes."""
    db = connection.settings_dict
    password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgres://{quote(db['USER'], safe='')}{password}@{host}{port}/{quote(db['NAME'], safe='')}"


def verify_in_parallel(
    total: int,
    anchors: Sequence[audit.Anchor],
    *,
    processes: int,
    progress: Callable[[int], None] | None = None,
) -> audit.VerifyResult:
    """Seqs 1..``total`` in ``processes`` segments, each checked by a process of its own (``verify_audit_log
    --segment``: Python hashes in one core each; a Celery worker's children may not fork pools of their own, so
    these are plain subprocesses), then ``audit.combine``: the links between segments, the first problem in seq
    order, anchors past the end. Events appended meanwhile (past ``total``) are not in this verification."""
    size = -(-total // processes)
    bounds = [(first, min(first + size - 1, total)) for first in range(1, total + 1, size)]
    env = {**os.environ, "DATABASE_URL": _database_url()}
    manage = str(settings.BASE_DIR / "manage.py")
    payload = json.dumps([dataclasses.asdict(anchor) for anchor in anchors])
    done = [0] * len(bounds)
    results: list[audit.SegmentResult | None] = [None] * len(bounds)
    lock = threading.Lock()

    def run_segment(index: int, first: int, last: int) -> None:
        with subprocess.Popen(  # noqa: S603 (this app's own command, fixed arguments)
            [sys.executable, manage, "verify_audit_log", "--segment", f"{first}:{last}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        ) as child:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write(payload)
            child.stdin.close()
            for line in child.stdout:
                if line.startswith("progress "):
                    with lock:
                        done[index] = int(line.split()[1])
                elif line.startswith("result "):
                    results[index] = audit.SegmentResult(**json.loads(line[len("result ") :]))

    threads = [threading.Thread(target=run_segment, args=(i, *bound)) for i, bound in enumerate(bounds)]
    for thread in threads:
        thread.start()
    # Progress is written from this thread (the side connection belongs to it), twice a second.
    reported = 0
    while alive := [thread for thread in threads if thread.is_alive()]:
        alive[0].join(timeout=0.5)
        with lock:
            now = sum(done)
        if progress is not None and now != reported:
            progress(now)
            reported = now
    segments = []
    for (first, _), result in zip(bounds, results, strict=True):
        if result is None:
            return audit.VerifyResult(
                False, 0, audit.GENESIS_HASH, first, f"the process checking from seq {first} failed"
            )
        segments.append(result)
    return audit.combine(segments, anchors)
