"""Signed checkpoints of the audit chain: what anchors it outside the database.

Whoever owns the database can rewrite a row and re-hash everything after it, and the chain then verifies against
itself. A checkpoint is the chain's head ``(seq, hash)`` at a moment, signed with an Ed25519 key that is never in
the database (``AUDIT_SIGNING_KEY`` / ``AUDIT_SIGNING_KEY_FILE``, see ``isdown_admin/signing.py``). Beat signs one
every ``AUDIT_CHECKPOINT_INTERVAL`` (when the head moved) and every export signs one. Each is stored in an
insert-only table and appended to a JSON Lines sink outside the database (``AUDIT_CHECKPOINT_SINK``) in the same
transaction: a sink that cannot be written rolls the checkpoint back.

``verify`` checks every checkpoint (the table's and the sink's): its signature, that it is signed by this
deployment's key, that a checkpoint in the sink is still in the table; then it walks the chain with each
checkpoint as an anchor, so a re-hash is reported with the first checkpoint it contradicts.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from isdown_admin import signing

from . import audit
from .models import AuditCheckpoint, AuditEvent

logger = logging.getLogger(__name__)

EXPORT_FORMAT = "isdown-admin audit export"
EXPORT_VERSION = 2


class CheckpointError(RuntimeError):
    """A checkpoint could not be signed or written (no key, a sink that cannot be written)."""


@lru_cache(maxsize=4)
def _load_key(text: str, path: str, create: bool) -> Ed25519PrivateKey:
    if text:
        return signing.parse_private_key(text)
    if create and not Path(path).exists():
        try:
            signing.write_new_key_file(path)
            logger.warning("Wrote a new development audit signing key to %s", path)
        except FileExistsError:
            pass  # another process wrote it first
    return signing.read_private_key_file(path)


def signing_key() -> Ed25519PrivateKey:
    """The private key from the settings (a development key file is created on first use)."""
    try:
        return _load_key(
            settings.AUDIT_SIGNING_KEY,
            settings.AUDIT_SIGNING_KEY_FILE,
            bool(getattr(settings, "AUDIT_SIGNING_KEY_IS_DEV_DEFAULT", False)),
        )
    except signing.KeyProblem as exc:
        raise CheckpointError(f"no usable audit signing key: {exc}") from None


def public_key() -> str:
    """This deployment's public key, base64 of its 32 raw bytes (what auditors pin)."""
    return signing.public_b64(signing_key())


def fingerprint() -> str:
    return signing.fingerprint(public_key())


