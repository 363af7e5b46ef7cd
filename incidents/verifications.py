"""Verifying the audit chain: inline for a small log, as a background job (with progress) for a big one.

A million events take longer than a web request may (a gunicorn sync worker is killed after 30 s). A log longer
than ``AUDIT_VERIFY_INLINE_MAX_EVENTS`` is verified by a worker: ``request`` records the run (``AuditVerification``)
and ``run`` walks the chain against every signed checkpoint (``checkpoints.verify``), writing its progress on a
connection of its own (so the page sees it while the walk's own transaction is open), then the verdict: on the
row, and as an ``audit.verified`` event for each team in the requester's scope, as an inline verification does.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections
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

    try:
        try:
            result = checkpoints.verify(progress=progress)
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
