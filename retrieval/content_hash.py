"""The content hash that recognises moved, duplicated and uploaded copies of a file."""

from __future__ import annotations

import hashlib


def content_hash(path: str, chunk_size: int = 1 << 20) -> str:
    """128-bit BLAKE2b of the file's bytes."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def content_hash_bytes(data: bytes) -> str:
    """The same hash of bytes already in memory (an upload)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()
