"""The audit log: append inside the caller's transaction, seal the hash chain, verify it, stream exports. What an
event may record is in ``audit_actions.py``.

Appending does not serialise the app. ``record`` inserts an ``AuditEntry`` in the caller's transaction: no lock,
no seq, no hash, so concurrent transactions never wait on each other's work; if the caller rolls back, the entry
goes with it (and so does the action it records). The entry row carries the 64-bit id of its inserting transaction
(``xid``: ``pg_current_xact_id()``, a column default).

The sealer (``seal``) chains committed entries into ``AuditEvent``, the table every page, filter, export and
verifier reads: one INSERT of finished rows (``seq``, ``prev_hash``, ``hash``, ``chain_version`` 2, ``entry_id``).
It runs right after each recording transaction commits (``transaction.on_commit``, AUDIT_SEAL_ON_COMMIT) and from
beat every AUDIT_SEAL_INTERVAL seconds (the backstop), each run in a short transaction of its own under an advisory
lock that only sealers take (``pg_try_advisory_xact_lock``: a second sealer returns at once, it never queues). It
seals only entries whose transaction is older than every transaction of this database still running (``xid`` below
``HORIZON_SQL``: ``pg_snapshot_xmin(pg_current_snapshot())`` without the transactions of other databases, read in
the same statement as the entries), in ``(xid, id)`` order, after the head's entry. So:

- ``seq`` is gap-free and the chain has no forks: one sealer at a time appends after the head it read, and
  ``seq`` and ``hash`` are unique;
- every committed entry is sealed exactly once (``entry_id`` is unique; the query skips sealed entries), an entry
  of a rolled-back transaction never (it was never committed, so no one can see it);
- the order never gains a late gap: a transaction of this database still running when a sealer reads has an xid
  at or above that read's horizon, above every entry sealed so far, and one that starts later gets a larger xid
  still, so an entry committed later always sorts after every sealed one;
- an event appears in the log once its transaction and every older writing transaction have ended: in practice
  right after the commit (on_commit), at worst at the next beat; a long writing transaction of this database holds
  sealing back while it runs (read-only transactions have no xid and hold nothing). Pages say how many events wait.
  ``created_at`` is the time of ``record`` (in the caller's transaction), so it is not monotonic in ``seq``.

The app's role may only SELECT and INSERT both tables (triggers and grants: migrations 0002, 0005, 0018; the sealer
runs as the app's role and only inserts). AUDIT_SEAL_INLINE=1 seals each entry inside its own transaction
under the sealer's lock held to commit instead (the previous, serialising behaviour; the test suite uses it so a
test reads its events at once). Run one mode per deployment.

Chain formats, both verified (``chain_version`` per row): version 1 (rows written before the sealer existed):
``hash = sha256(prev_hash + canonical JSON object of HASHED_FIELDS)``. Version 2 (sealed rows):
``hash = sha256(prev_hash + canonical JSON array [2, seq, entry_id, HASHED_FIELDS after seq in their order])``:
fixed positions, and the version and the entry it seals are bound in the hash (a sealed row passed off as an old
one, or re-pointed at another entry, no longer verifies). It is not cheaper to check: both cost about 12 µs a row
here, the nested ``changes``/``context`` JSON dominates; verification speed comes from segments in parallel.
Checkpoints sign sealed heads (``checkpoints.py``).

Verification walks segments of seqs (``verify_segment``: rows as tuples, ``created_at`` rendered by PostgreSQL)
and ``combine`` checks the links between them, so segments can be checked in parallel processes
(``verifications.py``); anchors (signed checkpoints, ``checkpoints.py``) catch a chain re-hashed consistently by
someone with database access. Exports are rendered by PostgreSQL and copied out (``fast_jsonl``, ``fast_csv``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import connection, transaction
from django.db.models import Exists, Model, OuterRef, Q
from django.db.models.expressions import RawSQL
from django.utils import timezone

from . import audit_actions
from .models import AuditEntry, AuditEvent, Team

GENESIS_HASH = "0" * 64
# Arbitrary constant: the key of the advisory lock every append took in chain version 1 (before the sealer).
AUDIT_LOCK_KEY = 0x15D0_A0D1
# Arbitrary constant: the key of the advisory lock only sealers take (never an app transaction, unless
# AUDIT_SEAL_INLINE).
SEAL_LOCK_KEY = 0x15D0_A0D2
# The newest chain format: what the sealer writes.
CHAIN_VERSION = 2
# The most entries one sealing transaction chains (it loops while there are more).
SEAL_BATCH = 2000
SYSTEM_WORKER = "system:worker"
SYSTEM_SYNC = "system:sync"

HASHED_FIELDS = (
    "seq",
    "created_at",
    "actor_id",
    "actor_label",
    "team_id",
    "team_label",
    "action",
    "target_type",
    "target_id",
    "target_label",
    "summary",
    "changes",
    "context",
)

_local = threading.local()


def set_request_context(context: dict[str, Any] | None) -> None:
    """Remember ip, user agent and request id for events recorded while this request runs."""
    _local.context = context


def current_context() -> dict[str, Any]:
    return dict(getattr(_local, "context", None) or {})


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def canonical_json(data: dict[str, Any] | list[Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def row_payload(event: AuditEvent) -> dict[str, Any]:
    payload = {name: getattr(event, name) for name in HASHED_FIELDS}
    payload["created_at"] = event.created_at.astimezone(UTC).isoformat()
    return payload


def v2_payload(seq: int, entry_id: int | None, created_at: str, fields: Sequence[Any]) -> str:
    """Version 2's canonical text: a JSON array of the version, seq, the entry id, created_at (UTC isoformat) and
    the other hashed fields in HASHED_FIELDS order (``fields``: actor_id … context)."""
    return canonical_json([2, seq, entry_id, created_at, *fields])


def compute_hash(prev_hash: str, event: AuditEvent) -> str:
    """The hash of ``event`` in its own chain format (``chain_version``: 1 or 2)."""
    if getattr(event, "chain_version", 1) == 2:
        created_at = event.created_at.astimezone(UTC).isoformat()
        fields = [getattr(event, name) for name in HASHED_FIELDS[2:]]
        text = v2_payload(event.seq, event.entry_id, created_at, fields)
        return hashlib.sha256((prev_hash + text).encode()).hexdigest()
    return hashlib.sha256((prev_hash + canonical_json(row_payload(event))).encode()).hexdigest()


def _label(obj: object) -> str:
    return str(obj)[:300] if obj is not None else ""


def record(
    action: str,
    *,
    summary: str,
    actor: AbstractBaseUser | AnonymousUser | None = None,
    actor_label: str | None = None,
    team: Team | None = None,
    target: Model | None = None,
    target_type: str | None = None,
    target_id: str | int | None = None,
    target_label: str | None = None,
    changes: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
) -> AuditEvent | AuditEntry:
    """Write one event inside the caller's transaction: an AuditEntry (one INSERT, no lock), chained by the sealer
    once the transaction commits. Returns the entry; with AUDIT_SEAL_INLINE, the sealed AuditEvent.

    ``actor`` is a user or None (then ``actor_label`` names the system actor); ``team`` a Team or None;
    ``target`` any model instance. Labels are snapshotted so the row survives deletions. ``action`` must be
    registered in ``audit_actions`` (UnregisteredAction otherwise: nothing is written).
    """
    audit_actions.require_recordable(action)
    if actor is not None and getattr(actor, "pk", None) is not None:
        actor_id, label = actor.pk, actor_label or actor.get_username()
    else:
        actor_id, label = None, actor_label or SYSTEM_WORKER
    merged_context = current_context()
    merged_context.update(context or {})
    entry = AuditEntry(
        # Microseconds survive the database round trip exactly, so the hash can be recomputed.
        created_at=timezone.now(),
        actor_id=actor_id,
        actor_label=label[:150],
        team_id=getattr(team, "pk", None),
        team_label=_label(team)[:100],
        action=action,
        target_type=target_type or ((target._meta.model_name or "") if target is not None else ""),
        target_id=str(target_id if target_id is not None else getattr(target, "pk", "") or ""),
        target_label=target_label if target_label is not None else _label(target),
        summary=summary[:500],
        changes=_jsonable(changes or {}),
        context=_jsonable(merged_context),
    )
    if settings.AUDIT_SEAL_INLINE:
        with transaction.atomic():
            entry.save(force_insert=True)
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [SEAL_LOCK_KEY])
            return _append(_head(with_entry=False), [entry])[0]
    entry.save(force_insert=True)
    if settings.AUDIT_SEAL_ON_COMMIT and not _seal_pending_on_commit():
        transaction.on_commit(_seal_after_commit, robust=True)
    return entry


def _seal_pending_on_commit() -> bool:
    """Whether this transaction already seals after its commit (one sealer run per transaction is enough)."""
    return any(hook[1] is _seal_after_commit for hook in connection.run_on_commit)


def _seal_after_commit() -> None:
    seal()


@dataclass(frozen=True)
class _Head:
    seq: int
    hash: str
    after: tuple[int, int]  # the (xid, id) of the head's entry; (-1, -1) when it has none (version 1, or empty)


def _head(*, with_entry: bool = True) -> _Head:
    last = AuditEvent.objects.order_by("-seq").values("seq", "hash", "entry_id").first()
    if last is None:
        return _Head(0, GENESIS_HASH, (-1, -1))
    after = (-1, -1)
    if with_entry and last["entry_id"] is not None:
        found = AuditEntry.objects.filter(pk=last["entry_id"]).values_list("xid", "id").first()
        after = found if found is not None else after
    return _Head(last["seq"], last["hash"], after)


def _append(head: _Head, entries: Sequence[AuditEntry]) -> list[AuditEvent]:
    """Chain ``entries`` after ``head`` as version-2 events (the caller holds the sealer's lock)."""
    events, seq, prev_hash = [], head.seq, head.hash
    for entry in entries:
        seq += 1
        event = AuditEvent(
            seq=seq,
            created_at=entry.created_at,
            actor_id=entry.actor_id,
            actor_label=entry.actor_label,
            team_id=entry.team_id,
            team_label=entry.team_label,
            action=entry.action,
            target_type=entry.target_type,
            target_id=entry.target_id,
            target_label=entry.target_label,
            summary=entry.summary,
            changes=entry.changes,
            context=entry.context,
            prev_hash=prev_hash,
            chain_version=CHAIN_VERSION,
            entry_id=entry.pk,
        )
        event.hash = prev_hash = compute_hash(prev_hash, event)
        events.append(event)
    return AuditEvent.objects.bulk_create(events)


# The sealing horizon, as of the statement's snapshot: the oldest transaction still running that could write this
# database's entries, or the snapshot's xmax when there is none. ``pg_snapshot_xmin`` alone would do, but xids are
# the whole cluster's: a long transaction in another database (another app, another test run) would hold sealing
# back. So the snapshot's running xids are skipped when pg_stat_activity, read after the snapshot, shows them still
# running in another database (a connection never changes database). Any other xid counts, as a conservative
# bound: one that ended after the snapshot, whatever its database; a prepared transaction. pg_stat_activity shows
# 32-bit xids: the snapshot's 64-bit ones are compared modulo 2^32.
HORIZON_SQL = (
    "(SELECT COALESCE(min(running.xid::text::bigint), pg_snapshot_xmax(pg_current_snapshot())::text::bigint) "
    "FROM pg_snapshot_xip(pg_current_snapshot()) AS running(xid) "
    "WHERE mod(running.xid::text::bigint, 4294967296) NOT IN ("
    "SELECT other.backend_xid::text::bigint FROM pg_stat_activity AS other "
    "WHERE other.backend_xid IS NOT NULL AND other.datname IS DISTINCT FROM current_database()))"
)


def pending_entries(after: tuple[int, int]) -> Any:
    """Entries the sealer may chain now, in chain order: committed by a transaction older than every one still
    running, after ``after`` (the head's entry), not sealed yet."""
    xid, pk = after
    # Constant SQL, no input.
    horizon = RawSQL(HORIZON_SQL, [])  # noqa: S611
    return (
        AuditEntry.objects.filter(Q(xid__gt=xid) | Q(xid=xid, id__gt=pk), xid__lt=horizon)
        .filter(~Exists(AuditEvent.objects.filter(entry_id=OuterRef("pk"))))
        .order_by("xid", "id")
    )


# Entries after the head's entry, not sealed: what waits for the sealer (one statement; the (xid, id) index).
# Constant SQL, no input but the team ids as parameters.
_HEAD_ENTRY = (
    "(SELECT {column} FROM incidents_auditentry AS head_entry WHERE head_entry.id = "
    "(SELECT entry_id FROM incidents_auditevent ORDER BY seq DESC LIMIT 1))"
)
_WAITING_SQL = (
    "SELECT entry.id FROM incidents_auditentry AS entry "  # noqa: S608
    f"WHERE (entry.xid, entry.id) > (COALESCE({_HEAD_ENTRY.format(column='xid')}, -1), "
    f"COALESCE({_HEAD_ENTRY.format(column='id')}, -1)) "
    "AND NOT EXISTS (SELECT 1 FROM incidents_auditevent AS sealed WHERE sealed.entry_id = entry.id)"
)


# waiting_count counts no further: a page says "more than" that (a backlog is the sealer's problem, not a page's).
WAITING_CAP = 1000


def waiting_count(team_ids: Sequence[int | None] | None = None, *, cap: int = WAITING_CAP) -> int:
    """How many recorded events are not in the log yet (committed, waiting for the sealer), of these teams
    (``None`` in the list: the team-less ones; the list None: every team), up to ``cap`` + 1 (then: more than
    ``cap``). One query over the index of entries after the head's, never a count of the log."""
    sql, params = _WAITING_SQL, []
    if team_ids is not None:
        ids = [pk for pk in team_ids if pk is not None]
        sql += " AND (entry.team_id = ANY(%s)" + (" OR entry.team_id IS NULL)" if None in team_ids else ")")
        params = [ids]
    with connection.cursor() as cursor:
        cursor.execute(sql + " LIMIT %s", [*params, cap + 1])
        return len(cursor.fetchall())


def seal(*, batch_size: int = SEAL_BATCH) -> int:
    """Chain every committed entry that may be chained now (see the module's docstring); how many were sealed.

    Each batch is a short transaction of its own under the sealer's advisory lock (the next batch follows while
    batches come full); when another sealer holds it, this one returns at once (that one seals, or the next run
    does). Call it outside any transaction."""
    if connection.in_atomic_block:
        raise RuntimeError("audit.seal() runs in transactions of its own: call it outside transaction.atomic()")
    sealed = 0
    while True:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [SEAL_LOCK_KEY])
                (locked,) = cursor.fetchone()
            if not locked:
                return sealed
            head = _head()
            entries = list(pending_entries(head.after)[:batch_size])
            if not entries and not sealed:
                # A transaction that ended while the horizon was read counts as this database's (HORIZON_SQL): read
                # once more, with a fresh view of pg_stat_activity (cached for the transaction otherwise).
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_stat_clear_snapshot()")
                entries = list(pending_entries(head.after)[:batch_size])
            if entries:
                _append(head, entries)
        sealed += len(entries)
        if len(entries) < batch_size:
            # All there was: an entry committed since is sealed by its own transaction's post-commit run, or if
            # that one found the lock taken, by the next run (beat's, at the latest).
            return sealed


