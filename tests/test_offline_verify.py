"""tools/verify_audit_export.py verifies a JSON Lines export alone (the standard library, no database): a fresh
export passes, a doctored one fails naming the seq, a filtered one passes with its gaps named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from incidents import audit
from incidents.models import AuditEvent

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "verify_audit_export.py"

pytestmark = pytest.mark.django_db


def full_export() -> str:
    """The whole log, as the export writes it (no page exports every team's events at once)."""
    return "".join(audit.iter_jsonl(AuditEvent.objects.order_by("-seq")))


def page_export(client, **filters: str) -> str:
    response = client.get("/audit/export.jsonl", filters)
    assert response.status_code == 200
    return b"".join(response.streaming_content).decode()


def offline(tmp_path: Path, text: str, *args: str) -> subprocess.CompletedProcess:
    path = tmp_path / "export.jsonl"
    path.write_text(text, encoding="utf-8")
    # -I -S: no site-packages and no project on the path: the standard library alone, as an auditor would run it.
    return subprocess.run(
        [sys.executable, "-I", "-S", str(SCRIPT), str(path), *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def log(platform):
    for n in range(6):
        audit.record(
            "draft.saved" if n % 2 else "draft.created",
            team=platform,
            summary=f"event {n} — café",
            changes={"n": [n, n + 1]},
        )


def test_a_fresh_full_export_verifies_alone(log, tmp_path):
    text = full_export()
    result = offline(tmp_path, text, "--full")
    assert result.returncode == 0, result.stdout + result.stderr
    head = AuditEvent.objects.order_by("-seq").first()
    assert f"head {head.hash}" in result.stdout and "the whole log from seq 1" in result.stdout


def test_a_relabelled_event_fails_naming_its_seq(log, tmp_path):
    rows = [json.loads(line) for line in full_export().splitlines()]
    victim = next(row for row in rows if row["summary"] == "event 3 — café")
    victim["action"] = "draft.created"
    text = "\n".join(json.dumps(row) for row in rows)
    result = offline(tmp_path, text, "--full")
    assert result.returncode == 1
    assert f"BROKEN at seq {victim['seq']}" in result.stdout


def test_a_deleted_event_fails_at_the_broken_link(log, tmp_path):
    rows = sorted((json.loads(line) for line in full_export().splitlines()), key=lambda row: row["seq"])
    gone = rows.pop(2)
    result = offline(tmp_path, "\n".join(json.dumps(row) for row in rows), "--full")
    assert result.returncode == 1
    assert f"seq {gone['seq']}..{gone['seq']} missing" in result.stdout


def test_two_rows_swapped_in_their_links_fail(log, tmp_path):
    rows = sorted((json.loads(line) for line in full_export().splitlines()), key=lambda row: row["seq"])
    rows[3]["prev_hash"] = rows[1]["hash"]  # relinked to skip seq 3: its own hash no longer matches
    result = offline(tmp_path, "\n".join(json.dumps(row) for row in rows))
    assert result.returncode == 1
    assert f"BROKEN at seq {rows[3]['seq']}" in result.stdout


def test_a_filtered_export_verifies_each_row_and_names_its_gaps(log, as_user, auditor, tmp_path):
    text = page_export(as_user(auditor), action="draft.saved")
    result = offline(tmp_path, text)
    assert result.returncode == 0, result.stdout
    assert "gap: seq" in result.stdout and "filtered out" in result.stdout
    assert offline(tmp_path, text, "--full").returncode == 1


def test_something_that_is_not_an_export_is_a_clear_error(tmp_path):
    result = offline(tmp_path, '{"seq": 1}\n')
    assert result.returncode == 2
    assert "not an isdown-admin JSON Lines export" in result.stderr


def test_the_script_hashes_the_fields_the_app_hashes(log):
    # The script repeats the field list on purpose (it must run without the app): this keeps the copies equal.
    import importlib.util

    spec = importlib.util.spec_from_file_location("verify_audit_export", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.HASHED_FIELDS == audit.HASHED_FIELDS
    assert script.GENESIS_HASH == audit.GENESIS_HASH
    event = AuditEvent.objects.order_by("seq").last()
    row = json.loads(next(iter(audit.iter_jsonl([event]))))
    assert script.event_hash(event.prev_hash, row) == audit.compute_hash(event.prev_hash, event)
