"""The audit chain itself: gap-free under concurrency, append-only in the database, tampering is named."""

from __future__ import annotations

import threading
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from incidents import audit
from incidents.models import AuditEvent

from .conftest import as_owner, tamper_as_owner

THREADS = 4
EVENTS_PER_THREAD = 50


def _record_many(count: int, label: str = "t") -> list[AuditEvent]:
    return [
        audit.record("draft.saved", actor_label=f"system:{label}", summary=f"{label} event {i}") for i in range(count)
    ]


def _tamper(sql: str, params: list) -> None:
    """Change a row behind the trigger's back, as only the table's owner can (the app's role cannot)."""
    tamper_as_owner(sql, params)


@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_are_gap_free_and_chain_verifies():
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def worker(name: str) -> None:
        try:
            start.wait(timeout=10)
            _record_many(EVENTS_PER_THREAD, name)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert not errors
    assert not any(thread.is_alive() for thread in threads)
    seqs = list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, THREADS * EVENTS_PER_THREAD + 1))
    # Every thread's events all landed, interleaved or not.
    for i in range(THREADS):
        assert AuditEvent.objects.filter(actor_label=f"system:w{i}").count() == EVENTS_PER_THREAD
    result = audit.verify_chain()
    assert result.ok, result.message()
    assert result.count == THREADS * EVENTS_PER_THREAD
    assert result.head == AuditEvent.objects.get(seq=THREADS * EVENTS_PER_THREAD).hash


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE incidents_auditevent SET summary = 'rewritten' WHERE seq = %s",
        "DELETE FROM incidents_auditevent WHERE seq = %s",
    ],
)
def test_database_refuses_update_or_delete_of_an_audit_row_to_the_app_and_to_the_owner(sql):
    event = _record_many(1)[0]
    # The app's role has no such privilege; the owner has, and the trigger refuses it.
    with pytest.raises(DatabaseError, match="permission denied"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, [event.seq])
    with (
        as_owner(),
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql, [event.seq])
    assert AuditEvent.objects.get(seq=event.seq).summary == event.summary


@pytest.mark.django_db
def test_orm_update_and_delete_are_refused_too():
    _record_many(2)
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.filter(seq=1).update(summary="x")
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.count() == 2


@pytest.mark.django_db
def test_verify_audit_log_prints_ok_with_count_and_head():
    events = _record_many(3)
    out = StringIO()
    call_command("verify_audit_log", stdout=out)
    assert out.getvalue().strip() == f"OK: 3 events, head {events[-1].hash}"


@pytest.mark.django_db
def test_verify_audit_log_on_an_empty_table_is_ok():
    out = StringIO()
    call_command("verify_audit_log", stdout=out)
    assert out.getvalue().strip() == f"OK: 0 events, head {audit.GENESIS_HASH}"


@pytest.mark.django_db(transaction=True)
def test_verify_audit_log_names_the_seq_of_a_rewritten_summary():
    _record_many(5)
    _tamper("UPDATE incidents_auditevent SET summary = 'nothing happened' WHERE seq = %s", [3])
    with pytest.raises(CommandError) as failure:
        call_command("verify_audit_log", stdout=StringIO())
    assert failure.value.returncode == 1
    assert "seq 3" in str(failure.value)
    assert "content does not match its hash" in str(failure.value)


@pytest.mark.django_db(transaction=True)
def test_verify_audit_log_names_a_broken_prev_hash_link():
    _record_many(5)
    # The row's own hash is recomputed over the forged link, so only the link itself betrays it.
    forged = audit.AuditEvent.objects.get(seq=4)
    forged.prev_hash = "f" * 64
    forged_hash = audit.compute_hash(forged.prev_hash, forged)
    _tamper(
        "UPDATE incidents_auditevent SET prev_hash = %s, hash = %s WHERE seq = %s",
        [forged.prev_hash, forged_hash, 4],
    )
    with pytest.raises(CommandError) as failure:
        call_command("verify_audit_log", stdout=StringIO())
    assert failure.value.returncode == 1
    assert "seq 4" in str(failure.value)
    assert "prev_hash" in str(failure.value)


@pytest.mark.django_db(transaction=True)
def test_verify_audit_log_names_a_deleted_row_as_missing():
    _record_many(5)
    _tamper("DELETE FROM incidents_auditevent WHERE seq = %s", [2])
    with pytest.raises(CommandError) as failure:
        call_command("verify_audit_log", stdout=StringIO())
    assert "seq 2" in str(failure.value)
    assert "missing" in str(failure.value)


@pytest.mark.django_db(transaction=True)
def test_verify_chain_reports_the_last_good_head_when_broken():
    events = _record_many(4)
    _tamper("UPDATE incidents_auditevent SET action = 'test.forged' WHERE seq = %s", [4])
    result = audit.verify_chain(batch_size=2)
    assert not result.ok
    assert result.broken_seq == 4
    assert result.count == 3
    assert result.head == events[2].hash
