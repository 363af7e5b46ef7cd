"""Audit exports too big for a web request: built into a file by a worker, downloaded by whoever asked.

A gunicorn sync worker is killed after its timeout (30 s) whatever it is doing, streaming included: a million
rows sent to a slow client would be cut off mid-file. So an export of more than ``AUDIT_EXPORT_STREAM_MAX_ROWS``
events is not streamed: ``request`` records what was asked (the raw filters, and the head seq signed at that
moment, so the file is the log as it was when asked) and a worker runs ``build``: the filters are validated again
for the requester (access may have changed), the rows are rendered by PostgreSQL (``audit.fast_jsonl`` /
``fast_csv``) into a temporary file that is renamed when complete. The page polls the requester's exports and
offers the download when it is ready. Smaller exports stream as before.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.http import QueryDict
from django.utils import timezone

from . import audit, checkpoints, enqueue, selectors
from .forms import AuditFilterForm
from .models import AuditEvent, AuditExport, AuditExportState

logger = logging.getLogger(__name__)


def too_big_to_stream(events: QuerySet[AuditEvent]) -> bool:
    """More matching rows than a request may stream (a count that stops at the limit: cheap at any size)."""
    limit = settings.AUDIT_EXPORT_STREAM_MAX_ROWS
    return events.order_by()[: limit + 1].count() > limit


def request(*, user: Any, fmt: str, filters: Mapping[str, str], described: str, up_to_seq: int) -> AuditExport:
    """Record an export for a worker to build (enqueued once this transaction commits)."""
    export = AuditExport.objects.create(
        requested_by=user, format=fmt, filters=dict(filters), described=described[:500], up_to_seq=up_to_seq
    )
    enqueue.audit_export_on_commit(export.pk)
    return export


def path_for(export: AuditExport) -> Path:
    return Path(settings.AUDIT_EXPORT_DIR) / export.file_name


def mine(user: Any, count: int = 5) -> list[AuditExport]:
    return list(AuditExport.objects.filter(requested_by=user).order_by("-id")[:count])


def _write(path: Path, chunks: Iterable[str]) -> int:
    partial = path.with_suffix(path.suffix + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    with partial.open("w", encoding="utf-8", newline="") as handle:
        for chunk in chunks:
            handle.write(chunk)
    os.replace(partial, path)  # a file under its final name is always whole
    return path.stat().st_size


def build(export_id: int) -> str:
    """Write the file of a queued export; its state says how it went. Safe to run twice."""
    export = AuditExport.objects.filter(pk=export_id).select_related("requested_by").first()
    if export is None or export.state != AuditExportState.QUEUED:
        return "gone or already taken"
    taken = AuditExport.objects.filter(pk=export_id, state=AuditExportState.QUEUED).update(
        state=AuditExportState.RUNNING
    )
    if not taken:
        return "already taken"
    user = export.requested_by
    form = AuditFilterForm.for_user(user, QueryDict(mutable=True) | export.filters)
    if not user.is_active or not form.is_valid():
        return _finish(export, AuditExportState.FAILED, error="the filters are no longer valid for this user")
    events = selectors.filtered_events(user, form.cleaned_data).filter(seq__lte=export.up_to_seq).order_by("-seq")
    try:
        rows = events.count()
        if export.format == "csv":
            size = _write(path_for(export), audit.fast_csv(events))
        else:
            chunks = itertools.chain(checkpoints.export_preamble(), audit.fast_jsonl(events))
            size = _write(path_for(export), chunks)
    except (OSError, checkpoints.CheckpointError) as exc:
        logger.exception("audit export %s failed", export_id)
        return _finish(export, AuditExportState.FAILED, error=str(exc))
    return _finish(export, AuditExportState.DONE, rows=rows, size=size)


def _finish(
    export: AuditExport, state: str, *, rows: int | None = None, size: int | None = None, error: str = ""
) -> str:
    AuditExport.objects.filter(pk=export.pk).update(
        state=state, rows=rows, size=size, error=error[:500], finished_at=timezone.now()
    )
    return state
