"""ARO-style hard negatives: each edited caption paired with the image and caption it came
from, shared by the dual-encoder probe (bench.py) and the re-ranker's (rerank_eval.py)."""

from __future__ import annotations


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


def _overlap(words: set[str], caption: str) -> float:
    other = set(caption.lower().split())
    return len(words & other) / max(1, len(words | other))
