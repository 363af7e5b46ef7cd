#!/usr/bin/env python3
"""Verify an isdown-admin audit log export (JSON Lines) alone: the Python standard library, no database, no app.

    python3 verify_audit_export.py export.jsonl [--full]

Each line is one event with every hashed field plus ``prev_hash`` and ``hash``. For each event the hash is
recomputed as the app does: ``sha256(prev_hash + canonical JSON of the hashed fields)``, where canonical JSON is
``json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``. Each event's ``prev_hash``
must be the hash of the event before it whenever the two are consecutive (``seq`` n and n+1); the first event of
the log (seq 1) links to 64 zeros.

A filtered export (by team, action, time) leaves gaps in ``seq``: each row's own hash is still checked, the links
inside every contiguous run are checked, and the gaps are listed as coming from the filter. ``--full`` says the
file claims to be the whole log: then it must start at seq 1 and have no gap.

Exit status: 0 verified; 1 something does not verify (the first problem is named by its seq); 2 unreadable input.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys

GENESIS_HASH = "0" * 64
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


def canonical_json(data: object) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def event_hash(prev_hash: str, row: dict) -> str:
    payload = {name: row[name] for name in HASHED_FIELDS}
    return hashlib.sha256((prev_hash + canonical_json(payload)).encode()).hexdigest()


def verify(lines, *, full: bool) -> tuple[bool, list[str]]:
    """(verified, report lines). One pass checks each row's own hash (rows may come in any order: the app exports
    newest first); the links are then checked in seq order from (seq, prev_hash, hash) alone, so memory stays
    small next to the file."""
    links: list[tuple[int, str, str]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            missing = [name for name in (*HASHED_FIELDS, "prev_hash", "hash") if name not in row]
        except (ValueError, TypeError) as exc:
            raise ValueError(f"line {number} is not a JSON object: {exc}") from None
        if missing:
            raise ValueError(f"line {number} lacks {', '.join(missing)}: not an isdown-admin JSON Lines export")
        if event_hash(row["prev_hash"], row) != row["hash"]:
            return False, [f"BROKEN at seq {row['seq']}: its content does not match its hash"]
        links.append((row["seq"], row["prev_hash"], row["hash"]))
    if not links:
        return False, ["BROKEN: no events in the file"]
    links.sort()
    report: list[str] = []
    gaps: list[tuple[int, int]] = []
    first_seq = links[0][0]
    if first_seq == 1 and links[0][1] != GENESIS_HASH:
        return False, ["BROKEN at seq 1: the first event does not link to the genesis hash"]
    if first_seq != 1:
        gaps.append((1, first_seq - 1))
    for (seq_before, _, hash_before), (seq, prev_hash, _) in itertools.pairwise(links):
        if seq == seq_before:
            return False, [f"BROKEN at seq {seq}: two different events claim it"]
        if seq == seq_before + 1 and prev_hash != hash_before:
            return False, [f"BROKEN at seq {seq}: prev_hash is not the hash of seq {seq_before}"]
        if seq > seq_before + 1:
            gaps.append((seq_before + 1, seq - 1))
    if full and gaps:
        first, last = gaps[0]
        return False, [f"BROKEN: seq {first}..{last} missing from an export said to be the whole log"]
    for first, last in gaps:
        report.append(f"gap: seq {first}..{last} not in this export (filtered out); links across it not checked")
    head_seq, _, head_hash = links[-1]
    scope = "the whole log from seq 1" if not gaps else f"{len(gaps)} gap(s) left by the filter"
    report.append(f"OK: {len(links)} events verified up to seq {head_seq}, head {head_hash} ({scope})")
    return True, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export", help="a JSON Lines export (audit/export.jsonl), or - for standard input")
    parser.add_argument("--full", action="store_true", help="the file is the whole log: no gap allowed")
    options = parser.parse_args(argv)
    try:
        stream = sys.stdin if options.export == "-" else open(options.export, encoding="utf-8")  # noqa: SIM115
        with stream:
            ok, report = verify(stream, full=options.full)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        print(f"cannot read {options.export}: {exc}", file=sys.stderr)
        return 2
    print("\n".join(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
