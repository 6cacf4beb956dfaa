"""The FAISS side of an index: vectors by id, searched by inner product.

The index is derived data: every vector also lives in an `ArrayStore` and every id in
SQLite, so a FAISS file that lags behind the database (a killed run) is caught up on
open by `sync`, never trusted blindly. A sidecar JSON records the database generation
the file reflects, so an up-to-date index opens without reading any ids.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import faiss
import numpy as np


class VectorIndex:
    def __init__(self, index: faiss.Index, generation: int = -1):
        self.index = index  # IndexIDMap2 over an inner-product index
        self.generation = generation

    @classmethod
    def empty(cls, dim: int) -> VectorIndex:
        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))

    @classmethod
    def load(cls, path: Path, dim: int) -> VectorIndex:
        path = Path(path)
        if not path.exists():
            return cls.empty(dim)
        index = faiss.read_index(str(path))
        sidecar = _sidecar(path)
        generation = json.loads(sidecar.read_text())["generation"] if sidecar.exists() else -1
        return cls(index, generation)

    def save(self, path: Path, generation: int) -> None:
        """Atomic: write a temporary file, then rename over the old one."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        faiss.write_index(self.index, str(tmp))
        _fsync(tmp)
        os.replace(tmp, path)
        # The sidecar is written second: if a kill lands between the two renames the
        # sidecar names an older generation and the next open re-syncs, which is safe.
        side_tmp = _sidecar(path).with_suffix(".tmp")
        side_tmp.write_text(json.dumps({"generation": generation, "ntotal": self.ntotal}))
        _fsync(side_tmp)
        os.replace(side_tmp, _sidecar(path))
        self.generation = generation

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """ids: (B,) int64; vectors: (B, D) float32, unit norm."""
        if len(ids):
            self.index.add_with_ids(
                np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64)
            )

    def remove(self, ids) -> None:
        ids = np.asarray(list(ids), dtype=np.int64)
        if len(ids):
            self.index.remove_ids(faiss.IDSelectorBatch(ids))

    def sync(self, expected_ids: np.ndarray, read_vectors) -> tuple[int, int]:
        """Make the index hold exactly `expected_ids`; returns (added, removed).

        `read_vectors(ids) -> (B, D)` supplies vectors of ids the index lacks. Ids never
        change meaning (see arraystore), so a set difference is a complete repair.
        """
        have = self.ids()
        expected = np.asarray(expected_ids, dtype=np.int64)
        extra = np.setdiff1d(have, expected, assume_unique=False)
        missing = np.setdiff1d(expected, have, assume_unique=False)
        self.remove(extra)
        for start in range(0, len(missing), 65536):
            chunk = missing[start : start + 65536]
            self.add(chunk, read_vectors(chunk))
        return len(missing), len(extra)

    def search(
        self, queries: np.ndarray, k: int, exclude_ids=None, allowed_ids=None
    ) -> tuple[np.ndarray, np.ndarray]:
        """queries: (Q, D) -> scores (Q, k) float32, ids (Q, k) int64 (-1 where fewer match).

        Filters run inside FAISS through an id selector, so k results come back whenever
        k items pass the filter (no post-filtering shortfall).
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(int(k), max(self.ntotal, 1)))
        selector = None
        keep_alive = []  # SWIG selectors must outlive the search call
        if allowed_ids is not None:
            inner = faiss.IDSelectorBatch(np.asarray(list(allowed_ids), dtype=np.int64))
            keep_alive.append(inner)
            selector = inner
        if exclude_ids is not None and len(exclude_ids):
            excluded = faiss.IDSelectorBatch(np.asarray(list(exclude_ids), dtype=np.int64))
            negated = faiss.IDSelectorNot(excluded)
            keep_alive += [excluded, negated]
            selector = negated if selector is None else faiss.IDSelectorAnd(selector, negated)
            keep_alive.append(selector)
        if self.ntotal == 0:
            return (np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64))
        params = faiss.SearchParameters(sel=selector) if selector is not None else None
        scores, ids = self.index.search(queries, k, params=params)
        return scores, ids


def _sidecar(path: Path) -> Path:
    return Path(str(path) + ".json")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
