"""Vision tokens computed on demand for re-ranked candidates, cached on disk with a size cap.

An index that keeps no matcher features (matcher_features.py) still re-ranks: the K
candidates' files are decoded and run through the vision tower, and the result is cached
here so the next query that meets the same image skips the pass:

    DIR/matcher-cache/FINGERPRINT/ID-KEY.npy    (N, V) float32, one file per image

float32, exactly what the vision tower gave: a query scores the same whether its
candidates' tokens were just computed or read back (1.77 MB a base image).

KEY hashes the file's content hash in the database and its size, mtime and inode as found
at that moment: a file changed on disk (even before `xmr index` saw it) gets a new key, so
the cache never serves a stale feature. Writes go through a temporary file, fsync and
rename; when the folder cannot be written (a read-only index) nothing is cached. Past the
cap, the least recently used files go first.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from xmr.retrieval.errors import XmrError
from xmr.retrieval.storage import atomic_write

CACHE_DIR = "matcher-cache"
DEFAULT_CACHE_BYTES = 2 << 30  # 2 GiB: about 1,200 base images


def cache_key(item_id: int, content_hash: str | None, stat: os.stat_result) -> str:
    content = f"{content_hash}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}"
    return f"{int(item_id)}-{hashlib.sha256(content.encode()).hexdigest()[:20]}"


class FeatureDiskCache:
    def __init__(self, index_dir: Path, fingerprint: str, cap_bytes: int = DEFAULT_CACHE_BYTES):
        self.root = Path(index_dir) / CACHE_DIR
        self.folder = self.root / fingerprint
        self.cap_bytes = int(cap_bytes)

    def get(self, key: str) -> np.ndarray | None:
        path = self.folder / f"{key}.npy"
        try:
            features = np.load(path, allow_pickle=False)
        except (OSError, ValueError):  # missing, or a damaged file: computed again
            return None
        try:
            os.utime(path)  # recently used: evicted last
        except OSError:
            pass
        return features

    def put(self, key: str, features: np.ndarray) -> bool:
        """Cache one image's (N, V) tokens; False when the folder cannot be written."""
        if self.cap_bytes <= 0:
            return False
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(
                self.folder / f"{key}.npy",
                lambda out: np.save(out, features.astype(np.float32), allow_pickle=False),
            )
        except (OSError, XmrError):  # read-only or full: the search goes on uncached
            return False
        self.evict()
        return True

    def evict(self) -> None:
        """Remove least recently used files (other matchers' first) until under the cap."""
        entries = []
        for path in self.root.glob("*/*.npy"):
            try:
                stat = path.stat()
            except OSError:
                continue
            mine = path.parent == self.folder
            entries.append((mine, stat.st_mtime_ns, stat.st_size, path))
        total = sum(e[2] for e in entries)
        for _mine, _used, size, path in sorted(entries):
            if total <= self.cap_bytes:
                break
            try:
                path.unlink()
                total -= size
            except OSError:
                pass

    def bytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*/*.npy") if p.is_file())