def field_changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[Any]]:
    """``{field: [old, new]}`` for every field whose value differs."""
    return {
        name: [_jsonable(before.get(name)), _jsonable(after.get(name))]
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    }


@dataclass(frozen=True)
class Anchor:
    """A head ``(seq, hash)`` known from outside the chain (a signed checkpoint), named for reports."""

    seq: int
    hash: str
    name: str


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    count: int
    head: str
    broken_seq: int | None = None
    reason: str = ""
    anchors_checked: int = 0

    def message(self) -> str:
        if self.ok:
            anchored = f", {self.anchors_checked} checkpoint(s) match" if self.anchors_checked else ""
            return f"OK: {self.count} events, head {self.head}{anchored}"
        return f"BROKEN at seq {self.broken_seq}: {self.reason}"


# The columns verify reads, in this order: every hashed field, the chain format and the entry, then the two hashes.
_VERIFY_COLUMNS = (*HASHED_FIELDS, "chain_version", "entry_id", "prev_hash", "hash")
_CHANGES = HASHED_FIELDS.index("changes")
assert HASHED_FIELDS[_CHANGES + 1] == "context"
PROGRESS_EVERY = 50_000


@dataclass(frozen=True)
class SegmentResult:
    """One run of seqs checked alone (``verify_segment``): links inside it, each row's hash, its anchors. Segments
    are independent (each row stores its ``prev_hash``): ``combine`` checks the links between them."""

    first: int
    count: int
    first_prev: str  # the prev_hash of the segment's first row ("" when it has none)
    last_hash: str
    checked: int
    broken_seq: int | None = None
    reason: str = ""


