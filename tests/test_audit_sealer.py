"""Appends that do not serialise the app (issue 13): record() writes an entry in the caller's transaction without
a lock; the sealer chains committed entries into the log (chain version 2), gap-free, fork-free, each once.

These tests run production's deferred sealing (``deferred_sealing``), not the suite's inline sealing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC
from typing import Any

import pytest
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.test.utils import override_settings
from django.utils import timezone

from incidents import audit, checkpoints
from incidents.models import AuditEntry, AuditEvent

from .conftest import as_owner, tamper_as_owner
from .test_offline_verify import full_export, offline
from .waiting import wait_for

pytestmark = pytest.mark.usefixtures("deferred_sealing")


class Holder(threading.Thread):
    """A transaction in a thread of its own (its own connection): ``body`` runs inside it, then it stays open until
    ``release`` is set, then commits (or rolls back when ``rollback``)."""

    def __init__(self, body: Callable[[], Any], *, rollback: bool = False) -> None:
        super().__init__(daemon=True)
        self.body, self.rollback = body, rollback
        self.inside, self.release = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self.backend_pid = 0

    def run(self) -> None:
        try:
            with transaction.atomic():
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_backend_pid()")
                    self.backend_pid = cursor.fetchone()[0]
                self.body()
                self.inside.set()
                if not self.release.wait(timeout=60):
                    raise TimeoutError("never released")
                if self.rollback:
                    transaction.set_rollback(True)
        except BaseException as exc:
            self.error = exc
            self.inside.set()
        finally:
            connection.close()

    def finish(self) -> None:
        self.release.set()
        self.join(timeout=60)
        assert not self.is_alive()
        assert self.error is None, self.error


def _record(summary: str) -> AuditEntry | AuditEvent:
    return audit.record("draft.saved", actor_label="system:test", summary=summary)


def seal_all() -> int:
    """Run the sealer until nothing waits; how many it sealed. A run may seal nothing for a moment: a transaction of
    unknown database that ended while it read counts as this database's (see audit.HORIZON_SQL); the next run, as
    beat's would, seals it."""
    sealed = [0]

    def done() -> bool:
        sealed[0] += audit.seal()
        return audit.waiting_count() == 0

    wait_for(done, what="the sealer to seal every committed entry")
    return sealed[0]


def _summaries() -> list[str]:
    return list(AuditEvent.objects.order_by("seq").values_list("summary", flat=True))


def test_a_second_transaction_records_while_the_first_is_still_open():
    first = Holder(lambda: _record("first"))
    first.start()
    assert first.inside.wait(timeout=30) and first.error is None
    # The first transaction holds whatever its append took. Today's append queued here on the advisory lock
    # until the first committed: the lock timeout turns that wait into an error instead of a hang.
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '5s'")
        _record("second")
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_locks WHERE pid = %s AND locktype = 'advisory'", [first.backend_pid]
            )
            assert cursor.fetchone()[0] == 0  # the open transaction holds no lock of the log's
    # The second committed first, but the first's transaction is older and still running: nothing is sealed past
    # it, so the first can never land behind a seq already handed out.
    assert audit.seal() == 0
    assert audit.waiting_count() == 1
    first.finish()
    assert seal_all() == 2
    assert _summaries() == ["first", "second"]  # the order of the transactions' ids, not of their commits
    assert audit.waiting_count() == 0
    assert audit.verify_chain().ok


def test_an_entry_of_a_rolled_back_transaction_is_never_sealed():
    with pytest.raises(RuntimeError), transaction.atomic():
        _record("rolled back")
        raise RuntimeError("the action failed")
    _record("kept")
    rolled = Holder(lambda: _record("rolled back in a thread"), rollback=True)
    rolled.start()
    assert rolled.inside.wait(timeout=30)
    _record("after")
    rolled.finish()
    assert seal_all() == 2
    assert _summaries() == ["kept", "after"]
    assert AuditEntry.objects.count() == 2
    assert audit.seal() == 0  # idempotent


def test_entries_committed_out_of_order_are_sealed_gap_free_in_transaction_order():
    holders = [Holder(lambda n=n: _record(f"held {n}")) for n in range(3)]
    for holder in holders:
        holder.start()
        assert holder.inside.wait(timeout=30)
    for holder in reversed(holders):  # the youngest transaction commits first
        holder.finish()
        audit.seal()
    _record("last")
    seal_all()
    events = list(AuditEvent.objects.order_by("seq").values("seq", "entry_id", "chain_version", "summary"))
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert [e["summary"] for e in events] == ["held 0", "held 1", "held 2", "last"]
    assert {e["chain_version"] for e in events} == {2}
    xids = [AuditEntry.objects.get(pk=e["entry_id"]).xid for e in events]
    assert xids == sorted(xids)
    assert audit.verify_chain().ok


def test_two_sealers_at_once_seal_each_entry_once():
    for n in range(300):
        _record(f"e{n}")
    start = threading.Barrier(2)
    sealed: list[int] = []
    errors: list[BaseException] = []

    def sealer() -> None:
        try:
            start.wait(timeout=10)
            sealed.append(audit.seal(batch_size=25))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=sealer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and len(sealed) == 2
    assert sum(sealed) + seal_all() == 300
    assert list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True)) == list(range(1, 301))
    assert AuditEvent.objects.values("entry_id").distinct().count() == 300
    assert audit.verify_chain().ok


def test_an_entry_cannot_be_sealed_twice():
    _record("once")
    seal_all()
    event = AuditEvent.objects.get()
    twin = AuditEvent(
        seq=2,
        created_at=event.created_at,
        actor_label=event.actor_label,
        action=event.action,
        summary=event.summary,
        prev_hash=event.hash,
        chain_version=2,
        entry_id=event.entry_id,
    )
    twin.hash = audit.compute_hash(event.hash, twin)
    with pytest.raises(IntegrityError), transaction.atomic():
        twin.save(force_insert=True)


