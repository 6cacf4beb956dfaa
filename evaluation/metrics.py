"""Retrieval metrics: recall@k as the CLIP paper and LAION CLIP_benchmark define it.

Both directions use one caption-to-image map, ``text_to_image`` (shape ``(n_texts,)``, int): caption
``t`` describes image ``text_to_image[t]``. Every image has at least one caption, and images may
have different numbers of captions.

* text -> image: each caption is a query; it is a hit at k when ITS image is in the top k
  images. Recall is averaged over captions.
* image -> text: each image is a query; it is a hit at k when ANY of its captions is in the top
  k texts. Recall is averaged over images.

Recall is reported in percent (0-100) as ``{"R@1": ..., "R@5": ..., "R@10": ...}``.

Ranks are 0-based: rank 0 is the top result, and a query is a hit at k when ``rank < k``.

Tie rule (deterministic; every function here follows it): items are ordered by a stable
descending sort of their scores, i.e. by (score descending, item index ascending). The rank of
an item is therefore::

    #(items with a strictly higher score) + #(items with an equal score and a lower index)

For image -> text the query's rank is the rank of its best-placed caption in that order (the
number of other texts ahead of its first caption). Scores must not be NaN.

Dense scores are never argsorted: each correct item's rank is found by counting, over chunks of
query rows, so memory stays bounded (COCO 5k test: 25k captions x 5k images).

Ranked-list inputs (top-K candidates, e.g. after re-ranking) are handled by
``text_to_image_ranks_from_lists`` / ``image_to_text_ranks_from_lists``: a query whose correct
item is not in its list gets rank ``MISS_RANK``, a miss at every k. ``rerank_ceiling`` states the
consequence: re-ranking stage-1's top K can never beat stage-1 recall@K.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)

# Rank given to a query whose correct item is absent from its ranked list: a miss at every k.
MISS_RANK: int = int(np.iinfo(np.int64).max)

# Rough upper bound on score-matrix elements handled per chunk (each temporary is this many bools).
_CHUNK_ELEMENTS = 1 << 22


# ---------------------------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------------------------


def _as_text_to_image(text_to_image: np.ndarray, n_images: int | None = None) -> np.ndarray:
    """Validate the caption -> image map; returns it as int64 of shape (n_texts,)."""
    t2i = np.asarray(text_to_image)
    if t2i.ndim != 1:
        raise ValueError(f"text_to_image must be 1-D (n_texts,), got shape {t2i.shape}")
    if t2i.size and not np.issubdtype(t2i.dtype, np.integer):
        raise ValueError(f"text_to_image must hold integer image indices, got dtype {t2i.dtype}")
    t2i = t2i.astype(np.int64, copy=False)
    if t2i.size and t2i.min() < 0:
        raise ValueError("text_to_image holds a negative image index")
    if n_images is not None and t2i.size and t2i.max() >= n_images:
        raise ValueError(
            f"text_to_image refers to image {int(t2i.max())} but there are only {n_images} images"
        )
    return t2i


def _check_every_image_has_a_caption(t2i: np.ndarray, n_images: int) -> None:
    counts = np.bincount(t2i, minlength=n_images)
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        raise ValueError(
            f"{missing.size} image(s) have no caption in text_to_image (first: image "
            f"{int(missing[0])}); image->text recall needs at least one caption per image"
        )


def _as_scores(scores: np.ndarray, n_rows: int, what: str) -> np.ndarray:
    """Validate a (n_rows, n_cols) real score matrix with n_rows, n_cols >= 1."""
    s = np.asarray(scores)
    if s.ndim != 2 or s.shape[0] != n_rows or s.shape[1] == 0 or n_rows == 0:
        raise ValueError(f"{what} must have shape ({n_rows}, n >= 1), got {s.shape}")
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise ValueError(f"{what} must be a real-valued array, got dtype {s.dtype}")
    return s


def _check_no_nan(chunk: np.ndarray, first_row: int, what: str) -> None:
    if np.issubdtype(chunk.dtype, np.floating):
        bad = np.isnan(chunk).any(axis=1)
        if bad.any():
            raise ValueError(f"{what} row {first_row + int(np.argmax(bad))} contains NaN")


def _rows_per_chunk(n_cols: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return chunk_size
    return max(1, _CHUNK_ELEMENTS // max(n_cols, 1))


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    out = tuple(int(k) for k in ks)
    if not out or any(k < 1 for k in out):
        raise ValueError(f"ks must be a non-empty list of positive integers, got {out}")
    return out


# ---------------------------------------------------------------------------------------------
# Ranks from dense score matrices
# ---------------------------------------------------------------------------------------------


def text_to_image_ranks(
    scores_t2i: np.ndarray, text_to_image: np.ndarray, *, chunk_size: int | None = None
) -> np.ndarray:
    """0-based rank of each caption's own image among all images (tie rule: module docstring).

    scores_t2i: (n_texts, n_images), higher = better. text_to_image: (n_texts,) int.
    Returns (n_texts,) int64.
    """
    t2i = _as_text_to_image(text_to_image)
    n_texts = t2i.shape[0]
    s = _as_scores(scores_t2i, n_texts, "scores_t2i")  # (n_texts, n_images)
    n_images = s.shape[1]
    _as_text_to_image(t2i, n_images)

    ranks = np.empty(n_texts, dtype=np.int64)
    col = np.arange(n_images)  # (n_images,)
    step = _rows_per_chunk(n_images, chunk_size)
    for a in range(0, n_texts, step):
        b = min(a + step, n_texts)
        chunk = np.ascontiguousarray(s[a:b])  # (m, n_images)
        _check_no_nan(chunk, a, "scores_t2i")
        target = t2i[a:b]  # (m,)
        correct = chunk[np.arange(b - a), target][:, None]  # (m, 1)
        higher = (chunk > correct).sum(axis=1)  # (m,)
        tied_before = ((chunk == correct) & (col[None, :] < target[:, None])).sum(axis=1)
        ranks[a:b] = higher + tied_before
    return ranks


def image_to_text_ranks(
    scores_i2t: np.ndarray, text_to_image: np.ndarray, *, chunk_size: int | None = None
) -> np.ndarray:
    """0-based rank of each image's best-placed caption among all texts (tie rule: module doc).

    scores_i2t: (n_images, n_texts), higher = better; pass ``scores_t2i.T`` for symmetric
    (e.g. cosine) scores. text_to_image: (n_texts,) int. Returns (n_images,) int64.

    The best-placed caption is the one with the highest score, the lowest index among equal
    scores; its rank counts the texts ahead of it: strictly higher score, or equal score and a
    lower index. This equals min over the image's captions of their individual ranks.
    """
    t2i = _as_text_to_image(text_to_image)
    n_texts = t2i.shape[0]
    s = np.asarray(scores_i2t)
    if s.ndim != 2 or s.shape[1] != n_texts:
        raise ValueError(f"scores_i2t must have shape (n_images, {n_texts}), got {s.shape}")
    n_images = s.shape[0]
    s = _as_scores(s, n_images, "scores_i2t")
    _as_text_to_image(t2i, n_images)
    _check_every_image_has_a_caption(t2i, n_images)

    # Captions of each image, padded by repeating the image's first caption (harmless for a max).
    order = np.argsort(t2i, kind="stable")  # caption indices grouped by image, ascending
    counts = np.bincount(t2i, minlength=n_images)  # (n_images,)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))  # (n_images,)
    width = int(counts.max()) if n_images else 0
    offs = np.minimum(np.arange(width)[None, :], counts[:, None] - 1)  # (n_images, width)
    caption_idx = order[starts[:, None] + offs]  # (n_images, width)

    ranks = np.empty(n_images, dtype=np.int64)
    col = np.arange(n_texts)  # (n_texts,)
    big = np.int64(n_texts)
    step = _rows_per_chunk(n_texts, chunk_size)
    for a in range(0, n_images, step):
        b = min(a + step, n_images)
        chunk = np.ascontiguousarray(s[a:b])  # (m, n_texts); copy: s may be a transposed view
        _check_no_nan(chunk, a, "scores_i2t")
        caps = caption_idx[a:b]  # (m, width)
        cap_scores = chunk[np.arange(b - a)[:, None], caps]  # (m, width)
        best = cap_scores.max(axis=1)  # (m,)
        best_idx = np.where(cap_scores == best[:, None], caps, big).min(axis=1)  # (m,)
        higher = (chunk > best[:, None]).sum(axis=1)
        tied_before = ((chunk == best[:, None]) & (col[None, :] < best_idx[:, None])).sum(axis=1)
        ranks[a:b] = higher + tied_before
    return ranks


# ---------------------------------------------------------------------------------------------
# Recall from ranks and from dense scores
# ---------------------------------------------------------------------------------------------


def recall_at_ks(ranks: np.ndarray, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Percent of queries with ``rank < k`` for each k: ``{"R@1": ..., ...}``.

    ranks: (n_queries,) 0-based ranks; ``MISS_RANK`` marks a query whose item was not returned.
    """
    ks = _check_ks(ks)
    r = np.asarray(ranks)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array, got shape {r.shape}")
    return {f"R@{k}": float(100.0 * np.mean(r < k)) for k in ks}