def verify_segment(
    first: int,
    last: int | None,
    anchors: Sequence[Anchor] = (),
    *,
    expect_prev: str | None = None,
    progress: Callable[[int], None] | None = None,
    batch_size: int = 5000,
) -> SegmentResult:
    """Check seqs ``first``..``last`` (to the end when None): numbering, links inside the run (and the first row's
    link when ``expect_prev`` is given), each row's hash, each anchor in it.

    Rows are read as tuples through a psycopg server-side cursor (no model instances, no ORM converters; memory
    flat at any size), created_at rendered by PostgreSQL as Python's UTC isoformat() (the export's rule) and the
    JSON columns parsed here: hashed exactly as ``compute_hash`` does."""
    by_seq: dict[int, list[Anchor]] = {}
    for anchor in anchors:
        by_seq.setdefault(anchor.seq, []).append(anchor)
    prev_hash, expected_seq, count, checked, first_prev = expect_prev, first, 0, 0, ""
    sha256, dumps, loads = hashlib.sha256, canonical_json, json.loads

    def broken(seq: int, reason: str) -> SegmentResult:
        return SegmentResult(first, count, first_prev, prev_hash or "", checked, seq, reason)

    with transaction.atomic():
        connection.ensure_connection()
        with connection.connection.cursor(name="audit_verify") as cursor:
            cursor.itersize = batch_size
            cursor.execute(_VERIFY_SQL, [first, last if last is not None else 2**63 - 1])
            for row in cursor:
                seq, row_prev, row_hash = row[0], row[-2], row[-1]
                if seq != expected_seq:
                    return broken(expected_seq, f"seq {expected_seq} is missing")
                if count == 0:
                    first_prev = row_prev
                if prev_hash is not None and row_prev != prev_hash:
                    return broken(seq, "prev_hash does not match the event before")
                if row[-4] == 2:
                    text = dumps([2, seq, row[-3], *row[1:_CHANGES], loads(row[_CHANGES]), loads(row[_CHANGES + 1])])
                elif row[-4] == 1:
                    payload = dict(zip(HASHED_FIELDS, row, strict=False))
                    payload["changes"], payload["context"] = loads(row[_CHANGES]), loads(row[_CHANGES + 1])
                    text = dumps(payload)
                else:
                    return broken(seq, f"unknown chain version {row[-4]}")
                if sha256((row_prev + text).encode()).hexdigest() != row_hash:
                    return broken(seq, "the row's content does not match its hash")
                for anchor in by_seq.get(seq, ()):
                    if anchor.hash != row_hash:
                        return broken(
                            seq,
                            f"{anchor.name} signed hash {anchor.hash} for this seq; the chain now has {row_hash}: "
                            "the chain was rewritten after it was signed",
                        )
                    checked += 1
                prev_hash, expected_seq, count = row_hash, expected_seq + 1, count + 1
                if progress is not None and count % PROGRESS_EVERY == 0:
                    progress(count)
    if last is not None and expected_seq <= last:
        return broken(expected_seq, f"seq {expected_seq} is missing")
    return SegmentResult(first, count, first_prev, prev_hash or "", checked)