def test_the_app_role_may_only_read_and_append_entries():
    entry = _record("entry")
    for sql in ("UPDATE incidents_auditentry SET summary = 'x'", "DELETE FROM incidents_auditentry"):
        with pytest.raises(DatabaseError, match="permission denied"), transaction.atomic(), connection.cursor() as c:
            c.execute(sql)
    # The owner may not either: the triggers refuse.
    with as_owner(), pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as c:
        c.execute("UPDATE incidents_auditentry SET summary = 'x' WHERE id = %s", [entry.pk])


@override_settings(AUDIT_SEAL_ON_COMMIT=True)
def test_a_commit_runs_the_sealer_right_after_it(monkeypatch):
    runs: list[int] = []
    real_seal = audit.seal
    monkeypatch.setattr(audit, "seal", lambda: runs.append(real_seal()) or runs[-1])
    with transaction.atomic():
        _record("one")
        _record("two")
        assert not AuditEvent.objects.exists() and runs == []
    assert len(runs) == 1  # one run per transaction, after its commit
    _record("in autocommit")  # no transaction around it: a run at once
    assert len(runs) == 2
    # Each run sealed what it could (almost always everything: see seal_all for the exception).
    assert sum(runs) + seal_all() == 3
    assert _summaries() == ["one", "two", "in autocommit"]


def _v1_events(count: int) -> None:
    """Events as record() chained them before the sealer (chain version 1), after the current head."""
    last = AuditEvent.objects.order_by("-seq").first()
    seq, prev_hash = (last.seq, last.hash) if last else (0, audit.GENESIS_HASH)
    for n in range(count):
        seq += 1
        event = AuditEvent(
            seq=seq,
            created_at=timezone.now().astimezone(UTC),
            actor_label="system:worker",
            action="draft.saved",
            summary=f"v1 event {n}",
            changes={"n": [n, n + 1]},
            context={"ip": "10.0.0.1"},
            prev_hash=prev_hash,
        )
        event.hash = prev_hash = audit.compute_hash(prev_hash, event)
        event.save(force_insert=True)


def test_a_chain_of_old_and_sealed_events_verifies_and_a_doctored_sealed_row_fails(tmp_path):
    _v1_events(3)
    audit.record("draft.saved", actor_label="system:test", summary="v2 — café", changes={"b": [1, 2], "a": None})
    _record("v2 again")
    assert seal_all() == 2
    assert list(AuditEvent.objects.order_by("seq").values_list("chain_version", flat=True)) == [1, 1, 1, 2, 2]
    checkpoints.sign_head("interval")
    assert checkpoints.verify().ok, checkpoints.verify().message()
    text = full_export()
    result = offline(tmp_path, text, "--full")
    assert result.returncode == 0, result.stdout + result.stderr

    tamper_as_owner("UPDATE incidents_auditevent SET summary = 'doctored' WHERE seq = 4", [])
    result = audit.verify_chain()
    assert not result.ok and result.broken_seq == 4 and "hash" in result.reason
    assert offline(tmp_path, full_export()).returncode == 1


def test_a_sealed_row_passed_off_as_an_old_one_fails():
    _v1_events(1)
    _record("sealed")
    seal_all()
    tamper_as_owner("UPDATE incidents_auditevent SET chain_version = 1 WHERE seq = 2", [])
    result = audit.verify_chain()
    assert not result.ok and result.broken_seq == 2


def test_a_re_hashed_sealed_chain_contradicts_its_checkpoint():
    _record("signed")
    seal_all()
    checkpoints.sign_head("interval")
    event = AuditEvent.objects.get()
    event.summary = "rewritten"
    forged = audit.compute_hash(event.prev_hash, event)
    tamper_as_owner("UPDATE incidents_auditevent SET summary = %s, hash = %s WHERE seq = 1", [event.summary, forged])
    result = checkpoints.verify()
    assert not result.ok and result.broken_seq == 1 and "checkpoint" in result.reason


def test_waiting_events_are_counted_per_team(platform, data_team):
    audit.record("draft.saved", team=platform, summary="ours")
    audit.record("draft.saved", team=data_team, summary="theirs")
    audit.record("draft.saved", summary="no team")
    assert audit.waiting_count() == 3
    assert audit.waiting_count([platform.pk]) == 1
    assert audit.waiting_count([None]) == 1
    assert audit.waiting_count(cap=1) == 2  # more than the cap: counted no further
    seal_all()
    assert audit.waiting_count() == 0


def test_beat_runs_the_sealer():
    from django.conf import settings

    from incidents import tasks

    assert settings.CELERY_BEAT_SCHEDULE["seal-audit-log"]["task"] == tasks.seal_audit_log.name
    _record("by beat")
    assert tasks.seal_audit_log.apply().get() == 1
    assert _summaries() == ["by beat"]


def test_the_audit_page_says_how_many_events_wait_to_be_sealed(auditor, platform, data_team, as_user):
    audit.record("draft.saved", team=platform, summary="ours, waiting")
    audit.record("draft.saved", team=data_team, summary="theirs, waiting")
    client = as_user(auditor)
    body = client.get("/audit/").content.decode()
    assert "1 recorded event waiting to be sealed" in body  # the other team's is not the auditor's to count
    assert "ours, waiting" not in body
    seal_all()
    body = client.get("/audit/").content.decode()
    assert "waiting to be sealed" not in body and "ours, waiting" in body
