"""ARO-style hard negatives: is the true caption scored above its minimal edit?

Shared by the dual-encoder rows of `xmr bench` (bench.py) and the re-ranker's rows and
validation (rerank_eval.py).
"""

from __future__ import annotations

import numpy as np

from xmr.evaluation import metrics


def negative_pairs(dataset) -> dict[str, list[tuple[int, int, str]]]:
    """kind -> [(image index, index of the true caption it perturbs, negative text)].

    The positive is the image's caption closest in words to the negative (the one it was
    made from, for ARO-style edits), so the probe isolates the edit itself.
    """
    pairs: dict[str, list] = {}
    for image, negatives in enumerate(dataset.negatives or []):
        for kind, negative in negatives.items():
            words = set(negative.lower().split())
            candidates = dataset.image_to_texts[image]
            best = max(candidates, key=lambda c: _overlap(words, dataset.captions[c]))
            pairs.setdefault(kind, []).append((image, best, negative))
    return pairs


def negative_accuracy(
    encoder, dataset, embeddings, runtime=None, stage1_weight: float = 1.0
) -> dict[str, float]:
    """kind -> % of (image, true caption, its edit) where the true caption scores higher.

    Without `runtime` the score is the dual encoder's cosine; with a re-ranker runtime it is
    the fused final score (retrieval.reranker.fused_score) at `stage1_weight`.
    """
    scores = negative_scores(encoder, dataset, embeddings, runtime, stage1_weight)
    return {
        kind: round(metrics.hard_negative_accuracy(pos, neg), 2)
        for kind, (pos, neg) in scores.items()
    }


def negative_scores(
    encoder, dataset, embeddings, runtime=None, stage1_weight: float = 1.0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """kind -> (true caption's scores (P,), its edit's (P,)), pair by pair in
    negative_pairs' order; scored as negative_accuracy says."""
    out = {}
    for kind, pairs in negative_pairs(dataset).items():
        images = np.array([i for i, _, _ in pairs])
        positives = np.array([c for _, c, _ in pairs])
        negatives = encoder.encode_texts([neg for _, _, neg in pairs])
        image_vectors = embeddings.image_vectors[images]  # (P, D)
        pos = (image_vectors * embeddings.text_vectors[positives]).sum(1)  # (P,) cosines
        neg = (image_vectors * negatives.vectors).sum(1)
        if runtime is not None:
            from xmr.retrieval.reranker import fused_score

            states = runtime.image_states(embeddings.image_tokens[images])
            rows = np.arange(len(pairs))
            pos_logits = runtime.score_pairs(
                embeddings.text_tokens[positives], embeddings.text_lengths[positives], states, rows
            )
            neg_logits = runtime.score_pairs(negatives.tokens, negatives.lengths, states, rows)
            pos = fused_score(pos_logits, pos, stage1_weight)
            neg = fused_score(neg_logits, neg, stage1_weight)
        out[kind] = (pos, neg)
    return out


def _overlap(words: set[str], caption: str) -> float:
    other = set(caption.lower().split())
    return len(words & other) / max(1, len(words | other))
