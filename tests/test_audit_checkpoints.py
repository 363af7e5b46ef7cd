"""Signed checkpoints (issue 13): the chain's head signed with a key outside the database, stored insert-only and in
a sink file; verify (the command, the page, the offline script) checks the chain against every checkpoint, so a
doctored chain that the database's owner re-hashed consistently is still caught, naming the checkpoint."""

from __future__ import annotations

import base64
import importlib.util
import json
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from incidents import audit, checkpoints
from incidents.models import AuditCheckpoint, AuditEvent
from isdown_admin import signing

from .conftest import as_owner, tamper_as_owner

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "verify_audit_export.py"


def _record(team, count: int = 6) -> None:
    for n in range(count):
        audit.record("draft.saved", team=team, summary=f"event {n}", changes={"n": [n, n + 1]})


def _verify_command() -> str:
    with pytest.raises(CommandError) as failure:
        call_command("verify_audit_log", stdout=StringIO())
    assert failure.value.returncode == 1
    return str(failure.value)


def _rehash_everything() -> None:
    """What an owner without the key does after doctoring: recompute every link and hash, so the chain is
    consistent with itself again."""
    prev_hash = audit.GENESIS_HASH
    for event in list(AuditEvent.objects.order_by("seq")):
        event.prev_hash = prev_hash
        event.hash = audit.compute_hash(prev_hash, event)
        tamper_as_owner(
            "UPDATE incidents_auditevent SET prev_hash = %s, hash = %s WHERE id = %s",
            [event.prev_hash, event.hash, event.pk],
        )
        prev_hash = event.hash


def _offline(tmp_path: Path, text: str, *args: str) -> subprocess.CompletedProcess:
    path = tmp_path / "export.jsonl"
    path.write_text(text, encoding="utf-8")
    # -I -S: the standard library alone (no cryptography): signatures go through the RFC 8032 reference code.
    return subprocess.run(
        [sys.executable, "-I", "-S", str(SCRIPT), str(path), *args], capture_output=True, text=True, timeout=120
    )


def _export(client) -> str:
    response = client.get("/audit/export.jsonl")
    assert response.status_code == 200
    return b"".join(response.streaming_content).decode()


# --- Signing and storing ----------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_a_checkpoint_signs_the_head_and_is_appended_to_the_sink(platform, checkpoint_sink):
    _record(platform, 3)
    checkpoint = checkpoints.sign_head("interval")
    head = AuditEvent.objects.order_by("-seq").first()
    assert (checkpoint.seq, checkpoint.hash) == (head.seq, head.hash)
    assert checkpoint.public_key == checkpoints.public_key()
    message = signing.checkpoint_message(
        seq=checkpoint.seq, hash=checkpoint.hash, signed_at=checkpoint.signed_at.isoformat()
    )
    assert signing.signature_valid(checkpoint.public_key, message, checkpoint.signature)
    sink = [json.loads(line) for line in checkpoint_sink.read_text().splitlines()]
    assert sink == [checkpoints.as_record(checkpoint)]


@pytest.mark.django_db
def test_the_interval_checkpoint_is_skipped_while_the_head_has_not_moved(platform):
    assert checkpoints.sign_head("interval", only_if_moved=True) is None  # an empty log: nothing to sign
    _record(platform, 2)
    assert checkpoints.sign_head("interval", only_if_moved=True) is not None
    assert checkpoints.sign_head("interval", only_if_moved=True) is None
    _record(platform, 1)
    assert checkpoints.sign_head("interval", only_if_moved=True) is not None
    assert AuditCheckpoint.objects.count() == 2


@pytest.mark.django_db
def test_the_beat_task_signs_a_checkpoint(platform):
    from incidents import tasks

    _record(platform, 2)
    checkpoint_id = tasks.checkpoint_audit_log.apply().get()
    assert AuditCheckpoint.objects.get(pk=checkpoint_id).reason == "interval"


