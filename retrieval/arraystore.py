"""Fixed-shape records addressed by integer id, in one memory-mapped file.

Vectors (D,) float32 and token features (L, D) float16 live here, keyed by the SQLite
row id. An id's record is written once and never changes (a changed file gets a new
id), which is what lets the FAISS index be rebuilt or caught up from this file at any
time. Deleted ids leave dead records; `xmr compact` gives their disk blocks back by punching
holes in the file (Linux), which keeps every live id's offset, so nothing else changes.

The file grows sparse (capacity ahead of the ids costs no disk), and the blocks of the
records about to be written are reserved first (posix_fallocate, see storage.py), so a
full disk is an ENOSPC error at that point, never a SIGBUS from a page touched through the
map. A store opened read-only never creates, grows or writes its file.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path
from typing import Literal

import numpy as np

from xmr.retrieval.storage import allocate

_MIN_CAPACITY = 1024
_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


class ArrayStore:
    def __init__(
        self, path: Path, record_shape: tuple[int, ...], dtype: str, writable: bool = True
    ):
        self.path = Path(path)
        self.record_shape = tuple(int(s) for s in record_shape)
        self.dtype = np.dtype(dtype)
        self.record_bytes = int(np.prod(self.record_shape)) * self.dtype.itemsize
        self.writable = writable
        self._map: np.memmap | None = None
        self._fd: int | None = None  # kept open by a writer, for allocation
        if writable and not self.path.exists():
            self.path.touch()

    @property
    def capacity(self) -> int:
        """Whole records the file holds (a truncated file holds fewer than were written)."""
        try:
            return self.path.stat().st_size // self.record_bytes
        except FileNotFoundError:
            return 0

    def _mapped(self, min_capacity: int = 0) -> np.memmap | None:
        capacity = self.capacity
        if min_capacity > capacity:
            # Grow geometrically so appends stay amortised O(1).
            new_capacity = max(min_capacity, capacity * 2, _MIN_CAPACITY)
            self.flush()
            self._map = None
            self._grow(new_capacity * self.record_bytes)
            capacity = new_capacity
        if capacity == 0:
            return None
        if self._map is None or self._map.shape[0] != capacity:
            mode: Literal["r+", "r"] = "r+" if self.writable else "r"
            self._map = np.memmap(
                self.path, dtype=self.dtype, mode=mode, shape=(capacity, *self.record_shape)
            )
        return self._map

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        return self._fd

    def _grow(self, size: int) -> None:
        # Sparse: the capacity ahead costs no disk; `write` reserves each record's blocks.
        os.ftruncate(self._file(), size)

    def write(self, ids: np.ndarray, records: np.ndarray) -> None:
        """ids: (B,) int64; records: (B, *record_shape). Raises DiskFull without room."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return
        if not self.writable:
            raise RuntimeError(f"{self.path} is open read-only")
        if records.shape[1:] != self.record_shape:
            raise ValueError(f"record shape {records.shape[1:]} != store's {self.record_shape}")
        mapped = self._mapped(int(ids.max()) + 1)
        assert mapped is not None  # capacity for at least one record

        low, high = int(ids.min()), int(ids.max()) + 1
        size = self.record_bytes
        allocate(self._file(), low * size, (high - low) * size, self.path)
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
        if self._map is not None and self.writable:
            self._map.flush()

    def close(self) -> None:
        self.flush()
        self._map = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def allocated_bytes(self) -> int:
        """Disk space the file really uses (a sparse file uses less than its size)."""
        return self.path.stat().st_blocks * 512

    def release(self, live_ids: np.ndarray) -> int:
        """Give back the disk blocks of every record not in `live_ids`; returns bytes freed.

        Dead records read back as zeros afterwards; live ones are untouched. Only whole
        filesystem blocks are freed, so small records (vectors) free space where several
        dead ids sit side by side. Where the OS or filesystem cannot punch holes, frees 0.
        """
        capacity = self.capacity
        if capacity == 0:
            return 0
        dead = np.ones(capacity, dtype=bool)
        live = np.asarray(live_ids, dtype=np.int64)
        dead[live[live < capacity]] = False
        self.close()  # dirty pages written first, so none lands in a hole afterwards
        before = self.allocated_bytes()
        fd = os.open(self.path, os.O_RDWR)
        try:
            size = self.record_bytes
            for start, stop in _runs(dead):
                if not _punch_hole(fd, start * size, (stop - start) * size):
                    break  # not supported here: nothing more to gain
        finally:
            os.close(fd)
        return max(0, before - self.allocated_bytes())


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) ranges where `mask` is True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _punch_hole(fd: int, offset: int, length: int) -> bool:
    fallocate = _fallocate()
    if fallocate is None:
        return False
    return fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0


@functools.cache
def _fallocate():
    """libc's fallocate(2), looked up once; None where the C library has none (macOS)."""
    fallocate = getattr(ctypes.CDLL(None, use_errno=True), "fallocate", None)
    if fallocate is not None:
        fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return fallocate
