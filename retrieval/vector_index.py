"""The FAISS side of one collection: vectors by id, searched by inner product.

The index is derived data: every vector also lives in an `ArrayStore` and every id in
SQLite, so a FAISS file that lags behind the database (a killed run) is caught up on
open by `sync`, never trusted blindly. A sidecar JSON (`images.faiss.json`) records
what the file is and the database generation it reflects:

    {"generation": 12, "file_bytes": 2093, "ntotal": 500, "type": "hnsw",
     "params": {"m": 32, "ef_construction": 40}, "built_n": 480,
     "search_params": {"efSearch": 24, "recall_at_10": 0.97}, "tombstones": [17, 40]}

Types (see index_choice / index_types): flat and hnsw sit inside IndexIDMap2; IVF types
keep our ids in their inverted lists. Flat and IVF remove ids for real; HNSW cannot, so
a deleted id there becomes a tombstone, excluded from every search through an id
selector until `xmr compact` rebuilds the graph. Ids are never reused (AUTOINCREMENT),
so a tombstone stays true forever.

Searching with a filter (`allowed_ids`) follows one rule, so k results come back
whenever k items pass it:
  1. allowed sets of at most EXACT_FILTER_MAX ids are scored exactly, their vectors
     read from the vector store (faster than any index at that size, and exact);
  2. larger sets go through the index with an `IDSelectorBatch`, its efSearch / nprobe
     widened by 0.1 / selectivity (1x at 10% of the items, 10x at 1%, at most 16x);
  3. if the index returns fewer than min(k, allowed) (a graph or cell search starved by
     the filter or by tombstones), it is asked again 4x and 16x wider, and as a last
     resort the allowed (or all live) vectors are scanned exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from xmr.retrieval.index_choice import IndexChoice
from xmr.retrieval.index_types import (
    MIN_TUNE_ITEMS,
    TARGET_RECALL,
    ReadVectors,
    build_tuned,
    drop_self,
    exact_top_k,
    exhaustive_params,
    faiss_params,
    kind_of,
    new_index,
    refine_exact,
    tune_search_params,
    tuning_sample,
)
from xmr.retrieval.progress import Progress
from xmr.retrieval.storage import atomic_write, atomic_write_bytes

IVF_TYPES = ("ivf", "ivfpq")


@dataclass
class Sharding:
    """How a build fills an IVF index: `shards` parts, run by `map_shards(fill, jobs)`
    (None: one after another here), reading vectors with `reader` (picklable, for
    workers in other processes; None: the collection's own reader)."""

    shards: int = 1
    map_shards: Callable | None = None
    reader: ReadVectors | None = None


@dataclass(frozen=True)
class StoredVectors:
    """A picklable reader of a vector store file: what a shard worker elsewhere opens."""

    path: str
    dim: int

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        from xmr.retrieval.arraystore import ArrayStore

        store = ArrayStore(Path(self.path), (self.dim,), "float32")
        try:
            return store.read(np.asarray(ids, dtype=np.int64))
        finally:
            store.close()


EXACT_FILTER_MAX = 20_000  # rule 1 above: ~40 MB of 512-d vectors, a few ms of BLAS
CHUNK = 65_536  # vectors read from the store at a time when (re)building
TUNE_K = 10
Ids = np.ndarray | Collection[int]  # any collection of ids: an array, list, set


class VectorIndex:
    def __init__(
        self,
        index: faiss.Index,
        kind: str | None = None,
        params: dict | None = None,
        search_params: dict | None = None,
        tombstones: Ids = (),
        generation: int = -1,
        built_n: int = 0,
        read_vectors: ReadVectors | None = None,
        mmapped: bool = False,
    ):
        self.index = index
        self.kind = kind or kind_of(index)
        self.params = dict(params or {})
        self.search_params = dict(search_params or {})  # {"efSearch": 24, "recall_at_10": ..}
        self.generation = generation
        self.built_n = built_n  # live items when built or last tuned
        self.read_vectors = read_vectors  # ids (B,) -> (B, D): the collection's vector store
        self.mmapped = mmapped  # IVF lists memory-mapped read-only (a searching process)
        self.exact_filter_max = EXACT_FILTER_MAX  # rule 1 of the filter rule (0: never)
        self._tombstones = np.unique(np.asarray(list(tombstones), dtype=np.int64))
        self._stored: np.ndarray | None = None  # cache of every id in the index
        self._prune()

    # -- creating, loading, saving -------------------------------------------------------
    @classmethod
    def empty(cls, dim: int, read_vectors: ReadVectors | None = None) -> VectorIndex:
        return cls(new_index("flat", dim, {}), "flat", read_vectors=read_vectors)

    @classmethod
    def load(
        cls,
        path: Path,
        dim: int,
        read_vectors: ReadVectors | None = None,
        mmap_generation: int | None = None,
    ) -> VectorIndex:
        """Read `path`; IVF files are memory-mapped when `mmap_generation` is the generation
        the file reflects (a reader that will not need to add to it). Raises RuntimeError
        on an unreadable file."""
        path = Path(path)
        if not path.exists():
            return cls.empty(dim, read_vectors)
        meta = _read_sidecar(path)
        describes_file = meta.get("file_bytes") == path.stat().st_size
        mmap = (
            mmap_generation is not None
            and describes_file
            and meta.get("type") in IVF_TYPES
            and meta.get("generation") == mmap_generation
        )
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP if mmap else 0)
        kind = kind_of(index)
        if not describes_file or meta.get("type", kind) != kind:
            # The sidecar belongs to another file (a kill between the two renames of
            # `save`): keep only its tombstones, which stay true; sync and re-tune.
            meta = {"tombstones": meta.get("tombstones", [])}
        return cls(
            index,
            kind,
            meta.get("params"),
            meta.get("search_params"),
            meta.get("tombstones", ()),
            meta.get("generation", -1),
            meta.get("built_n", 0),
            read_vectors,
            mmap,
        )

    def save(self, path: Path, generation: int) -> None:
        """Atomic: the index, then its sidecar, each through storage.atomic_write.

        FAISS serialises through a Python callback into our writer, so a failed write (a
        full disk) raises instead of leaving a short file behind a zero exit status.
        """
        if self.mmapped:
            raise RuntimeError("a memory-mapped index is read-only; open the library writable")
        path = Path(path)
        self._prune()
        file_bytes = atomic_write(
            path,
            lambda writer: faiss.write_index(self.index, faiss.PyCallbackIOWriter(writer.write)),
        )
        # If a kill lands between the two renames, the old sidecar names an older
        # generation and another file size, so the next open re-syncs: safe.
        meta = {
            "generation": generation,
            "file_bytes": file_bytes,
            "ntotal": self.ntotal,
            "type": self.kind,
            "params": self.params,
            "built_n": self.built_n,
            "search_params": self.search_params,
            "tombstones": self.tombstones.tolist(),
        }
        atomic_write_bytes(_sidecar(path), json.dumps(meta).encode())
        self.generation = generation

    @classmethod
    def build(
        cls,
        choice: IndexChoice,
        dim: int,
        ids: np.ndarray,
        read_vectors: ReadVectors,
        target_recall: float = TARGET_RECALL,
        reporter: Progress | None = None,
        sharding: Sharding | None = None,
    ) -> VectorIndex:
        """A fresh index of `choice.type` over `ids`, vectors streamed from the store and
        its knobs tuned on held-out items (index_types.build_tuned), IVF types filled in
        `sharding.shards` shards when given. If the best knobs miss `target_recall`,
        `choice.fallback` is built instead (auto: HNSW -> IVF, whose nprobe reaches any
        target)."""
        index = cls._build_one(choice, dim, ids, read_vectors, target_recall, reporter, sharding)
        recall = index.search_params.get("recall_at_10", 1.0)
        if choice.fallback is not None and recall < target_recall:
            index = cls.build(
                choice.fallback, dim, ids, read_vectors, target_recall, reporter, sharding
            )
            index.search_params["replaced"] = {"type": choice.type, "recall_at_10": recall}
        return index

    @classmethod
    def _build_one(cls, choice, dim, ids, read_vectors, target_recall, reporter, sharding):
        params = dict(choice.params)
        sharding = sharding or Sharding()
        index, knobs, seconds = build_tuned(
            choice.type, params, dim, ids, read_vectors, target_recall, reporter=reporter,
            chunk=CHUNK, shards=sharding.shards, map_shards=sharding.map_shards,
            shard_reader=sharding.reader,
        )  # fmt: skip
        if knobs:
            knobs["build_seconds"] = seconds
            if sharding.shards > 1 and choice.type in IVF_TYPES:
                knobs["shards"] = sharding.shards
        return cls(index, choice.type, params, knobs, (), -1, len(np.unique(ids)), read_vectors)

    def retune(self, ids: np.ndarray, target_recall: float = TARGET_RECALL) -> None:
        """Re-tune IVF knobs after growth, on stored items searched leaving themselves out.

        (Unbiased for IVF, whose cells do not know the query is stored; HNSW is rebuilt
        instead, see index_choice.plan_upkeep.)
        """
        ids = np.asarray(ids, dtype=np.int64)
        self.built_n = len(ids)
        if len(ids) < MIN_TUNE_ITEMS or self.read_vectors is None:
            self.search_params = exhaustive_params(self.kind, self.params, len(ids))
            return
        query_ids = tuning_sample(ids)
        queries = self.read_vectors(query_ids).astype(np.float32)
        _, top = exact_top_k(queries, ids, self.read_vectors, TUNE_K + 1, CHUNK)
        exact = drop_self(top, query_ids)

        def search(q, depth, knobs):
            return self._faiss_search(q, depth, faiss_params(self.kind, knobs))[1]

        self.search_params = tune_search_params(
            self.kind, self.params, search, queries, exact, self.read_vectors,
            target_recall, query_ids,
        )  # fmt: skip
        self.search_params["tuned_on"] = len(query_ids)

    # -- what it holds -------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        """Vectors in FAISS, tombstoned ones included."""
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def tombstones(self) -> np.ndarray:
        """Deleted ids still in the graph (HNSW), sorted."""
        return self._tombstones

    def _prune(self) -> None:
        """Keep only tombstones of stored ids (on load, save and sync; O(N), not per search).

        Between prunes a tombstone may name an id that was never stored (a skipped file's
        row): harmless, it only makes `live_count` low by one.
        """
        if len(self._tombstones):
            self._tombstones = np.intersect1d(self._tombstones, self._stored_ids())

    @property
    def live_count(self) -> int:
        return self.ntotal - len(self.tombstones)

    def ids(self) -> np.ndarray:
        """The live ids (tombstones excluded), sorted."""
        return np.setdiff1d(self._stored_ids(), self.tombstones)

    def _stored_ids(self) -> np.ndarray:
        if self._stored is None:
            if isinstance(self.index, faiss.IndexIDMap):
                stored = faiss.vector_to_array(self.index.id_map).astype(np.int64)
            else:
                stored = _ivf_ids(self.index)
            self._stored = np.sort(stored)
        return self._stored

    def describe(self) -> dict:
        """Type, knobs and counts, for `xmr info` and `xmr compact`."""
        return {
            "type": self.kind,
            "params": self.params,
            "search_params": self.search_params,
            "ntotal": self.ntotal,
            "live": self.live_count,
            "tombstones": len(self.tombstones),
            "memory_mapped": self.mmapped,
        }

    # -- changing it ---------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """ids: (B,) int64; vectors: (B, D) float32, unit norm. IVF: into trained lists."""
        if len(ids):
            self._writable()
            self.index.add_with_ids(
                np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64)
            )
            self._stored = None

    def remove(self, ids: Ids) -> None:
        """Delete ids: for real (flat, IVF) or as tombstones (HNSW cannot remove)."""
        ids = np.unique(_id_array(ids))
        if not len(ids):
            return
        self._writable()
        if self.kind == "hnsw":
            self._tombstones = np.union1d(self._tombstones, ids)  # pruned on save
        else:
            self.index.remove_ids(faiss.IDSelectorBatch(ids))
            self._stored = None

    def hide(self, ids: Ids) -> None:
        """Keep `ids` out of every search from now on, in memory only (a reader's view of
        ids whose stored records are damaged: it cannot remove them from the file)."""
        ids = _id_array(ids)
        if len(ids):
            self._tombstones = np.union1d(self._tombstones, ids)

    def sync(self, expected_ids: np.ndarray, read_vectors: ReadVectors) -> tuple[int, int]:
        """Make the index hold exactly `expected_ids` live; returns (added, removed).

        `read_vectors(ids) -> (B, D)` supplies vectors of ids the index lacks. Ids never
        change meaning (see arraystore), so a set difference is a complete repair; a
        tombstoned id the database still has (its deletion rolled back) is revived.
        """
        expected = np.unique(np.asarray(expected_ids, dtype=np.int64))
        self._prune()
        tombstones = self.tombstones
        have = np.setdiff1d(self._stored_ids(), tombstones)
        extra = np.setdiff1d(have, expected)
        missing = np.setdiff1d(expected, have)
        revived = np.intersect1d(missing, tombstones)
        missing = np.setdiff1d(missing, revived)
        self.remove(extra)
        self._tombstones = np.setdiff1d(self._tombstones, revived)
        for start in range(0, len(missing), CHUNK):
            chunk = missing[start : start + CHUNK]
            self.add(chunk, read_vectors(chunk))
        return len(missing) + len(revived), len(extra)

    def _writable(self) -> None:
        if self.mmapped:
            raise RuntimeError("a memory-mapped index is read-only; open the library writable")

    # -- searching -----------------------------------------------------------------------
    def search(
        self,
        queries: np.ndarray,
        k: int,
        exclude_ids: Ids | None = None,
        allowed_ids: Ids | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """queries: (Q, D) -> scores (Q, k) float32, ids (Q, k) int64 (-1 where fewer match).

        Tombstones and `exclude_ids` never come back; with `allowed_ids` only those do,
        and k of them whenever k exist (the rule in the module docstring).
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        width = max(1, min(int(k), max(self.ntotal, 1)))
        excluded = self.tombstones
        if exclude_ids is not None and len(exclude_ids):
            excluded = np.union1d(excluded, _id_array(exclude_ids))
        if self.ntotal == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)

        keep_alive = []  # SWIG selectors must outlive the search call
        if allowed_ids is not None:
            allowed = np.setdiff1d(_id_array(allowed_ids), excluded)
            wanted = min(width, len(allowed))
            if wanted == 0:
                return _padded(np.zeros((len(queries), 0), np.float32), None, width)
            if len(allowed) <= self.exact_filter_max and self.read_vectors is not None:
                return _padded(*exact_top_k(queries, allowed, self.read_vectors, wanted), width)
            selector = faiss.IDSelectorBatch(allowed)
            keep_alive.append(selector)
            # A graph walk or a cell scan meets allowed items at rate `selectivity`:
            # widen it accordingly (10% and above: as tuned; 1%: 10x) before searching.
            selectivity = len(allowed) / max(self.live_count, 1)
            widen = int(min(16, max(1, round(0.1 / selectivity))))
        else:
            allowed = None
            widen = 1
            wanted = min(width, max(self.live_count - len(excluded) + len(self.tombstones), 0))
            selector = None
            if len(excluded):
                inner = faiss.IDSelectorBatch(excluded)
                selector = faiss.IDSelectorNot(inner)
                keep_alive += [inner, selector]

        for boost in (widen, 4 * widen, 16 * widen):
            scores, ids = self._approximate(queries, width, selector, boost)
            if (ids >= 0).sum(axis=1).min() >= wanted or self.kind == "flat":
                return scores, ids
        if self.read_vectors is None:
            return scores, ids
        pool = allowed if allowed is not None else np.setdiff1d(self._stored_ids(), excluded)
        return _padded(*exact_top_k(queries, pool, self.read_vectors, wanted, CHUNK), width)

    def _approximate(self, queries, k, selector, boost):
        """One index search; IVF-PQ candidates are re-scored exactly from the store."""
        params = faiss_params(self.kind, self.search_params, selector, boost)
        factor = int(self.search_params.get("k_factor", 1))
        if self.kind == "ivfpq" and factor > 1 and self.read_vectors is not None:
            _, candidates = self._faiss_search(queries, min(k * factor, self.ntotal), params)
            return refine_exact(queries, candidates, self.read_vectors, k)
        return self._faiss_search(queries, k, params)

    def _faiss_search(self, queries, k, params):
        if self.kind == "hnsw" and params is not None:
            params.efSearch = max(int(params.efSearch), k)
        return self.index.search(queries, k, params=params)


def _id_array(ids: Ids) -> np.ndarray:
    """Any collection of ids (array, list, set) -> (N,) int64."""
    if isinstance(ids, np.ndarray):
        return ids.astype(np.int64, copy=False).ravel()
    return np.fromiter(ids, dtype=np.int64)


def _padded(scores: np.ndarray, ids: np.ndarray | None, width: int):
    """Pad (Q, w) results to (Q, width) with -inf scores and -1 ids."""
    q = len(scores)
    out_scores = np.full((q, width), -np.inf, dtype=np.float32)
    out_ids = np.full((q, width), -1, dtype=np.int64)
    w = scores.shape[1]
    out_scores[:, :w] = scores
    if ids is not None:
        out_ids[:, :w] = ids
    return out_scores, out_ids


def _ivf_ids(index: faiss.Index) -> np.ndarray:
    """Every id stored in an IVF index's inverted lists (in memory or memory-mapped)."""
    invlists = faiss.extract_index_ivf(index).invlists
    parts = []
    for list_no in range(invlists.nlist):
        size = invlists.list_size(list_no)
        if size:
            pointer = invlists.get_ids(list_no)
            parts.append(faiss.rev_swig_ptr(pointer, size).astype(np.int64))
            invlists.release_ids(list_no, pointer)
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _read_sidecar(path: Path) -> dict:
    sidecar = _sidecar(path)
    try:
        meta = json.loads(sidecar.read_bytes()) if sidecar.exists() else {}
    except (OSError, ValueError):  # ValueError: not JSON, not UTF-8
        return {}  # derived data: an unreadable sidecar only costs a re-sync
    return meta if isinstance(meta, dict) else {}


def _sidecar(path: Path) -> Path:
    return Path(str(path) + ".json")