def combine(segments: Sequence[SegmentResult], anchors: Sequence[Anchor] = ()) -> VerifyResult:
    """One verdict from consecutive segments (the first starting at seq 1): the first problem in seq order, a link
    between two segments included; then any anchor past the chain's end (events were removed)."""
    head, count, checked = GENESIS_HASH, 0, 0
    for segment in segments:
        if segment.count and segment.first_prev != head and segment.broken_seq != segment.first:
            return VerifyResult(False, count, head, segment.first, "prev_hash does not match the event before")
        if segment.broken_seq is not None:
            return VerifyResult(
                False, count + segment.count, segment.last_hash or head, segment.broken_seq, segment.reason
            )
        head, count, checked = segment.last_hash or head, count + segment.count, checked + segment.checked
    beyond = sorted((anchor for anchor in anchors if anchor.seq > count), key=lambda anchor: anchor.seq)
    if beyond:
        anchor = beyond[0]
        return VerifyResult(
            False,
            count,
            head,
            anchor.seq,
            f"{anchor.name} signed seq {anchor.seq}, but the chain ends at seq {count}: events were removed",
        )
    return VerifyResult(True, count, head, anchors_checked=checked)


def verify_chain(
    batch_size: int = 5000,
    anchors: Sequence[Anchor] = (),
    progress: Callable[[int], None] | None = None,
) -> VerifyResult:
    """Recompute every hash in seq order; name the first seq whose link, hash or numbering is wrong, or whose hash
    contradicts an anchor (a signed checkpoint: a chain re-hashed after doctoring is consistent with itself, not
    with what was signed before). An anchor past the end of the chain means events were removed. ``progress`` is
    called with the count checked every ``PROGRESS_EVERY`` events. One process; ``verifications`` runs segments
    in parallel processes for the background job."""
    segment = verify_segment(1, None, anchors, expect_prev=GENESIS_HASH, progress=progress, batch_size=batch_size)
    return combine([segment], anchors)


