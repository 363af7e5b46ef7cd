#!/usr/bin/env python3
"""Verify an isdown-admin audit log export (JSON Lines) alone: the Python standard library, no database, no app.

    python3 verify_audit_export.py export.jsonl [--full] [--public-key KEY] [--checkpoints SINK.jsonl]

Each line is one event with every hashed field plus ``prev_hash`` and ``hash``. For each event the hash is
recomputed as the app does, by the row's ``chain_version``: version 1 ``sha256(prev_hash + canonical JSON of the
hashed fields as an object)``, version 2 ``sha256(prev_hash + canonical JSON of the array [2, seq, entry_id,
created_at, actor_id, …, context])``, where canonical JSON is
``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``. Each event's ``prev_hash``
must be the hash of the event before it whenever the two are consecutive (``seq`` n and n+1); the first event of
the log (seq 1) links to 64 zeros.

A filtered export (by team, action, time) leaves gaps in ``seq``: each row's own hash is still checked, the links
inside every contiguous run are checked, and the gaps are listed as coming from the filter. ``--full`` says the
file claims to be the whole log: then it must start at seq 1 and have no gap.

Signed checkpoints. The export starts with a header line (``"type": "header"``: the deployment's Ed25519 public
key) and the chain's signed checkpoints (``"type": "checkpoint"``: a head ``seq`` and ``hash`` at ``signed_at``).
Each checkpoint's signature is checked over ``isdown-admin audit checkpoint v1\n`` + the canonical JSON of
``{"hash", "seq", "signed_at"}``; then each checkpoint whose seq is in the file must name that row's hash. A log
that was doctored and re-hashed consistently by someone with database access but not the key fails there, naming
the first checkpoint it contradicts. Pin the key you got out of band (the audit page shows it, your administrator
can tell it): ``--public-key`` takes the base64 key or its ``SHA256:`` fingerprint; without it the header's key is
used and the report says so. ``--checkpoints`` adds checkpoints from a copy of the sink file
(AUDIT_CHECKPOINT_SINK), which the owner of the database cannot rewrite.

Ed25519 signatures are checked with the ``cryptography`` package when it is importable, and otherwise with the
pure-Python reference verification of RFC 8032 (section 6) below: slow (milliseconds per signature), exact.

Exit status: 0 verified; 1 something does not verify (the first problem is named by its seq); 2 unreadable input.
"""

from __future__ import annotations

import argparse
import base64
import binascii
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
    """The row's hash in its chain format: ``chain_version`` 1 (or absent: exports made before version 2) hashes
    the canonical JSON object of the hashed fields; 2 the canonical JSON array
    ``[2, seq, entry_id, created_at, actor_id, …, context]`` (the hashed fields in their order, after seq)."""
    version = row.get("chain_version", 1)
    if version == 2:
        text = canonical_json([2, row["seq"], row.get("entry_id"), *(row[name] for name in HASHED_FIELDS[1:])])
    elif version == 1:
        text = canonical_json({name: row[name] for name in HASHED_FIELDS})
    else:
        raise ValueError(f"seq {row['seq']}: unknown chain version {version!r}")
    return hashlib.sha256((prev_hash + text).encode()).hexdigest()


# --- Ed25519 verification: RFC 8032, section 6 (the reference implementation, verify only) ------------------
_P = 2**255 - 19
_Q = 2**252 + 27742317777372353535851937790883648493


def _inv(x: int) -> int:
    return pow(x, _P - 2, _P)


_D = -121665 * _inv(121666) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _add(a: tuple, b: tuple) -> tuple:
    e1, f1 = (a[1] - a[0]) * (b[1] - b[0]) % _P, (a[1] + a[0]) * (b[1] + b[0]) % _P
    c, d = 2 * a[3] * b[3] * _D % _P, 2 * a[2] * b[2] % _P
    e, f, g, h = f1 - e1, d - c, d + c, f1 + e1
    return (e * f, g * h, f * g, e * h)


def _mul(s: int, point: tuple) -> tuple:
    result = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            result = _add(result, point)
        point = _add(point, point)
        s >>= 1
    return result


def _equal(a: tuple, b: tuple) -> bool:
    return (a[0] * b[2] - b[0] * a[2]) % _P == 0 and (a[1] * b[2] - b[1] * a[2]) % _P == 0


def _recover_x(y: int, sign: int) -> int | None:
    if y >= _P:
        return None
    x2 = (y * y - 1) * _inv(_D * y * y + 1) % _P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P != 0:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P != 0:
        return None
    if (x & 1) != sign:
        x = _P - x
    return x


