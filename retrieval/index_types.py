"""FAISS index types: building one, its query-time knobs, and tuning them at build time.

Which type to use is decided in `index_choice` (no FAISS there). Here:
  new_index        an empty inner-product index that carries our int64 ids
                   (flat/hnsw inside IndexIDMap2; IVF types store ids in their lists)
  kind_of          the type of an index read back from disk
  faiss_params     SearchParameters for a type, its tuned knobs and an id selector
  tune_search_params  smallest nprobe / efSearch (and re-ranking depth for IVF-PQ) whose
                   recall@10 against exact search reaches the target (0.95)
  refine_exact     exact re-scoring of approximate candidates from the full vectors
  build_tuned      train, fill and tune a new index, vectors streamed from a store;
                   IVF types optionally in shards (trained_index once, fill_shard per
                   shard wherever `map_shards` runs it, merge_shards)
  build_index      a tuned index over an in-memory matrix whose ids are row positions
                   (benchmarks and `xmr bench`; the product's index is vector_index.py)

IVF-PQ scores are approximate; its candidates are re-scored exactly from the stored
float32 vectors (`k_factor` x k of them), like FAISS's IndexRefineFlat but reading the
vectors from the memory-mapped vector store instead of keeping a second copy in RAM.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np

from xmr.retrieval.index_choice import (
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    INDEX_TYPES,
    PQ_BITS,
    IndexChoice,
    check_index_type,
    choose_index_type,
    nlist_for,
    pq_subquantizers,
)
from xmr.retrieval.progress import Progress

TARGET_RECALL = 0.95
# Tuning aims this much above the target: 1,000 tuning queries measure recall to about
# +-0.007, and a fresh set of queries must still land at or above the target.
TUNE_MARGIN = 0.01
TRAIN_POINTS_PER_LIST = 64  # k-means sample per IVF cell (FAISS wants >= 39)
TUNE_QUERIES = 1000
EF_GRID = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
NPROBE_GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024)
K_FACTOR_GRID = (1, 2, 4, 8, 16, 32, 64)
# (query, candidate) pairs scored at a time by refine_exact: 1,000 queries x 640
# candidates at once would be two 1.3 GB temporaries at 512-d.
REFINE_PAIRS = 16_384

__all__ = [
    "INDEX_TYPES",
    "IndexChoice",
    "TunedIndex",
    "build_index",
    "build_tuned",
    "choose_index_type",
    "exact_top_k",
    "exact_truth",
    "faiss_params",
    "kind_of",
    "new_index",
    "refine_exact",
    "tune_search_params",
    "tuning_sample",
]

ReadVectors = Callable[[np.ndarray], np.ndarray]  # ids (B,) -> (B, D) float32


def new_index(index_type: str, dim: int, params: dict) -> faiss.Index:
    """An empty index of `index_type` that accepts add_with_ids; fills `params` defaults."""
    ip = faiss.METRIC_INNER_PRODUCT
    if index_type == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if index_type == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, params.setdefault("m", HNSW_M), ip)
        inner.hnsw.efConstruction = params.setdefault("ef_construction", HNSW_EF_CONSTRUCTION)
        return faiss.IndexIDMap2(inner)
    if index_type not in ("ivf", "ivfpq"):
        check_index_type(index_type)
        raise ValueError(f"'{index_type}' is not a concrete index type")
    nlist = params.setdefault("nlist", nlist_for(10_000))
    quantizer = faiss.IndexFlatIP(dim)
    if index_type == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, ip)
    else:
        pq_m = params.setdefault("pq_m", pq_subquantizers(dim))
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, PQ_BITS, ip)
    index.own_fields = True  # the quantizer lives as long as the index (no Python ref needed)
    quantizer.this.disown()
    index.cp.niter = 20
    return index


def kind_of(index: faiss.Index) -> str:
    """'flat' | 'hnsw' | 'ivf' | 'ivfpq' for an index made by `new_index`."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(inner, faiss.IndexIVFPQ):
        return "ivfpq"
    if isinstance(inner, faiss.IndexIVFFlat):
        return "ivf"
    if isinstance(inner, faiss.IndexFlat):
        return "flat"
    raise ValueError(f"unsupported FAISS index {type(inner).__name__}")