@pytest.mark.django_db
def test_a_sink_that_cannot_be_written_rolls_the_checkpoint_back(platform, settings, tmp_path):
    _record(platform, 1)
    settings.AUDIT_CHECKPOINT_SINK = str(tmp_path / "a-file" / "sink.jsonl")
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(checkpoints.CheckpointError, match="AUDIT_CHECKPOINT_SINK"):
        checkpoints.sign_head("export")
    assert not AuditCheckpoint.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE incidents_auditcheckpoint SET hash = 'forged' WHERE id = %s",
        "DELETE FROM incidents_auditcheckpoint WHERE id = %s",
    ],
)
def test_the_checkpoint_table_is_insert_only_for_the_app_and_the_owner(platform, sql):
    _record(platform, 1)
    checkpoint = checkpoints.sign_head("interval")
    with pytest.raises(DatabaseError, match="permission denied"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, [checkpoint.pk])
    with as_owner(), pytest.raises(DatabaseError, match="append-only"), connection.cursor() as cursor:
        cursor.execute(sql, [checkpoint.pk])
    assert AuditCheckpoint.objects.get(pk=checkpoint.pk).hash == checkpoint.hash


# --- Verify: a clean log ------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_verify_checks_the_chain_against_every_checkpoint(platform):
    _record(platform, 3)
    checkpoints.sign_head("interval")
    _record(platform, 3)
    checkpoints.sign_head("export")
    out = StringIO()
    call_command("verify_audit_log", stdout=out)
    assert out.getvalue().strip().endswith("2 checkpoint(s) match")


# --- Verify: the database's owner doctors the chain and re-hashes it --------------------------------------------
@pytest.fixture
def signed_log(platform):
    _record(platform, 6)
    first = checkpoints.sign_head("interval")
    _record(platform, 4)
    second = checkpoints.sign_head("interval")
    return first, second


@pytest.mark.django_db(transaction=True)
def test_a_relabelled_and_rehashed_chain_fails_verify_naming_the_checkpoint(signed_log, auditor, as_user):
    first, _ = signed_log
    tamper_as_owner("UPDATE incidents_auditevent SET action = 'draft.created' WHERE seq = %s", [3])
    _rehash_everything()
    assert audit.verify_chain().ok  # consistent with itself: without checkpoints nothing would show
    message = _verify_command()
    assert f"BROKEN at seq {first.seq}" in message
    assert f"checkpoint #{first.pk}" in message and "rewritten after it was signed" in message
    page = as_user(auditor).post("/audit/verify/", headers={"HX-Request": "true"})
    assert f"checkpoint #{first.pk}" in page.content.decode()
    assert AuditEvent.objects.filter(action="audit.verified", summary__contains="BROKEN").exists()


@pytest.mark.django_db(transaction=True)
def test_a_deleted_row_renumbered_and_rehashed_fails_verify_naming_the_checkpoint(signed_log):
    first, _ = signed_log
    tamper_as_owner("DELETE FROM incidents_auditevent WHERE seq = %s", [2])
    for seq in range(3, AuditEvent.objects.order_by("-seq").first().seq + 1):
        tamper_as_owner("UPDATE incidents_auditevent SET seq = seq - 1 WHERE seq = %s", [seq])
    _rehash_everything()
    assert audit.verify_chain().ok
    message = _verify_command()
    assert f"checkpoint #{first.pk}" in message


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("signed_log")
def test_a_forged_checkpoint_signed_with_another_key_fails_verify():
    tamper_as_owner("UPDATE incidents_auditevent SET summary = 'nothing happened' WHERE seq = %s", [8])
    _rehash_everything()
    head = AuditEvent.objects.order_by("-seq").first()
    other = Ed25519PrivateKey.generate()
    signed_at = "2026-01-01T00:00:00+00:00"
    AuditCheckpoint.objects.create(
        seq=head.seq,
        hash=head.hash,
        signed_at=signed_at,
        reason="interval",
        public_key=signing.public_b64(other),
        signature=signing.sign(other, signing.checkpoint_message(seq=head.seq, hash=head.hash, signed_at=signed_at)),
    )
    message = _verify_command()
    assert "not by the audit signing key" in message and f"seq {head.seq}" in message


