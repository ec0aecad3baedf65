"""sha256 of files: bundles and downloads are always verified, with no switch to turn it off."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import ChecksumError

__all__ = ["sha256_file", "verify_sha256"]

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> None:
    """Raise ChecksumError naming the file and both hashes when the content differs."""
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ChecksumError(f"{path}: sha256 mismatch: expected {expected.lower()}, got {actual}")
