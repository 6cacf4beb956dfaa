"""FAISS index types, the automatic choice between them, and build-time tuning.

The choice follows autofaiss's reasoning, owned here (autofaiss pins numpy<2):
  flat   exact; best below ~100k items (a scan of 100k x 512 floats is ~10 ms)
  hnsw   graph; fast and accurate while vectors + graph fit in memory
  ivf    inverted lists over k-means cells; scales, loads memory-mapped
  ivfpq  IVF with product-quantised codes, for when the vectors do not fit the budget
Query-time knobs (nprobe, efSearch) are tuned at build time so recall@10 against exact
search stays >= the target (0.95 by default), and recorded with the index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import faiss
import numpy as np

from retrieval.errors import InputError

INDEX_TYPES = ("flat", "hnsw", "ivf", "ivfpq")
FLAT_LIMIT = 100_000
HNSW_M = 32
TARGET_RECALL = 0.95


@dataclass
class IndexChoice:
    type: str
    params: dict = field(default_factory=dict)  # nlist, m, pq_m ...
    reason: str = ""


def choose_index_type(n_items: int, dim: int, max_memory_bytes: int | None = None) -> IndexChoice:
    """The `auto` rule: documented sizes, tested in tests/test_index_types.py."""
    flat_bytes = n_items * dim * 4
    hnsw_bytes = flat_bytes + n_items * HNSW_M * 2 * 4  # vectors + ~2M neighbour ids per node
    if max_memory_bytes is not None and hnsw_bytes > max_memory_bytes:
        pq_m = _pq_subquantizers(dim)
        return IndexChoice(
            "ivfpq",
            {"nlist": _nlist(n_items), "pq_m": pq_m},
            f"{n_items} vectors exceed the memory budget uncompressed",
        )
    if n_items < FLAT_LIMIT:
        return IndexChoice("flat", {}, f"{n_items} < {FLAT_LIMIT}: exact search is fast enough")
    if n_items < 2_000_000:
        return IndexChoice("hnsw", {"m": HNSW_M}, "fits in memory: graph search")
    return IndexChoice("ivf", {"nlist": _nlist(n_items)}, "large: inverted lists")


def _nlist(n_items: int) -> int:
    # ~4 sqrt(N) cells, and at least 39 training points per cell (FAISS's own warning).
    return int(max(1, min(4 * math.sqrt(n_items), n_items // 39)))


def _pq_subquantizers(dim: int) -> int:
    for m in (64, 48, 32, 16, 8):
        if dim % m == 0 and dim // m >= 2:
            return m
    return 1


def build_index(
    vectors: np.ndarray,
    index_type: str = "flat",
    params: dict | None = None,
    tune: bool = True,
    target_recall: float = TARGET_RECALL,
):
    """An inner-product index over `vectors` (N, D) whose ids are row positions.

    Returns a `TunedIndex`: the FAISS index and the search parameters reaching
    `target_recall` recall@10 against exact search on a sample of the data.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if index_type == "auto":
        choice = choose_index_type(n, dim)
        index_type, params = choice.type, {**choice.params, **(params or {})}
    params = dict(params or {})
    if index_type not in INDEX_TYPES:
        raise InputError(
            f"unknown index type '{index_type}'; use one of: auto, " + ", ".join(INDEX_TYPES)
        )
    index = new_index(index_type, dim, n, params)
    if not index.is_trained:
        train = (
            vectors
            if n <= 200_000
            else vectors[np.random.default_rng(0).choice(n, 200_000, replace=False)]
        )
        index.train(train)
    index.add(vectors)
    tuned = TunedIndex(index, index_type, params, {})
    if tune and index_type != "flat":
        tuned.search_params = tune_search_params(tuned, vectors, target_recall)
    return tuned


def new_index(index_type: str, dim: int, n_items: int, params: dict):
    ip = faiss.METRIC_INNER_PRODUCT
    if index_type == "flat":
        return faiss.IndexFlatIP(dim)
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params.setdefault("m", HNSW_M), ip)
        index.hnsw.efConstruction = params.setdefault("ef_construction", 80)
        return index
    nlist = params.setdefault("nlist", _nlist(n_items))
    quantizer = faiss.IndexFlatIP(dim)
    if index_type == "ivf":
        return faiss.IndexIVFFlat(quantizer, dim, nlist, ip)
    pq_m = params.setdefault("pq_m", _pq_subquantizers(dim))
    return faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, 8, ip)


@dataclass
class TunedIndex:
    index: faiss.Index
    type: str
    params: dict
    search_params: dict  # {"nprobe": 16} / {"efSearch": 64}

    def faiss_params(self, selector=None):
        if self.type == "hnsw":
            return faiss.SearchParametersHNSW(
                efSearch=self.search_params.get("efSearch", 64), sel=selector
            )
        if self.type in ("ivf", "ivfpq"):
            return faiss.SearchParametersIVF(
                nprobe=self.search_params.get("nprobe", 8), sel=selector
            )
        return faiss.SearchParameters(sel=selector) if selector is not None else None

    def search(self, queries: np.ndarray, k: int, selector=None):
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        return self.index.search(queries, k, params=self.faiss_params(selector))


def tune_search_params(
    tuned: TunedIndex, vectors: np.ndarray, target: float, sample: int = 500, k: int = 10
) -> dict:
    """Smallest nprobe / efSearch whose recall@k against exact search reaches `target`.

    Queries are stored vectors plus small noise (a query is never exactly an item), and the
    exact answer comes from a flat scan of the same vectors.
    """
    rng = np.random.default_rng(0)
    n = len(vectors)
    picks = rng.choice(n, size=min(sample, n), replace=False)
    queries = vectors[picks] + rng.normal(0, 0.02, size=(len(picks), vectors.shape[1]))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    k = min(k, n)
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth = exact.search(queries, k)

    if tuned.type == "hnsw":
        key, values = "efSearch", [16, 32, 64, 128, 256, 512, 1024]
    else:
        nlist = tuned.params["nlist"]
        key, values = (
            "nprobe",
            sorted({min(nlist, v) for v in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, nlist)}),
        )
    best = {key: values[-1], "recall_at_10": None}
    for value in values:
        tuned.search_params = {key: value}
        _, found = tuned.search(queries, k)
        recall = _overlap_recall(found, truth)
        if recall >= target:
            return {key: value, "recall_at_10": round(recall, 4)}
        best = {key: value, "recall_at_10": round(recall, 4)}
    return best  # the target is out of reach (e.g. PQ codes): the most accurate setting


def _overlap_recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f[f >= 0]) & set(t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size