@pytest.mark.django_db(transaction=True)
def test_checkpoints_deleted_from_the_database_are_still_in_the_sink(signed_log):
    first, _ = signed_log
    tamper_as_owner("DELETE FROM incidents_auditcheckpoint", [], table="incidents_auditcheckpoint")
    tamper_as_owner("UPDATE incidents_auditevent SET summary = 'nothing happened' WHERE seq = %s", [3])
    _rehash_everything()
    message = _verify_command()
    assert f"checkpoint #{first.pk} from the sink" in message and "missing from the database" in message


# --- The auditors' page ---------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_audit_page_shows_the_public_key_its_fingerprint_and_the_latest_checkpoints(platform, auditor, as_user):
    _record(platform, 2)
    checkpoint = checkpoints.sign_head("interval")
    html = as_user(auditor).get("/audit/").content.decode()
    assert checkpoints.public_key() in html and checkpoints.fingerprint() in html
    assert checkpoint.hash in html


@pytest.mark.django_db
def test_every_export_signs_a_checkpoint_of_the_head_it_starts_from(platform, auditor, as_user):
    _record(platform, 2)
    response = as_user(auditor).get("/audit/export.csv")
    assert response.status_code == 200
    b"".join(response.streaming_content)
    checkpoint = AuditCheckpoint.objects.get()
    assert checkpoint.reason == "export"
    assert checkpoint.seq == AuditEvent.objects.get(action="audit.exported").seq


# --- Offline ----------------------------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_offline_a_fresh_export_verifies_against_the_pinned_key(signed_log, auditor, as_user, tmp_path):
    text = _export(as_user(auditor))
    header = json.loads(text.splitlines()[0])
    assert header["type"] == "header" and header["public_key"] == checkpoints.public_key()
    # The auditor's export is the team's events (sign-ins without a team are not theirs): no --full.
    result = _offline(tmp_path, text, "--public-key", checkpoints.public_key())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 signed checkpoint(s) match" in result.stdout  # two from beat, one from this export
    assert "pure-Python RFC 8032" in result.stdout
    by_fingerprint = _offline(tmp_path, text, "--public-key", checkpoints.fingerprint())
    assert by_fingerprint.returncode == 0, by_fingerprint.stdout
    unpinned = _offline(tmp_path, text)
    assert unpinned.returncode == 0 and "not pinned" in unpinned.stdout


@pytest.mark.django_db(transaction=True)
def test_offline_a_doctored_rehashed_export_fails_naming_the_checkpoint(signed_log, auditor, as_user, tmp_path):
    first, _ = signed_log
    tamper_as_owner("UPDATE incidents_auditevent SET action = 'draft.created' WHERE seq = %s", [3])
    _rehash_everything()
    text = _export(as_user(auditor))
    result = _offline(tmp_path, text, "--public-key", checkpoints.public_key())
    assert result.returncode == 1, result.stdout
    assert f"BROKEN at seq {first.seq}: checkpoint #{first.pk}" in result.stdout


@pytest.mark.django_db(transaction=True)
def test_offline_an_export_re_signed_with_another_key_fails_against_the_pinned_key(
    signed_log, auditor, as_user, tmp_path
):
    text = _export(as_user(auditor))
    pinned = checkpoints.public_key()
    other = Ed25519PrivateKey.generate()
    lines = []
    for line in text.splitlines():
        row = json.loads(line)
        if row.get("type") == "header":
            row["public_key"] = signing.public_b64(other)
        elif row.get("type") == "checkpoint":
            row["public_key"] = signing.public_b64(other)
            message = signing.checkpoint_message(seq=row["seq"], hash=row["hash"], signed_at=row["signed_at"])
            row["signature"] = signing.sign(other, message)
        lines.append(json.dumps(row))
    forged = "\n".join(lines)
    assert _offline(tmp_path, forged).returncode == 0  # self-consistent: only a pinned key tells
    result = _offline(tmp_path, forged, "--public-key", pinned)
    assert result.returncode == 1 and "not the pinned" in result.stdout


