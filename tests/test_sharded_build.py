"""Sharded IVF builds: train once on a sample, fill shards separately, merge.

The merged index must be the one-shot build's: the same trained quantizer and codes,
the same knobs tuned on the same held-out items, the same top-10 for fresh queries.
Real FAISS on 100k clustered vectors.
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from xmr.retrieval.index_choice import resolve_choice
from xmr.retrieval.index_types import build_tuned, faiss_params, overlap_recall, refine_exact

N_ITEMS = 100_000
DIM = 64


def clustered(n: int, seed: int, centres: int = 2000) -> np.ndarray:
    """(n, DIM) unit vectors: clusters of uneven size, each with its own spread."""
    r = np.random.default_rng(0)
    centre = r.normal(size=(centres, DIM))
    centre /= np.linalg.norm(centre, axis=1, keepdims=True)
    weight = r.lognormal(0, 1.2, centres)
    spread = r.uniform(0.5, 1.5, centres)
    rng = np.random.default_rng(seed)
    label = rng.choice(centres, n, p=weight / weight.sum())
    x = centre[label] + rng.normal(size=(n, DIM)) * (spread[label] / np.sqrt(DIM))[:, None]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _trained_state(index) -> tuple[np.ndarray, np.ndarray]:
    """(nlist, D) cell centroids and the PQ codebooks of an IVF-PQ index."""
    ivf = faiss.downcast_index(index)
    return ivf.quantizer.reconstruct_n(0, ivf.nlist), faiss.vector_to_array(ivf.pq.centroids)


def _top10(index, knobs, queries, read):
    params = faiss_params("ivfpq", knobs)
    _, candidates = index.search(queries, 10 * int(knobs["k_factor"]), params=params)
    return refine_exact(queries, candidates, read, 10)[1]


@pytest.mark.slow
def test_sharded_ivfpq_searches_like_the_one_shot_build():
    vectors = clustered(N_ITEMS, seed=1)
    ids = np.arange(N_ITEMS, dtype=np.int64) * 2 + 5  # ids are not row positions
    read = lambda wanted: vectors[(np.asarray(wanted) - 5) // 2]  # noqa: E731
    queries = clustered(1000, seed=2)
    choice = resolve_choice("ivfpq", N_ITEMS, DIM)

    one, one_knobs, _ = build_tuned("ivfpq", dict(choice.params), DIM, ids, read)
    jobs_seen = []

    def map_shards(function, jobs):  # each shard filled on its own, last one first
        jobs_seen.extend(jobs)
        results = {i: function(*jobs[i]) for i in reversed(range(len(jobs)))}
        return [results[i] for i in range(len(jobs))]

    sharded, knobs, _ = build_tuned(
        "ivfpq", dict(choice.params), DIM, ids, read, shards=4, map_shards=map_shards
    )
    assert len(jobs_seen) == 4
    assert sum(len(job[1]) for job in jobs_seen) == N_ITEMS - one_knobs["tuned_on"]
    assert sharded.ntotal == one.ntotal == N_ITEMS
    # Trained once on the same sample: identical cells and codebooks.
    for mine, theirs in zip(_trained_state(sharded), _trained_state(one), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert knobs == one_knobs  # the same held-out items, the same exact truth, same knobs
    assert knobs["recall_at_10"] >= 0.95

    found_one = _top10(one, one_knobs, queries, read)
    found_sharded = _top10(sharded, one_knobs, queries, read)
    assert overlap_recall(found_sharded, found_one) >= 0.99
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10] * 2 + 5
    assert overlap_recall(found_sharded, truth) >= 0.95
