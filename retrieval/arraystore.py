"""Fixed-shape records addressed by integer id, in one memory-mapped file.

Vectors (D,) float32 and token features (L, D) float16 live here, keyed by the SQLite
row id. An id's record is written once and never changes (a changed file gets a new
id), which is what lets the FAISS index be rebuilt or caught up from this file at any
time. Deleted ids leave holes; `xmr compact` rebuilds FAISS but does not reclaim them yet.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

_MIN_CAPACITY = 1024


class ArrayStore:
    def __init__(self, path: Path, record_shape: tuple[int, ...], dtype: str):
        self.path = Path(path)
        self.record_shape = tuple(int(s) for s in record_shape)
        self.dtype = np.dtype(dtype)
        self.record_bytes = int(np.prod(self.record_shape)) * self.dtype.itemsize
        self._map: np.memmap | None = None
        if not self.path.exists():
            self.path.touch()

    @property
    def capacity(self) -> int:
        return self.path.stat().st_size // self.record_bytes

    def _mapped(self, min_capacity: int = 0) -> np.memmap | None:
        capacity = self.capacity
        if min_capacity > capacity:
            # Grow geometrically so appends stay amortised O(1).
            new_capacity = max(min_capacity, capacity * 2, _MIN_CAPACITY)
            self.flush()
            self._map = None
            os.truncate(self.path, new_capacity * self.record_bytes)
            capacity = new_capacity
        if capacity == 0:
            return None
        if self._map is None or self._map.shape[0] != capacity:
            self._map = np.memmap(
                self.path, dtype=self.dtype, mode="r+", shape=(capacity, *self.record_shape)
            )
        return self._map

    def write(self, ids: np.ndarray, records: np.ndarray) -> None:
        """ids: (B,) int64; records: (B, *record_shape)."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return
        if records.shape[1:] != self.record_shape:
            raise ValueError(f"record shape {records.shape[1:]} != store's {self.record_shape}")
        mapped = self._mapped(int(ids.max()) + 1)
        mapped[ids] = records.astype(self.dtype, copy=False)

    def read(self, ids: np.ndarray) -> np.ndarray:
        """(B,) ids -> (B, *record_shape) copy. Reading past the end is an error."""
        ids = np.asarray(ids, dtype=np.int64)
        mapped = self._mapped()
        if len(ids) and (mapped is None or int(ids.max()) >= mapped.shape[0]):
            raise IndexError(f"{self.path.name}: id {int(ids.max())} was never written")
        if mapped is None:
            return np.empty((0, *self.record_shape), dtype=self.dtype)
        return np.array(mapped[ids])

    def flush(self) -> None:
        """Make written records durable before the database commit that refers to them."""
        if self._map is not None:
            self._map.flush()

    def close(self) -> None:
        self.flush()
        self._map = None
