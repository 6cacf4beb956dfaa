"""Hard negatives: each caption's stage-1 look-alike images and each image's look-alike
captions, mined within galleries of about the size stage 2 re-ranks, and each step's batch
drawn from them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Pools:
    t2i: np.ndarray  # (T, M) image ids most similar to each caption, own image excluded
    t2i_sims: np.ndarray
    i2t: np.ndarray  # (N, M) caption ids most similar to each image, own captions excluded
    i2t_sims: np.ndarray


def gallery_blocks(n_images: int, gallery: int) -> list[np.ndarray]:
    """Image ids split into consecutive, near-equal blocks of about `gallery` images."""
    n_blocks = max(1, round(n_images / max(1, gallery)))
    return np.array_split(np.arange(n_images), n_blocks)


def hard_pools(feats, dataset, m: int, gallery: int) -> Pools:
    """Each caption's stage-1 top-m images and each image's top-m captions, searched within
    its gallery (a block of about `gallery` images and their captions), own matches excluded.

    Why galleries: mined from the whole training set, negatives outrank the true item far
    more often than in the gallery stage 2 re-ranks at test time, and the re-ranker learns
    "high stage-1 similarity means negative", which buries right answers (t2i R@1 fell
    below the dual encoder's when mined over 200,000 scenes; see docs/models/xmr-tiny.md).
    ALBEF's in-batch mining has the same effect through its batch size."""
    t2i_map = np.asarray(dataset.text_to_image)
    images, texts = feats.image_vectors, feats.text_vectors
    blocks = gallery_blocks(len(images), gallery)
    m = min(m, min(len(b) for b in blocks) - 1)
    if m < 1:
        raise ValueError("hard negatives need at least two training images")
    t2i = np.empty((len(texts), m), np.int64)
    t2i_s = np.empty((len(texts), m), np.float32)
    i2t = np.empty((len(images), m), np.int64)
    i2t_s = np.empty((len(images), m), np.float32)
    for block in blocks:
        captions = np.flatnonzero((t2i_map >= block[0]) & (t2i_map <= block[-1]))
        ids, sims = _topm(
            texts[captions],
            images[block],
            m,
            own=lambda rows, c=captions, b=block: t2i_map[c[rows]][:, None] == b[None, :],
        )
        t2i[captions], t2i_s[captions] = block[ids], sims
        ids, sims = _topm(
            images[block],
            texts[captions],
            m,
            own=lambda rows, c=captions, b=block: b[rows][:, None] == t2i_map[c][None, :],
        )
        i2t[block], i2t_s[block] = captions[ids], sims
    return Pools(t2i, t2i_s, i2t, i2t_s)


def _topm(queries, items, m, own):
    """Top-m items per query (indices into `items`) by inner product, excluding each query's
    own matches (`own(rows)`: a (len(rows), len(items)) bool mask)."""
    out_ids = np.empty((len(queries), m), dtype=np.int64)
    out_sims = np.empty((len(queries), m), dtype=np.float32)
    for start in range(0, len(queries), 2048):
        rows = np.arange(start, min(start + 2048, len(queries)))
        sims = queries[rows] @ items.T  # (r, n_items)
        sims[own(rows)] = -np.inf
        top = (
            np.argpartition(-sims, m, axis=1)[:, :m]
            if m < sims.shape[1]
            else np.tile(np.arange(sims.shape[1]), (len(rows), 1))
        )
        out_ids[rows] = top
        out_sims[rows] = np.take_along_axis(sims, top, axis=1)
    return out_ids, out_sims


def sample_hard(ids, sims, tau, rng, n: int = 1) -> np.ndarray:
    """ids, sims (B, M) -> (B, n): per row n distinct ids drawn in proportion to
    softmax(similarity / tau) (ALBEF), without replacement.

    Gumbel top-n: adding Gumbel noise to the logits and keeping the n largest draws exactly
    that, for all rows at once."""
    keys = sims / tau + rng.gumbel(size=sims.shape)  # (B, M)
    top = np.argpartition(-keys, n - 1, axis=1)[:, :n]  # (B, n); n > M is an error
    return np.take_along_axis(ids, top, axis=1)


@dataclass
class Batch:
    images: np.ndarray  # (B,) the batch's images
    captions: np.ndarray  # (B,) one true caption of each
    hard_images: np.ndarray  # (B, H) stage-1 look-alikes of each caption's image
    hard_captions: np.ndarray  # (B, H) stage-1 look-alike captions of each image
    random_images: np.ndarray  # (B, R) other batch rows: easy negatives


def draw_batch(train, pools: Pools, config, rng) -> Batch:
    """B distinct images, one caption of each, and their hard and easy negatives."""
    b, h = config.batch_size, config.hard_negatives
    images = rng.choice(len(train.image_paths), b, replace=False)
    captions = np.array([rng.choice(train.image_to_texts[i]) for i in images])
    hard_images = sample_hard(pools.t2i[captions], pools.t2i_sims[captions], config.tau, rng, h)
    hard_captions = sample_hard(pools.i2t[images], pools.i2t_sims[images], config.tau, rng, h)
    shift = rng.integers(1, b, size=(b, config.random_negatives))
    random_images = (np.arange(b)[:, None] + shift) % b  # rows of the batch, never itself
    return Batch(images, captions, hard_images, hard_captions, random_images)
