"""Stage 2 with a pretrained matcher (BLIP ITM) over a whole evaluation set, for `xmr bench`.

Every image's vision tokens are computed once (from its file, at the matcher's own
resolution); each text's K stage-1 candidate images and each image's K candidate texts
are then scored by the ITM head, and the fused score is swept over stage-1 weights so a
user sees which weight wins on their own data.
"""

from __future__ import annotations

import time

import numpy as np

from xmr.evaluation import metrics
from xmr.evaluation.rerank_eval import reranked_ranks

# Stage-1 weights tried: 0 (ITM alone) up to trusting stage 1 a lot; 1.0 is BLIP's own.
WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)


def vision_tokens(matcher, dataset) -> np.ndarray:
    """(N, V_n, V) float32: each image's vision tokens; an unreadable file raises."""
    import torch

    from xmr.retrieval.imageio import decode_image

    out = np.zeros((dataset.n_images, *matcher.feature_shape), np.float32)
    step = matcher.settings.vision_batch
    for start in range(0, dataset.n_images, step):
        paths = dataset.image_paths[start : start + step]
        pixels = torch.stack([decode_image(str(p), matcher.preprocess)[0] for p in paths])
        out[start : start + len(paths)] = matcher.vision_features(pixels)
    return out


def blip_logits(matcher, dataset, scores: np.ndarray, k: int):
    """Like rerank_eval.rerank_logits: direction -> (cands (Q, K), stage1 (Q, K),
    logits (Q, K)), and stage 2's milliseconds per query (vision pass included)."""
    started = time.monotonic()
    vision = vision_tokens(matcher, dataset)  # every image once
    out = {}
    cands = metrics.stable_top_k(scores, min(k, scores.shape[1]))  # (T, K) images
    pairs = zip(dataset.captions, cands, strict=True)
    logits = np.stack([matcher.match_images(text, vision[row]) for text, row in pairs])
    out["t2i"] = (cands, np.take_along_axis(scores, cands, 1), logits)
    cands = metrics.stable_top_k(scores.T, min(k, scores.shape[0]))  # (N, K) texts
    logits = np.stack(
        [matcher.match_texts(vision[i], [dataset.captions[t] for t in row])
         for i, row in enumerate(cands)]
    )  # fmt: skip
    out["i2t"] = (cands, np.take_along_axis(scores.T, cands, 1), logits)
    ms = (time.monotonic() - started) * 1000 / (scores.shape[0] + scores.shape[1])
    return out, ms


def blip_stages(matcher, dataset, scores: np.ndarray, k: int):
    """-> (ranks by stage, the weight sweep rows, the winning weight, ms per query).
    Stages: "rerank" at the matcher's weight, "rerank_itm" (ITM alone)."""
    t2i = np.asarray(dataset.text_to_image)
    logits, ms = blip_logits(matcher, dataset, scores, k)
    weight = matcher.settings.stage1_weight
    ranks = {
        "rerank": reranked_ranks(logits, t2i, weight),
        "rerank_itm": reranked_ranks(logits, t2i, 0.0),
    }
    sweep = []
    for w in sorted(set(WEIGHTS) | {weight}):
        r1 = {
            d: metrics.recall_at_ks(r, (1,))["R@1"]
            for d, r in reranked_ranks(logits, t2i, w).items()
        }
        sweep.append({"stage1_weight": w, "t2i_R@1": r1["t2i"], "i2t_R@1": r1["i2t"]})
    best = max(sweep, key=lambda r: (r["t2i_R@1"] + r["i2t_R@1"], -abs(r["stage1_weight"] - 1)))
    return ranks, sweep, best["stage1_weight"], ms