# --- Export -------------------------------------------------------------------------------------------------
# Every hashed field is exported (plus the two hashes, the chain format and the entry id), so an unfiltered export
# can be re-verified offline with nothing but this module's canonical JSON rules.
EXPORT_COLUMNS = (*HASHED_FIELDS, "prev_hash", "hash", "chain_version", "entry_id")
# OWASP "CSV injection": a cell starting with one of these may be run as a formula by a spreadsheet.
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")
# Rows are gathered into chunks of about this many characters: one write per row is slow, one per export
# is not streaming.
EXPORT_CHUNK_CHARS = 64 * 1024


def neutralise_formula(value: str) -> str:
    """Stop spreadsheets from running a cell as a formula (OWASP CSV injection), leading spaces included."""
    return "'" + value if value.lstrip(" ").startswith(_FORMULA_PREFIXES) else value


def export_row(event: AuditEvent) -> dict[str, Any]:
    row = {name: getattr(event, name) for name in EXPORT_COLUMNS}
    # The same UTC rendering the hash was computed over.
    row["created_at"] = event.created_at.astimezone(UTC).isoformat()
    return row


def _chunked(pieces: Iterable[str]) -> Iterator[str]:
    batch: list[str] = []
    size = 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece)
        if size >= EXPORT_CHUNK_CHARS:
            yield "".join(batch)
            batch, size = [], 0
    if batch:
        yield "".join(batch)


