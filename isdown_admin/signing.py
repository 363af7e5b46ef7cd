"""The audit log's signing key: an Ed25519 key that lives outside the database (the environment or a file).

Settings load it (a bad or missing key stops start-up, naming the variable); ``incidents/checkpoints.py`` signs
the chain's head with it. No Django here, so settings can use it and ``python -m isdown_admin.signing new-key``
runs anywhere the requirements are installed.

A key is given as PEM (PKCS #8, what ``new-key`` writes) or as the base64 of the 32-byte raw private key. The
public key is shown as the base64 of its 32 raw bytes, and its fingerprint as ``SHA256:`` + unpadded base64 of
the SHA-256 of those bytes (as ``ssh-keygen -l`` shows keys).

What is signed (``checkpoint_message``) is spelled out so that ``tools/verify_audit_export.py`` can rebuild it
with the standard library: ``isdown-admin audit checkpoint v1\\n`` followed by the canonical JSON of
``{"hash", "seq", "signed_at"}``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import sys
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

CHECKPOINT_PREFIX = b"isdown-admin audit checkpoint v1\n"


class KeyProblem(ValueError):
    """The text is not an Ed25519 private key this app can use."""


def parse_private_key(text: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM (PKCS #8, unencrypted) or the base64 of its 32 raw bytes."""
    text = text.strip()
    if not text:
        raise KeyProblem("it is empty")
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(text.encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise KeyProblem(f"it is not an unencrypted PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyProblem(f"it is a {type(key).__name__}, not an Ed25519 key")
        return key
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KeyProblem("it is neither PEM nor base64") from None
    if len(raw) != 32:
        raise KeyProblem(f"base64 of {len(raw)} bytes: an Ed25519 private key is 32")
    return Ed25519PrivateKey.from_private_bytes(raw)


def read_private_key_file(path: str | Path) -> Ed25519PrivateKey:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyProblem(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_private_key(text)


def new_private_pem() -> str:
    key = Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def write_new_key_file(path: str | Path) -> None:
    """Write a fresh key, readable by its owner only; never over an existing file (FileExistsError). The file
    appears whole or not at all (written aside, then linked), so a process starting at the same moment never
    reads half a key."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        with aside.open("x", encoding="utf-8") as handle:
            aside.chmod(0o600)
            handle.write(new_private_pem())
        os.link(aside, path)
    finally:
        aside.unlink(missing_ok=True)


def public_raw(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    return base64.b64encode(public_raw(key)).decode()


def fingerprint(public_key_b64: str) -> str:
    digest = hashlib.sha256(base64.b64decode(public_key_b64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def checkpoint_message(*, seq: int, hash: str, signed_at: str) -> bytes:
    body = json.dumps({"hash": hash, "seq": seq, "signed_at": signed_at}, sort_keys=True, separators=(",", ":"))
    return CHECKPOINT_PREFIX + body.encode()


def sign(key: Ed25519PrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message)).decode()


def signature_valid(public_key_b64: str, message: bytes, signature_b64: str) -> bool:
    try:
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64, validate=True))
        public.verify(base64.b64decode(signature_b64, validate=True), message)
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


def new_private_b64() -> str:
    """A fresh key as one line (the base64 of its 32 raw bytes): what an environment file can hold."""
    return base64.b64encode(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
    ).decode()


def main(argv: list[str]) -> int:
    """``new-key FILE``: a fresh key as PEM in FILE (never over one); ``new-key``: as one base64 line on standard
    output, for AUDIT_SIGNING_KEY."""
    if not argv or argv[0] != "new-key" or len(argv) > 2:
        print("usage: python -m isdown_admin.signing new-key [FILE]", file=sys.stderr)
        return 2
    if len(argv) == 2:
        try:
            write_new_key_file(argv[1])
        except FileExistsError:
            print(f"{argv[1]} exists: not overwritten", file=sys.stderr)
            return 1
        return 0
    print(new_private_b64())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