def train_sample_size(index_type: str, params: dict, n_items: int) -> int:
    if index_type not in ("ivf", "ivfpq"):
        return 0
    wanted = TRAIN_POINTS_PER_LIST * params["nlist"]
    if index_type == "ivfpq":
        wanted = max(wanted, 64 * (1 << PQ_BITS))
    return min(n_items, wanted)


def faiss_params(
    index_type: str, search_params: dict, selector: faiss.IDSelector | None = None, boost: int = 1
):
    """SearchParameters for one search; `boost` widens the search (shortfall retries)."""
    if index_type == "hnsw":
        ef = int(search_params.get("efSearch", 64)) * boost
        return faiss.SearchParametersHNSW(efSearch=ef, sel=selector)
    if index_type in ("ivf", "ivfpq"):
        nprobe = int(search_params.get("nprobe", 8)) * boost
        return faiss.SearchParametersIVF(nprobe=nprobe, sel=selector)
    return faiss.SearchParameters(sel=selector) if selector is not None else None


def refine_exact(
    queries: np.ndarray, candidates: np.ndarray, read_vectors: ReadVectors, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k among candidates: queries (Q, D), candidates (Q, C) ids (-1 = none).

    Returns scores (Q, k) float32 and ids (Q, k) int64, -1 padded.
    """
    q = len(queries)
    out_scores = np.full((q, k), -np.inf, dtype=np.float32)
    out_ids = np.full((q, k), -1, dtype=np.int64)
    valid = candidates >= 0
    if not valid.any():
        return out_scores, out_ids
    unique, inverse = np.unique(candidates[valid], return_inverse=True)
    vectors = read_vectors(unique)  # (U, D), each stored vector read once
    scores = np.full(candidates.shape, -np.inf, dtype=np.float32)  # (Q, C)
    rows = np.nonzero(valid)[0]
    pair_scores = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(rows), REFINE_PAIRS):  # bounded (P, D) temporaries
        part = slice(start, start + REFINE_PAIRS)
        pair_scores[part] = np.einsum("nd,nd->n", queries[rows[part]], vectors[inverse[part]])
    scores[valid] = pair_scores
    take = min(k, candidates.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :take]  # (Q, take)
    out_scores[:, :take] = np.take_along_axis(scores, order, 1)
    out_ids[:, :take] = np.take_along_axis(candidates, order, 1)
    out_ids[~np.isfinite(out_scores)] = -1
    return out_scores, out_ids


class RunningTopK:
    """The best k (score, id) pairs per query, fed chunk by chunk (a streamed scan)."""

    def __init__(self, n_queries: int, k: int):
        self.k = k
        self.scores = np.full((n_queries, k), -np.inf, dtype=np.float32)  # (Q, k)
        self.ids = np.full((n_queries, k), -1, dtype=np.int64)  # (Q, k)

    def push(self, scores: np.ndarray, ids: np.ndarray) -> None:
        """scores (Q, C) for ids (C,) shared by all queries."""
        self.push_top(scores, np.broadcast_to(ids, scores.shape))

    def push_top(self, scores: np.ndarray, ids: np.ndarray) -> None:
        """Merge another partial result: scores, ids (Q, k') per query (a shard's top)."""
        merged_scores = np.concatenate([self.scores, scores.astype(np.float32)], axis=1)
        merged_ids = np.concatenate([self.ids, ids], axis=1)
        top = np.argpartition(-merged_scores, self.k - 1, axis=1)[:, : self.k]
        self.scores = np.take_along_axis(merged_scores, top, 1)
        self.ids = np.take_along_axis(merged_ids, top, 1)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) scores and ids, best first, -1 where fewer than k were seen."""
        order = np.argsort(-self.scores, axis=1, kind="stable")
        scores = np.take_along_axis(self.scores, order, 1)
        ids = np.take_along_axis(self.ids, order, 1)
        ids[~np.isfinite(scores)] = -1
        return scores, ids


def exact_top_k(
    queries: np.ndarray, ids: np.ndarray, read_vectors: ReadVectors, k: int, chunk: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Brute force over `ids` (N,), streamed `chunk` vectors at a time: (Q, k) scores, ids."""
    top = RunningTopK(len(queries), k)
    for start in range(0, len(ids), chunk):
        part = np.asarray(ids[start : start + chunk], dtype=np.int64)
        top.push(queries @ read_vectors(part).T, part)  # (Q, C)
    return top.result()


def exact_truth(
    queries: np.ndarray,
    ids: np.ndarray,
    read_vectors: ReadVectors,
    k: int,
    query_ids: np.ndarray | None = None,
) -> np.ndarray:
    """Exact top-k ids (Q, k) of each query over `ids`, leaving out its own id if given."""
    extra = 0 if query_ids is None else 1
    _, top = exact_top_k(queries, ids, read_vectors, k + extra)
    return drop_self(top, query_ids)


def tuning_sample(ids: np.ndarray, n: int = TUNE_QUERIES, seed: int = 0) -> np.ndarray:
    """Ids of items that serve as tuning queries, sorted (sequential reads).

    At build time they are held out: tuned against the index built without them, and
    added afterwards. A held-out item is exactly a fresh point from the collection's
    distribution, the honest stand-in for a query not seen yet. (An item searched
    while in the index, even leaving itself out of the answer, is easier for HNSW: its
    own node links straight to its neighbours. At 10k x 512 leave-one-out read 0.98 at
    efSearch 16, where fresh queries got 0.949. Noisy copies of items are easier too.)
    """
    ids = np.asarray(ids, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(ids, size=min(n, len(ids)), replace=False))


def drop_self(found: np.ndarray, self_ids: np.ndarray | None) -> np.ndarray:
    """found (Q, C) ids -> (Q, C - 1) without each query's own id (or the last column)."""
    if self_ids is None:
        return found
    out = np.empty((found.shape[0], found.shape[1] - 1), dtype=found.dtype)
    for row, (ids, own) in enumerate(zip(found, self_ids, strict=True)):
        hit = np.nonzero(ids == own)[0]
        out[row] = np.delete(ids, hit[0]) if len(hit) else ids[:-1]
    return out


def overlap_recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's true top-k that the approximate top-k holds."""
    k = truth.shape[1]
    hits = sum(
        len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist()))
        for f, t in zip(found, truth, strict=True)
    )
    return hits / (len(truth) * k) if len(truth) else 1.0