def _signed_at_text(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def as_record(checkpoint: AuditCheckpoint) -> dict[str, Any]:
    """One checkpoint as the sink and the export write it (a JSON object; ``type`` tells it from an event)."""
    return {
        "type": "checkpoint",
        "id": checkpoint.pk,
        "seq": checkpoint.seq,
        "hash": checkpoint.hash,
        "signed_at": _signed_at_text(checkpoint.signed_at),
        "reason": checkpoint.reason,
        "public_key": checkpoint.public_key,
        "signature": checkpoint.signature,
    }


def _append_to_sink(record: dict[str, Any]) -> None:
    path = settings.AUDIT_CHECKPOINT_SINK
    if not path:
        return
    line = (audit.canonical_json(record) + "\n").encode()
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            # Web, worker and beat may append at once: one locked write per line.
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise CheckpointError(f"cannot append to AUDIT_CHECKPOINT_SINK {path}: {exc.strerror or exc}") from None


def sign_head(reason: str, *, only_if_moved: bool = False) -> AuditCheckpoint | None:
    """Sign the chain's head now; store it and append it to the sink. None when the log is empty, or when
    ``only_if_moved`` and the latest checkpoint already names this head."""
    key = signing_key()
    with transaction.atomic():
        head = AuditEvent.objects.order_by("-seq").values("seq", "hash").first()
        if head is None:
            return None
        if only_if_moved:
            latest = AuditCheckpoint.objects.order_by("-id").values("seq", "hash").first()
            if latest == head:
                return None
        signed_at = timezone.now()
        message = signing.checkpoint_message(seq=head["seq"], hash=head["hash"], signed_at=_signed_at_text(signed_at))
        checkpoint = AuditCheckpoint.objects.create(
            seq=head["seq"],
            hash=head["hash"],
            signed_at=signed_at,
            reason=reason[:20],
            public_key=signing.public_b64(key),
            signature=signing.sign(key, message),
        )
        _append_to_sink(as_record(checkpoint))
    return checkpoint


def read_sink() -> list[dict[str, Any]]:
    """The checkpoints in the sink file (none when it is unset or not there yet)."""
    path = settings.AUDIT_CHECKPOINT_SINK
    if not path or not Path(path).exists():
        return []
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                if isinstance(record, dict) and record.get("type") == "checkpoint":
                    records.append(record)
    return records


def latest(count: int = 5) -> list[AuditCheckpoint]:
    return list(AuditCheckpoint.objects.order_by("-id")[:count])


def _name(record: dict[str, Any], where: str = "") -> str:
    return f"checkpoint #{record.get('id')}{where} (seq {record.get('seq')}, signed {record.get('signed_at')})"


def _problem(record: dict[str, Any], own_key: str, where: str = "") -> str:
    try:
        message = signing.checkpoint_message(
            seq=int(record["seq"]), hash=str(record["hash"]), signed_at=str(record["signed_at"])
        )
    except (KeyError, TypeError, ValueError):
        return f"{_name(record, where)} is malformed"
    if not signing.signature_valid(str(record.get("public_key", "")), message, str(record.get("signature", ""))):
        return f"{_name(record, where)}: its signature does not verify"
    if record.get("public_key") != own_key:
        return (
            f"{_name(record, where)} is signed by key {signing.fingerprint(str(record['public_key']))}, "
            f"not by the audit signing key {signing.fingerprint(own_key)}"
        )
    return ""


Walk = Callable[[Sequence[audit.Anchor], Callable[[int], None] | None], audit.VerifyResult]


def verify(
    batch_size: int = 5000, progress: Callable[[int], None] | None = None, walk: Walk | None = None
) -> audit.VerifyResult:
    """The chain, checked against every checkpoint in the table and in the sink (see the module's docstring)."""
    own_key = public_key()
    stored = [as_record(checkpoint) for checkpoint in AuditCheckpoint.objects.order_by("seq", "id")]
    known = {(r["seq"], r["hash"], r["signed_at"], r["signature"]) for r in stored}
    problems: list[tuple[int, str]] = []
    for record in stored:
        if problem := _problem(record, own_key):
            problems.append((int(record["seq"]), problem))
    sink = read_sink()
    for record in sink:
        if (problem := _problem(record, own_key, " from the sink")) and not problem.endswith("is malformed"):
            problems.append((int(record.get("seq", 0)), problem))
        elif problem:
            problems.append((0, problem))
        elif (record["seq"], record["hash"], record["signed_at"], record["signature"]) not in known:
            problems.append((int(record["seq"]), f"{_name(record, ' from the sink')} is missing from the database"))
    if problems:
        seq, problem = min(problems)
        return audit.VerifyResult(False, 0, audit.GENESIS_HASH, seq, problem)
    anchors = [audit.Anchor(int(r["seq"]), str(r["hash"]), _name(r)) for r in stored]
    if walk is not None:  # the background job's parallel segments (verifications.verify_in_parallel)
        return walk(anchors, progress)
    return audit.verify_chain(batch_size, anchors=anchors, progress=progress)


def export_preamble() -> list[str]:
    """The lines a JSON Lines export starts with: a header carrying the public key, then every checkpoint (the
    offline script checks the rows against them). Events follow, one per line, without a ``type``."""
    key = public_key()
    header = {
        "type": "header",
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "public_key": key,
        "fingerprint": signing.fingerprint(key),
        "exported_at": _signed_at_text(timezone.now()),
    }
    lines = [audit.canonical_json(header) + "\n"]
    for checkpoint in AuditCheckpoint.objects.order_by("seq", "id").iterator(chunk_size=2000):
        lines.append(audit.canonical_json(as_record(checkpoint)) + "\n")
    return lines