def text_to_image_recall(
    scores_t2i: np.ndarray,
    text_to_image: np.ndarray,
    ks: Iterable[int] = DEFAULT_KS,
    *,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Text -> image recall@k in percent, averaged over captions.

    scores_t2i: (n_texts, n_images). text_to_image: (n_texts,) int.
    """
    return recall_at_ks(text_to_image_ranks(scores_t2i, text_to_image, chunk_size=chunk_size), ks)


def image_to_text_recall(
    scores_i2t: np.ndarray,
    text_to_image: np.ndarray,
    ks: Iterable[int] = DEFAULT_KS,
    *,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Image -> text recall@k in percent, averaged over images (hit: any caption in top k).

    scores_i2t: (n_images, n_texts). text_to_image: (n_texts,) int.
    """
    return recall_at_ks(image_to_text_ranks(scores_i2t, text_to_image, chunk_size=chunk_size), ks)


def retrieval_recall(
    scores_t2i: np.ndarray,
    text_to_image: np.ndarray,
    ks: Iterable[int] = DEFAULT_KS,
    *,
    scores_i2t: np.ndarray | None = None,
    chunk_size: int | None = None,
) -> dict[str, dict[str, float]]:
    """Both directions: ``{"text_to_image": {"R@1": ...}, "image_to_text": {...}}``.

    scores_t2i: (n_texts, n_images). scores_i2t: (n_images, n_texts); defaults to
    ``scores_t2i.T`` (right for symmetric similarities such as CLIP cosine scores; pass it
    explicitly for asymmetric scorers such as cross-attention re-rankers).
    """
    s_t2i = np.asarray(scores_t2i)
    s_i2t = s_t2i.T if scores_i2t is None else np.asarray(scores_i2t)
    return {
        "text_to_image": text_to_image_recall(s_t2i, text_to_image, ks, chunk_size=chunk_size),
        "image_to_text": image_to_text_recall(s_i2t, text_to_image, ks, chunk_size=chunk_size),
    }


# ---------------------------------------------------------------------------------------------
# Ranked candidate lists (top-K outputs, re-ranked outputs)
# ---------------------------------------------------------------------------------------------


def stable_top_k(scores: np.ndarray, k: int, *, chunk_size: int | None = None) -> np.ndarray:
    """Indices of the top ``k`` items per query row, ordered by the module's tie rule.

    scores: (n_queries, n_items). Returns (n_queries, min(k, n_items)) int64. Feeding the result
    to the ``*_ranks_from_lists`` functions reproduces the dense ranks for every rank < k.
    """
    s = np.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D (n_queries, n_items), got shape {s.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_q, n_items = s.shape
    k = min(k, n_items)
    out = np.empty((n_q, k), dtype=np.int64)
    step = _rows_per_chunk(n_items, chunk_size)
    for a in range(0, n_q, step):
        chunk = s[a : a + step]
        _check_no_nan(chunk, a, "scores")
        # Stable argsort of the negated scores = descending score, ascending index among ties.
        out[a : a + step] = np.argsort(-chunk, axis=1, kind="stable")[:, :k]
    return out


def _pad_lists(ranked: np.ndarray | Sequence[Sequence[int]], what: str) -> np.ndarray:
    """Ranked lists -> (n_queries, K) int64 array padded with -1."""
    if isinstance(ranked, np.ndarray) and ranked.ndim == 2:
        if ranked.size and not np.issubdtype(ranked.dtype, np.integer):
            raise ValueError(f"{what} must hold integer indices, got dtype {ranked.dtype}")
        return ranked.astype(np.int64, copy=False)
    rows = [np.asarray(r) for r in ranked]
    for q, r in enumerate(rows):
        if r.ndim != 1 or (r.size and not np.issubdtype(r.dtype, np.integer)):
            raise ValueError(f"{what}[{q}] must be a 1-D array of integer indices")
    width = max((r.size for r in rows), default=0)
    out = np.full((len(rows), width), -1, dtype=np.int64)
    for q, r in enumerate(rows):
        out[q, : r.size] = r
    return out


def _check_lists(lists: np.ndarray, n_items: int | None, what: str) -> None:
    if lists.size == 0:
        return
    if lists.min() < -1:
        raise ValueError(f"{what} holds an index below -1 (only -1 may be used as padding)")
    if n_items is not None and lists.max() >= n_items:
        raise ValueError(f"{what} refers to item {int(lists.max())}; there are only {n_items}")
    srt = np.sort(lists, axis=1)
    dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)  # (n_queries, K-1)
    if dup.any():
        q = int(np.flatnonzero(dup.any(axis=1))[0])
        raise ValueError(f"{what}[{q}] lists the same item twice; a ranked list must be unique")


def _ranks_from_hits(lists: np.ndarray, hits: np.ndarray) -> np.ndarray:
    """Rank = number of real (non -1) entries before the first hit; MISS_RANK if none."""
    valid = lists >= 0  # (n_queries, K)
    hits = hits & valid
    ranks = np.full(lists.shape[0], MISS_RANK, dtype=np.int64)
    found = hits.any(axis=1)
    if found.any():
        first = np.argmax(hits[found], axis=1)  # position of the first hit in the padded row
        before = np.cumsum(valid[found], axis=1) - valid[found]  # real entries before each slot
        ranks[found] = before[np.arange(first.size), first]
    return ranks


def text_to_image_ranks_from_lists(
    ranked_images: np.ndarray | Sequence[Sequence[int]], text_to_image: np.ndarray
) -> np.ndarray:
    """Rank of each caption's image in its returned list; ``MISS_RANK`` when it is absent.

    ranked_images: per caption, image indices best first, shape (n_texts, K) padded with -1,
    or a sequence of n_texts 1-D arrays of any lengths. -1 entries are skipped (the rank counts
    only real entries). text_to_image: (n_texts,) int. Returns (n_texts,) int64.
    """
    t2i = _as_text_to_image(text_to_image)
    lists = _pad_lists(ranked_images, "ranked_images")
    if lists.shape[0] != t2i.shape[0]:
        raise ValueError(f"ranked_images has {lists.shape[0]} lists for {t2i.shape[0]} captions")
    _check_lists(lists, None, "ranked_images")
    return _ranks_from_hits(lists, lists == t2i[:, None])


def image_to_text_ranks_from_lists(
    ranked_texts: np.ndarray | Sequence[Sequence[int]], text_to_image: np.ndarray
) -> np.ndarray:
    """Rank of each image's first caption in its returned list; ``MISS_RANK`` when none is there.

    ranked_texts: per image (one list per image, so n_images = its length), text indices best
    first, shape (n_images, K) padded with -1, or a sequence of 1-D arrays. text_to_image:
    (n_texts,) int. Returns (n_images,) int64.
    """
    lists = _pad_lists(ranked_texts, "ranked_texts")
    n_images = lists.shape[0]
    t2i = _as_text_to_image(text_to_image, n_images)
    _check_every_image_has_a_caption(t2i, n_images)
    _check_lists(lists, t2i.shape[0], "ranked_texts")
    owner = t2i[np.where(lists >= 0, lists, 0)]  # (n_images, K): image of each listed text
    return _ranks_from_hits(lists, owner == np.arange(n_images)[:, None])


def text_to_image_recall_from_lists(
    ranked_images: np.ndarray | Sequence[Sequence[int]],
    text_to_image: np.ndarray,
    ks: Iterable[int] = DEFAULT_KS,
) -> dict[str, float]:
    """Text -> image recall@k (percent) from per-caption ranked image lists (absent = miss)."""
    return recall_at_ks(text_to_image_ranks_from_lists(ranked_images, text_to_image), ks)


def image_to_text_recall_from_lists(
    ranked_texts: np.ndarray | Sequence[Sequence[int]],
    text_to_image: np.ndarray,
    ks: Iterable[int] = DEFAULT_KS,
) -> dict[str, float]:
    """Image -> text recall@k (percent) from per-image ranked text lists (absent = miss)."""
    return recall_at_ks(image_to_text_ranks_from_lists(ranked_texts, text_to_image), ks)


def rerank_ceiling(stage1_ranks: np.ndarray, candidate_k: int) -> float:
    """Highest recall (percent) that re-ranking stage 1's top ``candidate_k`` can ever reach.

    A re-ranker only reorders the ``candidate_k`` candidates stage 1 returned, so a query whose
    correct item ranked >= candidate_k in stage 1 is a miss at every k after re-ranking. Hence,
    for every k::

        stage-2 R@k  <=  stage-1 R@candidate_k  ==  rerank_ceiling(stage1_ranks, candidate_k)

    (and for k >= candidate_k stage-2 R@k equals it exactly). stage1_ranks: (n_queries,) from
    ``text_to_image_ranks`` / ``image_to_text_ranks`` (or their ``*_from_lists`` forms).
    """
    if candidate_k < 1:
        raise ValueError(f"candidate_k must be >= 1, got {candidate_k}")
    return recall_at_ks(stage1_ranks, (candidate_k,))[f"R@{candidate_k}"]


# ---------------------------------------------------------------------------------------------
# Hard negatives (ARO-style probes)
# ---------------------------------------------------------------------------------------------


def hard_negative_accuracy(pos_scores: np.ndarray, neg_scores: np.ndarray) -> float:
    """Percent of pairs where the true caption scores STRICTLY higher than its negative.

    pos_scores, neg_scores: (n_pairs,), element i of each scored against the same image.
    A tie counts as a failure.
    """
    pos = np.asarray(pos_scores, dtype=np.float64)
    neg = np.asarray(neg_scores, dtype=np.float64)
    if pos.ndim != 1 or pos.shape != neg.shape or pos.size == 0:
        raise ValueError(
            f"pos_scores and neg_scores must be non-empty 1-D arrays of one shape, "
            f"got {pos.shape} and {neg.shape}"
        )
    if np.isnan(pos).any() or np.isnan(neg).any():
        raise ValueError("pos_scores / neg_scores contain NaN")
    return float(100.0 * np.mean(pos > neg))