def _decompress(data: bytes) -> tuple | None:
    if len(data) != 32:
        return None
    y = int.from_bytes(data, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    x = _recover_x(y, sign)
    return None if x is None else (x, y, 1, x * y % _P)


_GY = 4 * _inv(5) % _P
_GX = _recover_x(_GY, 0)
_G = (_GX, _GY, 1, _GX * _GY % _P)


def ed25519_verify_pure(public: bytes, message: bytes, signature: bytes) -> bool:
    """RFC 8032, 5.1.7 / section 6: is ``signature`` by ``public`` over ``message``?"""
    if len(public) != 32 or len(signature) != 64:
        return False
    a = _decompress(public)
    r = _decompress(signature[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= _Q:
        return False
    h = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(), "little") % _Q
    return _equal(_mul(s, _G), _add(r, _mul(h, a)))


def _verifier():
    """(name, verify function): the ``cryptography`` package when importable, else the reference code above."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        return "pure-Python RFC 8032 reference code", ed25519_verify_pure

    def verify(public: bytes, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True

    return "the cryptography package", verify


# --- Checkpoints ----------------------------------------------------------------------------------------------
CHECKPOINT_PREFIX = b"isdown-admin audit checkpoint v1\n"


def checkpoint_message(record: dict) -> bytes:
    body = {"hash": record["hash"], "seq": record["seq"], "signed_at": record["signed_at"]}
    return CHECKPOINT_PREFIX + canonical_json(body).encode()


def fingerprint(public_key_b64: str) -> str:
    digest = hashlib.sha256(base64.b64decode(public_key_b64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _name(record: dict) -> str:
    return f"checkpoint #{record.get('id')} (seq {record.get('seq')}, signed {record.get('signed_at')})"


def check_checkpoints(checkpoints: list, hashes: dict, *, key: str, head_seq: int, full: bool, verify) -> tuple:
    """(problem or "", report lines): each checkpoint's signature by ``key``, then its hash against the row."""
    checked, outside = 0, 0
    public = base64.b64decode(key)
    for record in sorted(checkpoints, key=lambda r: (r.get("seq", 0), str(r.get("signed_at")))):
        try:
            signature = base64.b64decode(record["signature"], validate=True)
            message = checkpoint_message(record)
        except (KeyError, TypeError, ValueError, binascii.Error):
            return f"BROKEN: {_name(record)} is malformed", []
        if record.get("public_key") != key:
            return f"BROKEN at seq {record['seq']}: {_name(record)} is not signed by the key {fingerprint(key)}", []
        if not verify(public, message, signature):
            return f"BROKEN at seq {record['seq']}: {_name(record)}: its signature does not verify", []
        seq = record["seq"]
        if seq in hashes:
            if hashes[seq] != record["hash"]:
                return (
                    f"BROKEN at seq {seq}: {_name(record)} signed hash {record['hash']}; the export has {hashes[seq]}: "
                    "the log was rewritten after it was signed",
                    [],
                )
            checked += 1
        elif seq > head_seq and full:
            return f"BROKEN at seq {seq}: {_name(record)} is past the export's last event (seq {head_seq})", []
        else:
            outside += 1
    report = [f"checkpoints: {checked} signed checkpoint(s) match the rows"]
    if outside:
        report.append(f"checkpoints: {outside} name a seq not in this export (filtered out or later): not compared")
    return "", report


def verify(lines, *, full: bool, public_key: str = "", extra_checkpoints: list | None = None):
    """(verified, report lines). One pass checks each row's own hash (rows may come in any order: the app exports
    newest first); the links are then checked in seq order from (seq, prev_hash, hash) alone, so memory stays
    small next to the file."""
    links: list[tuple[int, str, str]] = []
    header: dict = {}
    checkpoints: list = list(extra_checkpoints or [])
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            kind = row.get("type")
            if kind == "header":
                header = row
                continue
            if kind == "checkpoint":
                checkpoints.append(row)
                continue
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
    problem, signed = _check_signed(header, checkpoints, links, public_key=public_key, full=full)
    if problem:
        return False, [problem]
    scope = "the whole log from seq 1" if not gaps else f"{len(gaps)} gap(s) left by the filter"
    report.extend(signed)
    report.append(f"OK: {len(links)} events verified up to seq {head_seq}, head {head_hash} ({scope})")
    return True, report


def _check_signed(header: dict, checkpoints: list, links: list, *, public_key: str, full: bool) -> tuple:
    """The key to trust (pinned, or the header's, said so), then every checkpoint against it and the rows."""
    header_key = header.get("public_key", "")
    if public_key.startswith("SHA256:"):
        if not header_key or fingerprint(header_key) != public_key:
            return f"BROKEN: the export's key is not the pinned one ({public_key})", []
        key, source = header_key, f"pinned by fingerprint {public_key}"
    elif public_key:
        if header_key and header_key != public_key:
            return f"BROKEN: the export's key {fingerprint(header_key)} is not the pinned {fingerprint(public_key)}", []
        key, source = public_key, f"pinned key {fingerprint(public_key)}"
    elif header_key:
        key = header_key
        source = f"the key in the export's header, {fingerprint(key)} (not pinned: compare it with the one you got)"
    else:
        key, source = "", ""
    if not checkpoints:
        return "", ["checkpoints: none in this export: the rows are checked against each other only"]
    if not key:
        return "BROKEN: the export has checkpoints but no key to check them with (pass --public-key)", []
    try:
        base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        return f"cannot use the public key {key!r}: not base64", []
    name, verify_signature = _verifier()
    hashes = {seq: row_hash for seq, _, row_hash in links}
    problem, report = check_checkpoints(
        checkpoints, hashes, key=key, head_seq=links[-1][0], full=full, verify=verify_signature
    )
    if problem:
        return problem, []
    return "", [f"signatures: checked with {name} against {source}", *report]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export", help="a JSON Lines export (audit/export.jsonl), or - for standard input")
    parser.add_argument("--full", action="store_true", help="the file is the whole log: no gap allowed")
    parser.add_argument("--public-key", default="", help="the key you trust: base64, or its SHA256: fingerprint")
    parser.add_argument("--checkpoints", help="a copy of the checkpoint sink (JSON Lines) to check against too")
    options = parser.parse_args(argv)
    try:
        extra = []
        if options.checkpoints:
            with open(options.checkpoints, encoding="utf-8") as sink:
                extra = [json.loads(line) for line in sink if line.strip()]
        stream = sys.stdin if options.export == "-" else open(options.export, encoding="utf-8")  # noqa: SIM115
        with stream:
            ok, report = verify(stream, full=options.full, public_key=options.public_key, extra_checkpoints=extra)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        print(f"cannot read {options.export}: {exc}", file=sys.stderr)
        return 2
    print("\n".join(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