@pytest.mark.django_db(transaction=True)
def test_offline_the_sink_copy_catches_checkpoints_left_out_of_the_export(
    signed_log, auditor, as_user, tmp_path, checkpoint_sink
):
    first, _ = signed_log
    tamper_as_owner("UPDATE incidents_auditevent SET action = 'draft.created' WHERE seq = %s", [3])
    _rehash_everything()
    # The owner also drops the checkpoints from the export; the sink copy the auditor holds still has them.
    text = "\n".join(
        line for line in _export(as_user(auditor)).splitlines() if json.loads(line).get("type") != "checkpoint"
    )
    sink = tmp_path / "sink-copy.jsonl"
    sink.write_text(checkpoint_sink.read_text())
    result = _offline(tmp_path, text, "--public-key", checkpoints.public_key(), "--checkpoints", str(sink))
    assert result.returncode == 1 and f"checkpoint #{first.pk}" in result.stdout


def test_the_scripts_ed25519_code_agrees_with_the_cryptography_package():
    spec = importlib.util.spec_from_file_location("verify_audit_export", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    key = Ed25519PrivateKey.generate()
    public = signing.public_raw(key)
    for message in (b"", b"isdown-admin audit checkpoint v1\n{}", bytes(range(256))):
        signature = key.sign(message)
        assert script.ed25519_verify_pure(public, message, signature)
        assert not script.ed25519_verify_pure(public, message + b"x", signature)
        assert not script.ed25519_verify_pure(public, message, signature[:-1] + bytes([signature[-1] ^ 1]))
    other = signing.public_raw(Ed25519PrivateKey.generate())
    assert not script.ed25519_verify_pure(other, b"m", key.sign(b"m"))
    assert script.fingerprint(base64.b64encode(public).decode()) == signing.fingerprint(
        base64.b64encode(public).decode()
    )
    assert script.checkpoint_message({"seq": 3, "hash": "ab", "signed_at": "t"}) == signing.checkpoint_message(
        seq=3, hash="ab", signed_at="t"
    )


# --- The fast export (issue 13, item 2): PostgreSQL renders the rows ------------------------------------------
@pytest.mark.django_db
def test_the_fast_exports_carry_the_same_values_as_the_rows(platform):
    import csv
    import io
    from datetime import UTC, datetime

    audit.record("draft.saved", team=platform, summary='=1+1 café \u2028 "quoted" \\ back', changes={"b": [1, None]})
    audit.record("draft.saved", team=platform, summary="-minus", target_label="  @at", context={"ip": "10.0.0.1"})
    # A row written at a whole second: Python's isoformat() then has no microseconds, and neither may the export.
    AuditEvent.objects.create(
        seq=3,
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        actor_label="x",
        action="draft.saved",
        summary="whole second",
        prev_hash="0" * 64,
        hash="1" * 64,
    )
    events = AuditEvent.objects.order_by("-seq")
    lines = "".join(audit.fast_jsonl(events)).split("\n")[:-1]  # not splitlines(): U+2028 is no line end here
    assert len(lines) == 3
    for line, event in zip(lines, events, strict=True):
        assert json.loads(line) == audit.export_row(event)
    assert json.loads(lines[0])["created_at"] == "2026-01-02T03:04:05+00:00"
    rows = list(csv.DictReader(io.StringIO("".join(audit.fast_csv(events)))))
    assert [row["seq"] for row in rows] == ["3", "2", "1"]
    assert rows[1]["summary"] == "'-minus" and rows[1]["target_label"] == "'  @at"
    assert rows[2]["summary"].startswith("'=1+1 café")
    assert json.loads(rows[2]["changes"]) == {"b": [1, None]}
    assert rows[0]["created_at"] == "2026-01-02T03:04:05+00:00" and rows[0]["actor_id"] == ""


# --- Exports too big to stream (issue 13, item 2): built in the background -------------------------------------
@pytest.fixture
def small_stream_limit(settings, tmp_path):
    settings.AUDIT_EXPORT_STREAM_MAX_ROWS = 3
    settings.AUDIT_EXPORT_DIR = str(tmp_path / "exports")


@pytest.mark.django_db
def test_an_export_too_big_to_stream_is_built_by_a_worker_and_downloaded_by_its_requester(
    platform, auditor, approver, as_user, small_stream_limit, no_broker, django_capture_on_commit_callbacks, tmp_path
):
    from incidents import exports, tasks
    from incidents.models import AuditExport

    _record(platform, 6)
    client = as_user(auditor)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.get("/audit/export.jsonl", {"action": "draft.saved"})
    assert response.status_code == 302 and response["Location"].startswith("/audit/?")
    export = AuditExport.objects.get()
    assert (export.state, export.format, export.filters) == ("queued", "jsonl", {"action": "draft.saved"})
    assert ("build_audit_export", export.pk) in no_broker.sent
    page = client.get("/audit/").content.decode()
    assert f"audit-export-{export.pk}" in page and 'hx-trigger="every 2s"' in page
    assert client.get(f"/audit/exports/{export.pk}/download").status_code == 409

    recorded_later = audit.record("draft.saved", team=platform, summary="after the request")
    assert tasks.build_audit_export.apply(args=[export.pk]).get() == "done"
    export.refresh_from_db()
    assert export.rows == 6 and export.state == "done"
    assert 'hx-trigger="every 2s"' not in client.get("/audit/exports/").content.decode()
    download = client.get(f"/audit/exports/{export.pk}/download")
    assert download.status_code == 200 and "attachment" in download["Content-Disposition"]
    text = b"".join(download.streaming_content).decode()
    seqs = [json.loads(line)["seq"] for line in text.splitlines() if "type" not in json.loads(line)]
    assert len(seqs) == 6 and recorded_later.seq not in seqs  # the log as it was when asked for
    result = _offline(tmp_path, text, "--public-key", checkpoints.public_key())
    assert result.returncode == 0, result.stdout + result.stderr
    # Only its requester may have it.
    assert as_user(approver).get(f"/audit/exports/{export.pk}/download").status_code == 404
    assert exports.build(export.pk) == "gone or already taken"


@pytest.mark.django_db
def test_a_small_export_still_streams(platform, auditor, as_user, small_stream_limit):
    from incidents.models import AuditExport

    audit.record("draft.saved", team=platform, summary="one")
    response = as_user(auditor).get("/audit/export.csv", {"action": "draft.saved"})
    assert response.status_code == 200 and not AuditExport.objects.exists()


# --- Verification as a background job (issue 13, item 3) --------------------------------------------------------
@pytest.mark.django_db
def test_a_long_log_is_verified_by_a_worker_with_progress_and_an_audited_verdict(
    platform, auditor, approver, as_user, settings, no_broker, django_capture_on_commit_callbacks, monkeypatch
):
    from incidents import tasks
    from incidents.models import AuditVerification

    settings.AUDIT_VERIFY_INLINE_MAX_EVENTS = 3
    settings.AUDIT_VERIFY_PROCESSES = 1  # one walk here: processes of its own would not see this test's rows
    monkeypatch.setattr(audit, "PROGRESS_EVERY", 2)
    client = as_user(auditor)
    _record(platform, 6)
    checkpoints.sign_head("interval")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/audit/verify/", headers={"HX-Request": "true"})
    verification = AuditVerification.objects.get()
    assert ("verify_audit_log", verification.pk) in no_broker.sent
    html = response.content.decode()
    assert f"/audit/verify/{verification.pk}/" in html and 'hx-trigger="every 1s"' in html
    assert not AuditEvent.objects.filter(action="audit.verified").exists()

    assert tasks.verify_audit_log.apply(args=[verification.pk]).get() == "ok"
    verification.refresh_from_db()
    assert verification.state == "done" and verification.ok and verification.checked == verification.total
    assert "1 checkpoint(s) match" in verification.message
    page = client.get(f"/audit/verify/{verification.pk}/").content.decode()
    assert "every 1s" not in page and verification.message in page
    assert AuditEvent.objects.get(action="audit.verified").summary.startswith("Verified the audit chain: OK")
    assert as_user(approver).get(f"/audit/verify/{verification.pk}/").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_a_background_verification_names_the_checkpoint_a_rehash_contradicts(signed_log, auditor, settings):
    from incidents import verifications

    first, _ = signed_log
    tamper_as_owner("UPDATE incidents_auditevent SET action = 'draft.created' WHERE seq = %s", [3])
    _rehash_everything()
    settings.AUDIT_VERIFY_INLINE_MAX_EVENTS = 1
    verification = verifications.request(auditor)
    assert verifications.run(verification.pk) == "broken"
    verification.refresh_from_db()
    assert verification.ok is False and f"checkpoint #{first.pk}" in verification.message


@pytest.mark.django_db(transaction=True)
def test_segments_checked_in_parallel_processes_agree_with_one_walk(signed_log):
    from incidents import verifications

    first, _ = signed_log
    head = AuditEvent.objects.order_by("-seq").first().seq

    def parallel(anchors, progress):
        return verifications.verify_in_parallel(head, anchors, processes=3, progress=progress)

    clean = checkpoints.verify(walk=parallel)
    assert clean.ok and clean.count == head and clean.anchors_checked == 2, clean.message()
    assert clean.message() == checkpoints.verify().message()
    # A link between two segments, cut: seq 5 now links to seq 3 (and its own hash is recomputed over it).
    forged = AuditEvent.objects.get(seq=5)
    forged.prev_hash = AuditEvent.objects.get(seq=3).hash
    tamper_as_owner(
        "UPDATE incidents_auditevent SET prev_hash = %s, hash = %s WHERE seq = 5",
        [forged.prev_hash, audit.compute_hash(forged.prev_hash, forged)],
    )
    assert checkpoints.verify(walk=parallel).message() == checkpoints.verify().message()
    assert "BROKEN at seq 5" in checkpoints.verify(walk=parallel).message()
    # Rewritten and re-hashed: the checkpoint names it, in whichever segment it falls.
    tamper_as_owner("UPDATE incidents_auditevent SET action = 'draft.created' WHERE seq = %s", [3])
    _rehash_everything()
    result = checkpoints.verify(walk=parallel)
    assert not result.ok and f"checkpoint #{first.pk}" in result.reason


@pytest.mark.django_db(transaction=True)
def test_a_background_verification_in_parallel_counts_what_was_appended_after_the_request(
    signed_log, auditor, platform, settings, monkeypatch
):
    from incidents import verifications
    from incidents.models import AuditVerification

    settings.AUDIT_VERIFY_INLINE_MAX_EVENTS = 1
    settings.AUDIT_VERIFY_PROCESSES = 2
    monkeypatch.setattr(audit, "PROGRESS_EVERY", 2)
    verification = verifications.request(auditor)
    _record(platform, 3)
    checkpoints.sign_head("interval")  # signed after the request, past the head it saw
    head = AuditEvent.objects.order_by("-seq").first().seq
    assert verifications.run(verification.pk) == "ok", AuditVerification.objects.get().message
    verification.refresh_from_db()
    assert verification.total == verification.checked == head
    assert "3 checkpoint(s) match" in verification.message