def tune_search_params(
    index_type: str,
    params: dict,
    search: Callable[[np.ndarray, int, dict], np.ndarray],
    queries: np.ndarray,
    truth: np.ndarray,
    read_vectors: ReadVectors | None,
    target: float = TARGET_RECALL,
    query_ids: np.ndarray | None = None,
) -> dict:
    """The cheapest knobs reaching `target` recall@k (k = truth's width) against exact.

    `search(queries, depth, knobs) -> ids (Q, depth)` runs the approximate index;
    `query_ids` (Q,) are the queries' own ids when they are stored items (see
    `tuning_sample`), dropped from what the index returns; `truth` already lacks them. For
    IVF-PQ each nprobe is searched once, 32k deep, and every k_factor is read off that
    one candidate list (its first k_factor * k entries re-scored exactly).
    Returns e.g. {"nprobe": 16, "k_factor": 4, "recall_at_10": 0.962}.
    """
    k = truth.shape[1]
    if index_type == "flat":
        return {"recall_at_10": 1.0}
    if index_type == "hnsw":
        key, values = "efSearch", [v for v in EF_GRID if v >= k] or [k]
    else:
        nlist = params["nlist"]
        key, values = "nprobe", sorted({min(nlist, v) for v in (*NPROBE_GRID, nlist)})
    factors = K_FACTOR_GRID if index_type == "ivfpq" and read_vectors is not None else (1,)
    best: dict = {}
    for value in values:
        knobs = {key: value}
        extra = 0 if query_ids is None else 1
        deep = search(queries, k * factors[-1] + extra, knobs)  # (Q, k * max factor [+ 1])
        deep = drop_self(deep, query_ids)
        for factor in factors:
            if factor == 1 and len(factors) == 1:
                found = deep[:, :k]
            else:
                assert read_vectors is not None  # more than one factor only with it
                _, found = refine_exact(queries, deep[:, : k * factor], read_vectors, k)
            recall = overlap_recall(found, truth)
            candidate = {**knobs, "recall_at_10": round(recall, 4)}
            if len(factors) > 1:
                candidate["k_factor"] = factor
            if recall >= target + TUNE_MARGIN:
                return candidate
            if not best or recall > best["recall_at_10"]:
                best = candidate
    return best  # the target is out of reach: the most accurate setting tried


