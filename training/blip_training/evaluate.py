"""Stage 1 + the matcher over a whole split: every query's stage-1 top K re-scored by the
ITM match logit, both directions, and the final order by the engine's one fusion formula
(`retrieval.reranker.fused_score`: logit + weight x stage-1 cosine), through
`evaluation.rerank_eval.reranked_ranks`. Used by validation (and its choice of weight)
and by benchmarks/train_blip_tiny.py."""

from __future__ import annotations

import numpy as np

from xmr.evaluation import metrics

# Stage-1 weights tried when fusing: the match logit spans a few units, the cosine gaps
# between look-alikes hundredths, so useful weights run from 0 (logit alone) to large.
FUSION_WEIGHTS = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0)
PAIR_CHUNK = 512  # pairs per ITM call: bounds the (chunk, L + patches, D) activations


def match_logits(model, split, k: int, image_source=None, device: str = "cpu"):
    """Stage-1 top-k both ways and the match logit of every (query, candidate) pair:
    {"t2i": (cands (T, k), stage1 (T, k), logits (T, k)), "i2t": (cands (N, k), ...)}.

    image_source: (N,) for the shuffled control, the image whose vision tokens stand in
    for each image id (stage 1 is left as it is); None: each image's own."""
    import torch

    from xmr.retrieval.reranker import autocast
    from xmr.training.blip_training.itm import MATCH, itm_logits, vision_states

    scores = split.stage1  # (T, N)
    n = scores.shape[1]
    source = np.arange(n) if image_source is None else np.asarray(image_source)
    out = {}
    with torch.no_grad(), autocast(device):
        states = torch.cat(
            [
                vision_states(model, split.pixels[a : a + 256].to(device).float())
                for a in range(0, n, 256)
            ]
        )[torch.as_tensor(source, device=device)]  # (N, 1 + patches, Dv)

        def score(texts: np.ndarray, images: np.ndarray) -> np.ndarray:
            logits = []
            for a in range(0, len(texts), PAIR_CHUNK):
                t = torch.as_tensor(texts[a : a + PAIR_CHUNK], device=device)
                i = torch.as_tensor(images[a : a + PAIR_CHUNK], device=device)
                pair = itm_logits(
                    model, split.input_ids[t], split.lengths[t], states, i, split.itm_first_token
                )
                logits.append(pair[:, MATCH].float().cpu().numpy())
            return np.concatenate(logits)

        cands = metrics.stable_top_k(scores, min(k, n))  # (T, k) images
        texts = np.repeat(np.arange(len(cands)), cands.shape[1])
        logits = score(texts, cands.ravel()).reshape(cands.shape)
        out["t2i"] = (cands, np.take_along_axis(scores, cands, 1), logits)

        cands = metrics.stable_top_k(scores.T, min(k, scores.shape[0]))  # (N, k) captions
        images = np.repeat(np.arange(len(cands)), cands.shape[1])
        logits = score(cands.ravel(), images).reshape(cands.shape)
        out["i2t"] = (cands, np.take_along_axis(scores.T, cands, 1), logits)
    return out


def recall_rows(split, logits_by_direction, weights=FUSION_WEIGHTS) -> dict:
    """R@1/5/10 both ways of stage 1 and of the fused order at each weight:
    {"stage1": {"t2i": {...}, "i2t": {...}}, "fused": [{"weight", "t2i", "i2t"}, ...]}."""
    from xmr.evaluation.rerank_eval import reranked_ranks

    t2i_map = np.asarray(split.dataset.text_to_image)
    scores = split.stage1
    stage1 = {
        "t2i": metrics.recall_at_ks(metrics.text_to_image_ranks(scores, t2i_map)),
        "i2t": metrics.recall_at_ks(metrics.image_to_text_ranks(scores.T, t2i_map)),
    }
    fused = []
    for weight in weights:
        ranks = reranked_ranks(logits_by_direction, t2i_map, weight)
        fused.append({"weight": weight, **{d: metrics.recall_at_ks(r) for d, r in ranks.items()}})
    return {"stage1": stage1, "fused": fused}


def best_weight(rows: dict) -> dict:
    """The fused row with the best mean R@1 of the two directions (ties: the larger
    weight, the one nearer stage 1)."""
    return max(rows["fused"], key=lambda r: (r["t2i"]["R@1"] + r["i2t"]["R@1"], r["weight"]))
