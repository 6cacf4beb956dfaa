"""Stage 2 over a whole evaluation set: re-rank every query's stage-1 top K.

Used by `xmr bench` (the `rerank` rows) and by re-ranker training (validation). Image-side
re-ranker states are computed once per image and shared by all the pairs that use it.
"""

from __future__ import annotations

import time

import numpy as np

from xmr.evaluation import metrics
from xmr.evaluation.negatives import negative_accuracy

QUERY_CHUNK = 256  # queries scored per call: bounds the (chunk*K, L, D) pair buffer


def rerank_logits(runtime, embeddings, scores: np.ndarray, k: int):
    """Stage-1 candidates and re-ranker logits, both directions.

    scores: (T, N) stage-1 similarities. Returns dict direction -> (cands (Q, K),
    stage1 (Q, K), logits (Q, K)), and the stage-2 milliseconds per query.
    """
    started = time.monotonic()
    states = runtime.image_states(embeddings.image_tokens)  # every image once
    text_tokens, lengths = embeddings.text_tokens, embeddings.text_lengths
    out = {}

    cands = metrics.stable_top_k(scores, min(k, scores.shape[1]))  # (T, K) images
    logits = np.empty(cands.shape, np.float32)
    for a in range(0, len(cands), QUERY_CHUNK):
        rows = np.arange(a, min(a + QUERY_CHUNK, len(cands)))
        texts = np.repeat(rows, cands.shape[1])
        logits[rows] = runtime.score_pairs(
            text_tokens[texts], lengths[texts], states, cands[rows].ravel()
        ).reshape(len(rows), -1)
    out["t2i"] = (cands, np.take_along_axis(scores, cands, 1), logits)

    cands = metrics.stable_top_k(scores.T, min(k, scores.shape[0]))  # (N, K) texts
    logits = np.empty(cands.shape, np.float32)
    for a in range(0, len(cands), QUERY_CHUNK):
        rows = np.arange(a, min(a + QUERY_CHUNK, len(cands)))
        flat = cands[rows].ravel()
        logits[rows] = runtime.score_pairs(
            text_tokens[flat], lengths[flat], states, np.repeat(rows, cands.shape[1])
        ).reshape(len(rows), -1)
    out["i2t"] = (cands, np.take_along_axis(scores.T, cands, 1), logits)
    ms = (time.monotonic() - started) * 1000 / (scores.shape[0] + scores.shape[1])
    return out, ms


def reranked_ranks(logits_by_direction, t2i_map, stage1_weight: float) -> dict:
    """Ranks after ordering each query's candidates by their fused final score."""
    from xmr.retrieval.reranker import fused_score

    ranks = {}
    for direction, (cands, stage1, logits) in logits_by_direction.items():
        final = fused_score(logits, stage1, stage1_weight)
        order = np.argsort(-final, axis=1, kind="stable")
        lists = np.take_along_axis(cands, order, 1)
        if direction == "t2i":
            ranks[direction] = metrics.text_to_image_ranks_from_lists(lists, t2i_map)
        else:
            ranks[direction] = metrics.image_to_text_ranks_from_lists(lists, t2i_map)
    return ranks


# Multiples of the encoder's logit scale tried as stage1_weight when fusing the scores.
FUSION_MULTIPLIERS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)


def _validation_pass(model, val, k: int):
    """One re-ranker pass over a validation split, for quick_validation and fusion_sweep:
    (runtime, stage-1 scores (T, N), text -> image map (T,), logits by direction)."""
    from xmr.retrieval.reranker import RerankerRuntime

    dataset, embeddings, _ = val
    runtime = RerankerRuntime(model, "training", str(next(model.parameters()).device))
    scores = embeddings.text_vectors @ embeddings.image_vectors.T  # (T, N)
    t2i_map = np.asarray(dataset.text_to_image)
    logits, _ = rerank_logits(runtime, embeddings, scores, k)
    return runtime, scores, t2i_map, logits


def _r1(ranks: dict) -> dict:
    """direction -> R@1 of its ranks."""
    return {d: metrics.recall_at_ks(r, (1,))["R@1"] for d, r in ranks.items()}


def fusion_sweep(model, val, k: int, multipliers=FUSION_MULTIPLIERS) -> list[dict]:
    """Validation R@1 both ways for each final score logit + m * itc_weight * stage-1.

    The logit was trained beside stage 1 at m = 1, but how much of stage 1 the final order
    should keep is an empirical question (BLIP fixes it by hand): a noisy logit is diluted
    by a larger m. The logits are computed once; each m only re-sorts them."""
    runtime, _, t2i_map, logits = _validation_pass(model, val, k)
    rows = []
    for m in multipliers:
        weight = m * runtime.config.itc_weight
        r1 = _r1(reranked_ranks(logits, t2i_map, weight))
        rows.append(
            {"multiplier": m, "stage1_weight": weight, "t2i_R@1": r1["t2i"], "i2t_R@1": r1["i2t"]}
        )
    return rows


def best_fusion(rows: list[dict]) -> dict:
    """The row with the best mean R@1 of the two directions; ties go to the m nearest 1."""
    return max(rows, key=lambda r: (r["t2i_R@1"] + r["i2t_R@1"], -abs(np.log(r["multiplier"]))))


def quick_validation(model, val, k: int) -> dict:
    """Re-ranked R@1 both ways and hard-negative accuracy on a validation split."""
    dataset, embeddings, encoder = val
    runtime, scores, t2i_map, logits = _validation_pass(model, val, k)
    weight = runtime.config.stage1_weight
    r1 = _r1(reranked_ranks(logits, t2i_map, weight))
    row = {
        "val_t2i_R@1": r1["t2i"],
        "val_i2t_R@1": r1["i2t"],
        "val_stage1_t2i_R@1": metrics.recall_at_ks(
            metrics.text_to_image_ranks(scores, t2i_map), (1,)
        )["R@1"],
    }
    if dataset.negatives is not None:
        accuracy = negative_accuracy(encoder, dataset, embeddings, runtime, weight)
        row.update({f"val_{kind}": value for kind, value in accuracy.items()})
    return row
