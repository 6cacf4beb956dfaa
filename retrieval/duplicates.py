"""Near-duplicate groups: copies, re-encodes, resizes and small crops of one picture.

Two images are near-duplicates when their vectors are at least T-similar (cosine) AND,
where the files are at hand, their pixels agree. The vectors alone are not enough: a
model sees "a blue star on black" and "a blue circle on black" at the same place as one
scene, and for pictures outside what it learned it can put distinct ones above 0.95.
The pixel check compares small colour thumbnails of the central 90% of each image
(normalised cross-correlation, best over shifts of a few percent, so a 5% crop still
lines up); an exact copy (same content hash) needs no decoding.

All pairs would be quadratic (10^10 at 100k), so each vector asks a FAISS index for its
nearest neighbours instead: exact (flat) up to FLAT_MAX vectors, an inverted file with a
generous nprobe above (near-duplicates sit in the same or a neighbouring cell). A vector
whose farthest returned neighbour is still above T has more: it asks again, for every
neighbour within T (range search). Groups are the connected parts of the graph of
confirmed pairs.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np

FLAT_MAX = 20_000
NEIGHBOURS = 16
NPROBE = 24
CHUNK = 4096
PIXELS_AGREE = 0.93  # thumbnails' correlation: re-encodes and 5% crops >= 0.95 measured
THUMB = 32  # side of the compared thumbnail
SHIFT = 2  # thumbnail pixels each way (about 6% of the side): small crops still align


def duplicate_groups(
    vectors: np.ndarray, threshold: float, confirm: Callable[[int, int], bool] | None = None
) -> list[np.ndarray]:
    """(N, D) unit vectors -> groups of row positions whose members are linked by cosine
    >= threshold (and by `confirm(i, j)`, when given: the pixel check), largest first
    (ties: by first row), each sorted; singletons left out."""
    n, dim = vectors.shape
    if n < 2:
        return []
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = _index(vectors, dim)
    parent = np.arange(n)
    k = min(NEIGHBOURS + 1, n)
    for start in range(0, n, CHUNK):
        chunk = vectors[start : start + CHUNK]
        scores, neighbours = index.search(chunk, k)  # (c, k) best first
        rows = np.arange(start, start + len(chunk))
        for i, j in zip(*np.nonzero(scores >= threshold), strict=True):
            other = neighbours[i, j]
            if other >= 0 and other != rows[i] and (confirm is None or confirm(rows[i], other)):
                _union(parent, rows[i], other)
        crowded = np.nonzero(scores[:, -1] >= threshold)[0]  # more neighbours than asked
        if len(crowded):
            limits, _, found = index.range_search(chunk[crowded], float(threshold))
            for i, row in enumerate(rows[crowded]):
                for other in found[limits[i] : limits[i + 1]]:
                    if other != row and (confirm is None or confirm(row, other)):
                        _union(parent, row, other)
    roots = np.array([_find(parent, i) for i in range(n)])
    groups: dict[int, list[int]] = {}
    for position, root in enumerate(roots):
        groups.setdefault(int(root), []).append(position)
    found = [np.array(g) for g in groups.values() if len(g) > 1]
    return sorted(found, key=lambda g: (-len(g), g[0]))


def _index(vectors: np.ndarray, dim: int):
    import faiss

    n = len(vectors)
    if n <= FLAT_MAX:
        index = faiss.IndexFlatIP(dim)
    else:
        lists = int(4 * math.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        sample = vectors[np.random.default_rng(0).choice(n, min(n, 40 * lists), replace=False)]
        index.train(sample)
        index.nprobe = NPROBE
    index.add(vectors)
    return index


def _find(parent: np.ndarray, i: int) -> int:
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:  # path compression
        parent[i], i = root, parent[i]
    return int(root)


def _union(parent: np.ndarray, a: int, b: int) -> None:
    ra, rb = _find(parent, int(a)), _find(parent, int(b))
    if ra != rb:
        parent[max(ra, rb)] = min(ra, rb)


class PixelCheck:
    """Do two image files show the same picture? Thumbnails are made once per file."""

    def __init__(self, paths: dict, hashes: dict | None = None):
        self.paths = paths  # key -> image file
        self.hashes = hashes or {}  # key -> content hash: equal hashes agree at once
        self._prints: dict = {}

    def __call__(self, a, b) -> bool:
        a, b = int(a), int(b)
        if self.hashes.get(a) is not None and self.hashes.get(a) == self.hashes.get(b):
            return True
        pa, pb = self._print(a), self._print(b)
        return pa is not None and pb is not None and pixel_similarity(pa, pb) >= PIXELS_AGREE

    def _print(self, key):
        if key not in self._prints:
            self._prints[key] = thumbnail_print(self.paths[key])
        return self._prints[key]


def thumbnail_print(path: str | Path) -> np.ndarray | None:
    """The central 90% of the image, upright, as a (THUMB + 2 SHIFT)^2 x 3 float array;
    None when the file cannot be read (it is then nobody's duplicate)."""
    from PIL import Image, ImageOps

    side = THUMB + 2 * SHIFT
    try:
        # Without blocking: a FIFO swapped in for an indexed file opens at once, and is
        # then nobody's duplicate instead of holding the caller (a server) forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as file, Image.open(_regular(file)) as image:
            image.draft("RGB", (4 * side, 4 * side))  # JPEG: decode at a fraction of the size
            image = ImageOps.exif_transpose(image).convert("RGB")
            w, h = image.size
            small = image.resize(
                (side, side),
                Image.Resampling.BILINEAR,
                box=(0.05 * w, 0.05 * h, 0.95 * w, 0.95 * h),
            )
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return np.asarray(small, np.float32)


def _regular(file):
    if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
        raise OSError("not a regular file")
    return file


def pixel_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Best normalised cross-correlation of b's centre with a's windows, shifted up to
    SHIFT pixels each way."""
    core = _unit(b[SHIFT : SHIFT + THUMB, SHIFT : SHIFT + THUMB])
    best = -1.0
    for dy in range(2 * SHIFT + 1):
        for dx in range(2 * SHIFT + 1):
            best = max(best, float(_unit(a[dy : dy + THUMB, dx : dx + THUMB]) @ core))
    return best


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.ravel() - x.mean()
    return x / (np.linalg.norm(x) + 1e-6)