@dataclass
class TunedIndex:
    """A FAISS index over a matrix (ids = row positions) with its tuned search knobs."""

    index: faiss.Index
    type: str
    params: dict
    search_params: dict  # {"nprobe": 16} / {"efSearch": 64} / {"nprobe": 8, "k_factor": 4}
    vectors: np.ndarray | None = None  # (N, D): exact re-scoring for ivfpq

    def _read(self, ids: np.ndarray) -> np.ndarray:
        assert self.vectors is not None  # `search` reads through here only when kept
        return self.vectors[ids]

    def faiss_params(self, selector: faiss.IDSelector | None = None):
        return faiss_params(self.type, self.search_params, selector)

    def search(self, queries: np.ndarray, k: int, selector: faiss.IDSelector | None = None):
        """queries (Q, D) -> scores (Q, k), ids (Q, k) (row positions, -1 padded)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        factor = int(self.search_params.get("k_factor", 1))
        if self.type == "ivfpq" and factor > 1 and self.vectors is not None:
            _, candidates = self.index.search(
                queries, k * factor, params=self.faiss_params(selector)
            )
            return refine_exact(queries, candidates, self._read, k)
        return self.index.search(queries, k, params=self.faiss_params(selector))


MIN_TUNE_ITEMS = 1000  # below this, search exhaustively instead of tuning


def exhaustive_params(index_type: str, params: dict, n_items: int) -> dict:
    """Knobs that search (nearly) everything: for collections too small to tune."""
    if index_type == "hnsw":
        return {"efSearch": max(64, n_items), "recall_at_10": 1.0}
    if index_type in ("ivf", "ivfpq"):
        knobs = {"nprobe": params["nlist"], "recall_at_10": 1.0}
        return {**knobs, "k_factor": 8} if index_type == "ivfpq" else knobs
    return {}


def build_tuned(
    index_type: str,
    params: dict,
    dim: int,
    ids: np.ndarray,
    read_vectors: ReadVectors,
    target_recall: float = TARGET_RECALL,
    tune: bool = True,
    reporter: Progress | None = None,
    chunk: int = 65_536,
    shards: int = 1,
    map_shards: MapShards | None = None,
    shard_reader: ReadVectors | None = None,
) -> tuple[faiss.Index, dict, dict]:
    """Train, fill and tune a new index over `ids`, vectors streamed from `read_vectors`.

    The tuning sample is held out (see `tuning_sample`): every other vector is added,
    chunk by chunk, while the exact top-10 of the sample over those same vectors is
    accumulated; the knobs are tuned on that index; then the sample is added too.
    Returns (index, knobs, seconds {"train", "add", "tune"}). `params` gets defaults.
    `reporter` is anything with stage(name, total) / advance(n) / done().

    Sharded (IVF types, `shards` > 1): the quantizer (and PQ) are trained once, on the
    same sample a one-shot build uses; `map_shards(fill_shard, jobs)` fills a copy of
    the trained index per shard, anywhere (Ray tasks, given a picklable `shard_reader`),
    and the shards are merged into one index (`merge_shards`): the same inverted lists a
    one-shot build makes, so it searches the same.
    """
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    n = len(ids)
    seconds = {"train": 0.0, "add": 0.0, "tune": 0.0}
    started = time.perf_counter()
    index = trained_index(index_type, params, dim, ids, read_vectors)
    seconds["train"] = time.perf_counter() - started

    tuning = tune and index_type != "flat" and n >= MIN_TUNE_ITEMS
    held = tuning_sample(ids) if tuning else np.zeros(0, np.int64)
    rest = np.setdiff1d(ids, held, assume_unique=True)
    queries = np.ascontiguousarray(read_vectors(held), dtype=np.float32) if tuning else None
    truth = RunningTopK(len(held), 10) if tuning else None
    if reporter is not None:
        reporter.stage(f"building {index_type} index", n)
    started = time.perf_counter()
    if shards > 1 and index_type in ("ivf", "ivfpq"):
        trained = faiss.serialize_index(index)  # (bytes,) uint8: what every shard starts from
        jobs = [
            (trained, part, shard_reader or read_vectors, queries, chunk)
            for part in np.array_split(rest, shards)
        ]
        for filled, top in (map_shards or _map_here)(fill_shard, jobs):
            shard = faiss.deserialize_index(filled)
            merge_shards(index, shard)
            if truth is not None:
                truth.push_top(*top)
            if reporter is not None:
                reporter.advance(int(shard.ntotal))
    else:
        add_chunks(index, rest, read_vectors, queries, truth, chunk, reporter)
    seconds["add"] = time.perf_counter() - started

    knobs = exhaustive_params(index_type, params, n)
    if tuning:
        assert queries is not None and truth is not None  # both made above when tuning
        started = time.perf_counter()

        def search(q, depth, trial):

            return index.search(q, depth, params=faiss_params(index_type, trial))[1]

        exact = truth.result()[1]  # (Q, 10)
        knobs = tune_search_params(
            index_type, params, search, queries, exact, read_vectors, target_recall
        )
        knobs["tuned_on"] = len(held)
        seconds["tune"] = time.perf_counter() - started
        started = time.perf_counter()
        index.add_with_ids(queries, held)
        seconds["add"] += time.perf_counter() - started
        if reporter is not None:
            reporter.advance(len(held))
    if reporter is not None:
        reporter.done()
    return index, knobs, {k: round(v, 3) for k, v in seconds.items()}


MapShards = Callable  # (fill_shard, [args, ...]) -> iterable of its results, in order


def _map_here(function, jobs):
    return (function(*job) for job in jobs)


def trained_index(
    index_type: str, params: dict, dim: int, ids: np.ndarray, read_vectors: ReadVectors
) -> faiss.Index:
    """An empty index of `index_type`, trained (IVF cells, PQ codebooks) on a fixed sample."""
    index = new_index(index_type, dim, params)
    if not index.is_trained:
        size = train_sample_size(index_type, params, len(ids))
        picks = np.sort(np.random.default_rng(1).choice(ids, size, replace=False))
        index.train(np.ascontiguousarray(read_vectors(picks), dtype=np.float32))
    return index


def add_chunks(
    index: faiss.Index,
    ids: np.ndarray,
    read_vectors: ReadVectors,
    queries: np.ndarray | None = None,
    truth: RunningTopK | None = None,
    chunk: int = 65_536,
    reporter: Progress | None = None,
) -> None:
    """Add `ids`' vectors `chunk` at a time; `truth` (RunningTopK) gathers the exact
    top-k of `queries` over the same vectors on the way."""
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        vectors = np.ascontiguousarray(read_vectors(part), dtype=np.float32)  # (C, D)
        index.add_with_ids(vectors, part)
        if truth is not None:
            truth.push(queries @ vectors.T, part)  # (Q, C)
        if reporter is not None:
            reporter.advance(len(part))


def fill_shard(
    trained: np.ndarray,
    ids: np.ndarray,
    read_vectors: ReadVectors,
    queries: np.ndarray | None = None,
    chunk: int = 65_536,
):
    """One shard of a sharded build (runs wherever `map_shards` sends it): the trained
    index (serialised) filled with `ids`. -> (serialised shard, (scores, ids) of the
    exact top-10 of `queries` within the shard, or None)."""
    index = faiss.deserialize_index(trained)
    truth = None if queries is None else RunningTopK(len(queries), 10)
    add_chunks(index, np.asarray(ids, dtype=np.int64), read_vectors, queries, truth, chunk)
    return faiss.serialize_index(index), None if truth is None else truth.result()


def merge_shards(index: faiss.Index, shard: faiss.Index) -> None:
    """Move `shard`'s inverted lists into `index` (same trained quantizer; ids kept)."""
    faiss.extract_index_ivf(index).merge_from(faiss.extract_index_ivf(shard), 0)


def build_index(
    vectors: np.ndarray,
    index_type: str = "flat",
    params: dict | None = None,
    tune: bool = True,
    target_recall: float = TARGET_RECALL,
) -> TunedIndex:
    """An inner-product index over `vectors` (N, D) whose ids are row positions.

    Returns a `TunedIndex`: the FAISS index and the search knobs reaching
    `target_recall` recall@10 against exact search on held-out items (`build_tuned`).
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if index_type == "auto":
        choice = choose_index_type(n, dim)
        index_type, params = choice.type, {**choice.params, **(params or {})}
    check_index_type(index_type)
    params = dict(params or {})
    if index_type in ("ivf", "ivfpq"):
        params.setdefault("nlist", nlist_for(n))
    index, knobs, _ = build_tuned(
        index_type, params, dim, np.arange(n), vectors.__getitem__, target_recall, tune
    )
    return TunedIndex(index, index_type, params, knobs, vectors if index_type == "ivfpq" else None)