def _csv_lines(events: Iterable[AuditEvent]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def flush() -> str:
        value = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate(0)
        return value

    writer.writerow(EXPORT_COLUMNS)
    yield flush()
    for event in events:
        row = export_row(event)
        cells = []
        for name in EXPORT_COLUMNS:
            value = row[name]
            if isinstance(value, (dict, list)):
                value = canonical_json(value)
            cells.append(neutralise_formula(value) if isinstance(value, str) else value)
        writer.writerow(cells)
        yield flush()


def iter_csv(events: Iterable[AuditEvent]) -> Iterator[str]:
    """CSV with a header row, every text cell neutralised against formula injection; yields ~64 KB chunks."""
    return _chunked(_csv_lines(events))


def iter_jsonl(events: Iterable[AuditEvent]) -> Iterator[str]:
    """One canonical JSON object per line, exactly as stored (no neutralising: JSON is not a spreadsheet)."""
    return _chunked(canonical_json(export_row(event)) + "\n" for event in events)


# --- Fast export: the database renders each row ---------------------------------------------------------------
# At a million rows the ORM's model instances and Python's json.dumps cost ~75 µs a row (13 k rows/s). Here
# PostgreSQL renders each JSON line (json_build_object; the created_at text exactly as Python's UTC isoformat(),
# microseconds only when there are some) and each CSV cell (formulas neutralised), and the export reads one text
# column, or one tuple of texts, through a server-side cursor. A JSON line's keys and spacing are PostgreSQL's,
# not the canonical form: a verifier parses each line and re-canonicalises it (tools/verify_audit_export.py does).
_T = AuditEvent._meta.db_table
_CREATED_AT_SQL = (
    f"to_char({_T}.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS') || "
    f"CASE WHEN mod(extract(microseconds FROM {_T}.created_at)::bigint, 1000000) = 0 THEN '' "
    f"ELSE to_char({_T}.created_at AT TIME ZONE 'UTC', '.US') END || '+00:00'"
)
_JSON_COLUMNS = ("changes", "context")
_NUMBER_COLUMNS = ("seq", "actor_id", "team_id", "chain_version", "entry_id")
EXPORT_LINE_SQL = (
    "json_build_object("
    + ", ".join(
        f"'{name}', " + (_CREATED_AT_SQL if name == "created_at" else f"{_T}.{name}") for name in EXPORT_COLUMNS
    )
    + ")::text"
)
# OWASP's formula prefixes (as _FORMULA_PREFIXES), as a regular expression over the text without leading spaces.
_FORMULA_RE = "^[-=+@\\t\\r\\n\uff1d\uff0b\uff0d\uff20]"


def _csv_cell_sql(name: str) -> str:
    if name == "created_at":
        return _CREATED_AT_SQL
    if name in _NUMBER_COLUMNS:
        return f"{_T}.{name}::text"
    text = f"{_T}.{name}::text" if name in _JSON_COLUMNS else f"{_T}.{name}"
    return f"CASE WHEN ltrim({text}, ' ') ~ E'{_FORMULA_RE}' THEN '''' || {text} ELSE {text} END"


EXPORT_CSV_SQL = tuple(_csv_cell_sql(name) for name in EXPORT_COLUMNS)
# COPY hands over blocks of this many bytes or so; lines are cut at the last newline of each.
_COPY_CHUNK_BYTES = 64 * 1024


def _copy_lines(query: Any, options: str) -> Iterator[bytes]:
    """``COPY (query) TO STDOUT``: whole lines only (a block may end inside a line, or inside a UTF-8 character)."""
    sql, params = query.query.sql_with_params()
    with connection.cursor() as cursor:
        raw = cursor.cursor  # psycopg's own cursor (client-side binding: COPY takes the query's parameters)
        if not params:
            sql = sql.replace("%%", "%")  # no parameters: psycopg takes the text as it is
        with raw.copy(f"COPY ({sql}) TO STDOUT {options}", params or None) as copy:
            pending = b""
            for block in copy:
                pending += bytes(block)
                if len(pending) < _COPY_CHUNK_BYTES:
                    continue
                cut = pending.rfind(b"\n") + 1
                if cut:
                    yield pending[:cut]
                    pending = pending[cut:]
            if pending:
                yield pending


def fast_jsonl(events: Any) -> Iterator[str]:
    """JSON Lines of ``events`` (a queryset, in its order), rendered by PostgreSQL and read with COPY; yields
    ~64 KB chunks. COPY's text format doubles each backslash (the only character of a JSON line it escapes: the
    JSON has no raw control characters), so each chunk undoes that."""
    # Constant SQL, no input in it (the filters stay the queryset's parameters).
    lines = events.annotate(export_line=RawSQL(EXPORT_LINE_SQL, [])).values_list("export_line")  # noqa: S611
    for chunk in _copy_lines(lines, ""):
        yield chunk.decode().replace("\\\\", "\\")


def fast_csv(events: Any) -> Iterator[str]:
    """CSV of ``events`` (a queryset, in its order) with a header row, cells rendered (formulas neutralised) by
    PostgreSQL and written by COPY; yields ~64 KB chunks."""
    names = [f"export_{name}" for name in EXPORT_COLUMNS]
    rows = events.annotate(**{n: RawSQL(sql, []) for n, sql in zip(names, EXPORT_CSV_SQL, strict=True)})  # noqa: S611
    yield ",".join(EXPORT_COLUMNS) + "\n"
    for chunk in _copy_lines(rows.values_list(*names), "WITH (FORMAT csv)"):
        yield chunk.decode()


# verify_chain's query: every hashed field in HASHED_FIELDS order, created_at as text, the JSON columns as text.
# Constant: this module's column and table names, no input.
_VERIFY_SQL = (
    "SELECT "  # noqa: S608
    + ", ".join(
        _CREATED_AT_SQL if name == "created_at" else f"{_T}.{name}::text" if name in _JSON_COLUMNS else f"{_T}.{name}"
        for name in _VERIFY_COLUMNS
    )
    + f" FROM {_T} WHERE {_T}.seq BETWEEN %s AND %s ORDER BY {_T}.seq"
)
