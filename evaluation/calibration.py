"""Fit the score calibration (retrieval/calibration.py) of an encoder and its re-ranker on
a validation split: every query's stage-1 top K, both directions, labelled match or not.

The pairs are the ones a search shows (a query's nearest candidates), so the probability
is calibrated where it is read, not over easy random pairs. Used by re-ranker training
(after the stage-1 weight is chosen) and by benchmarks/calibrate_scores.py for the
shipped model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xmr.evaluation.rerank_eval import rerank_logits
from xmr.retrieval.calibration import Logistic, fit_logistic
from xmr.retrieval.fusion import fused_score


@dataclass
class CandidatePairs:
    """Every (query, candidate) pair of a split's stage-1 top K, both directions."""

    stage1: np.ndarray  # (P,) cosines
    logits: np.ndarray  # (P,) re-ranker logits
    match: np.ndarray  # (P,) bool: the candidate is the query's own image / caption


def candidate_pairs(runtime, dataset, embeddings, k: int) -> CandidatePairs:
    """The top-`k` stage-1 candidates of each caption (-> images) and each image
    (-> captions) of `dataset`, their cosines, the re-ranker's logits and labels."""
    scores = embeddings.text_vectors @ embeddings.image_vectors.T  # (T, N)
    t2i = np.asarray(dataset.text_to_image)  # (T,)
    out, _ = rerank_logits(runtime, embeddings, scores, k)
    cands, stage1_t, logits_t = out["t2i"]  # (T, K) each
    match_t = cands == t2i[:, None]
    cands, stage1_i, logits_i = out["i2t"]  # (N, K) each: texts per image
    match_i = t2i[cands] == np.arange(len(cands))[:, None]
    return CandidatePairs(
        np.concatenate([stage1_t.ravel(), stage1_i.ravel()]).astype(np.float64),
        np.concatenate([logits_t.ravel(), logits_i.ravel()]).astype(np.float64),
        np.concatenate([match_t.ravel(), match_i.ravel()]),
    )


def fit_score_calibration(pairs: CandidatePairs, stage1_weight: float) -> dict:
    """The two fits and how well they do on the pairs they came from:
    {"stage1": Logistic, "rerank": Logistic, "report": {...}}."""
    fused = fused_score(pairs.logits, pairs.stage1, stage1_weight)
    y = pairs.match.astype(np.float64)
    stage1 = fit_logistic(pairs.stage1, y)
    rerank = fit_logistic(fused, y)
    report = {
        "pairs": int(len(y)),
        "matches": int(y.sum()),
        "stage1": reliability(stage1(pairs.stage1), pairs.match),
        "rerank": reliability(rerank(fused), pairs.match),
    }
    return {"stage1": stage1, "rerank": rerank, "report": report}


def reliability(p: np.ndarray, match: np.ndarray, bins: int = 10) -> dict:
    """How well probabilities `p` match the labels: expected calibration error (the mean
    gap between predicted and observed match rate, over `bins` equal-width bins, weighted
    by count), Brier score, the mean p of matches and of non-matches, and the bins."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(match, dtype=np.float64)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        if not inside.any():
            continue
        predicted, observed = float(p[inside].mean()), float(y[inside].mean())
        ece += inside.mean() * abs(predicted - observed)
        rows.append({"bin": [round(edges[b], 2), round(edges[b + 1], 2)],
                     "n": int(inside.sum()), "predicted": round(predicted, 4),
                     "observed": round(observed, 4)})  # fmt: skip
    return {
        "ece": round(float(ece), 4),
        "brier": round(float(np.mean((p - y) ** 2)), 4),
        "mean_p_match": round(float(p[y == 1].mean()), 4) if y.any() else None,
        "mean_p_other": round(float(p[y == 0].mean()), 4) if (y == 0).any() else None,
        "bins": rows,
    }


def as_entry(fit: Logistic) -> dict:
    return {"slope": fit.slope, "intercept": fit.intercept}
