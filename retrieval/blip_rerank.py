"""BLIP ITM behind the searcher's re-ranker interface (matching.py).

text -> image: the query text against the K candidate images' vision tokens, read from the
index where it keeps them (matcher_features.py), else computed from the files in one
batched vision pass and cached (matcher_cache.py).
image -> text: the query image's vision tokens, computed (or read) once, against the K
candidate texts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np

from xmr.retrieval.imageio import DecodeError, decode_image
from xmr.retrieval.matcher_cache import DEFAULT_CACHE_BYTES, FeatureDiskCache, cache_key
from xmr.retrieval.matcher_features import content_key
from xmr.retrieval.matching import Scored

if TYPE_CHECKING:
    from xmr.retrieval.blip_itm import BlipMatcher
    from xmr.retrieval.library import Collection, Library
    from xmr.retrieval.searcher import Query


@dataclass
class _Images:
    """K candidate images: kept vision tokens where the index has them, else their files."""

    ids: np.ndarray  # (K,)
    paths: list[str | None]
    hashes: list[str | None]
    vision: np.ndarray  # (K, N, V) float32, zeros where not found
    found: np.ndarray  # (K,) bool
    index_dir: object


@dataclass
class _Texts:
    """K candidate texts and, when the index keeps it, the query image's vision tokens."""

    texts: list[str]
    query_vision: np.ndarray | None  # (N, V)
    query_key: tuple[int, str | None] | None  # (id, content hash) of an indexed query image
    index_dir: object


class BlipReranker:
    family = "blip-itm"

    def __init__(self, matcher: BlipMatcher, cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.matcher = matcher  # blip_itm.BlipMatcher
        self.name = matcher.name
        self.fingerprint = matcher.fingerprint
        self.cache_bytes = cache_bytes

    @property
    def feature_shape(self) -> tuple[int, int]:
        return self.matcher.feature_shape

    def probability(self, final: np.ndarray) -> np.ndarray:
        """Final scores -> calibrated probabilities of a match (calibration.py): the fit
        kept in the matcher's folder, else the fused score read as log-odds."""
        from xmr.retrieval.calibration import rerank_probability

        return rerank_probability(final, getattr(self.matcher, "calibration", None))

    def reads(self, query: Query, collection: Collection) -> bool:
        if collection.name == "images":
            return query.kind == "text" and bool(query.text)
        return query.kind == "image" and query.image is not None

    # -- under the index's lock: copies of what the stores and the database hold ----------
    def candidate_inputs(
        self, library: Library, query: Query, collection: Collection, ids: np.ndarray
    ) -> _Images | _Texts:
        ids = np.asarray(ids, dtype=np.int64)
        kept = getattr(library.images, "kept", None)
        kept = kept if kept is not None and kept.serves(self) else None
        if collection.name == "images":
            rows = library.db.rows_by_ids("images", ids.tolist())
            paths = [rows[int(i)].path if int(i) in rows else None for i in ids]
            hashes = [rows[int(i)].content_hash if int(i) in rows else None for i in ids]
            keys = np.array([content_key(h) for h in hashes], dtype=np.int64)
            if kept is not None:
                vision, found = kept.read(ids, keys)
            else:
                vision = np.zeros((len(ids), *self.feature_shape), np.float32)
                found = np.zeros(len(ids), dtype=bool)
            return _Images(ids, paths, hashes, vision, found, library.directory)
        by_id = library.db.rows_by_ids("texts", ids.tolist())
        texts = [by_id[int(i)].text if int(i) in by_id else "" for i in ids]
        query_vision, query_key = None, None
        if query.image_id is not None:  # an indexed image, as it was indexed
            image_id = int(query.image_id)
            row = library.db.image_row(image_id)
            if row is not None:
                if isinstance(query.image, str):  # a file: the search-time cache applies
                    query_key = (image_id, row.content_hash)
                if kept is not None:
                    one = np.array([image_id])
                    vision, found = kept.read(one, np.array([content_key(row.content_hash)]))
                    query_vision = vision[0] if found[0] else None
        return _Texts(texts, query_vision, query_key, library.directory)

    # -- on the model thread --------------------------------------------------------------
    def score(self, query: Query, stage1: np.ndarray, inputs: _Images | _Texts) -> Scored:
        vision: np.ndarray | None  # the candidates' (K, N, V), or the query image's (N, V)
        if isinstance(inputs, _Images):
            vision, bad = self._complete(inputs)
            # reads() let only a text query with words reach here
            logits = self.matcher.match_images(cast(str, query.text), vision)  # (K,)
            return _fused(self.matcher, logits, stage1, bad)
        vision = inputs.query_vision
        if vision is None:
            vision = self._query_vision(query, inputs)
        logits = self.matcher.match_texts(vision, inputs.texts)  # (K,)
        return _fused(self.matcher, logits, stage1, {})

    def _cache(self, index_dir) -> FeatureDiskCache:
        return FeatureDiskCache(index_dir, self.fingerprint, self.cache_bytes)

    def _complete(self, inputs: _Images) -> tuple[np.ndarray, dict[int, str]]:
        """Fill the rows the index does not keep: from the disk cache, else the files.
        Returns the (K, N, V) tokens and {row: why} for the files that could not be read."""
        cache = self._cache(inputs.index_dir)
        vision = inputs.vision
        todo, pixels, keys, bad = [], [], [], {}
        for row in np.flatnonzero(~inputs.found).tolist():
            path = inputs.paths[row]
            if path is None:  # deleted by a concurrent writer since stage 1
                bad[row] = f"image {int(inputs.ids[row])}: no longer indexed"
                continue
            try:
                key = cache_key(int(inputs.ids[row]), inputs.hashes[row], os.stat(path))
            except OSError:
                bad[row] = f"{path}: cannot read file"
                continue
            cached = cache.get(key)
            if cached is not None and cached.shape == vision.shape[1:]:
                vision[row] = cached
                continue
            try:
                pixels.append(decode_image(path, self.matcher.preprocess)[0])
            except DecodeError as exc:
                bad[row] = f"{path}: {exc}"
                continue
            todo.append(row)
            keys.append(key)
        if todo:
            import torch

            fresh = self.matcher.vision_features(torch.stack(pixels))  # (M, N, V)
            vision[todo] = fresh
            for key, features in zip(keys, fresh, strict=True):
                cache.put(key, features)
        return vision, bad

    def _query_vision(self, query, inputs: _Texts) -> np.ndarray:
        """The query image's vision tokens (N, V): cached for an indexed image."""
        cache, key = None, None
        if inputs.query_key is not None:
            try:
                key = cache_key(*inputs.query_key, os.stat(query.image))
                cache = self._cache(inputs.index_dir)
                cached = cache.get(key)
                if cached is not None:
                    return cached.astype(np.float32)
            except OSError:
                key = None
        from xmr.retrieval.errors import InputError

        try:
            pixels = decode_image(query.image, self.matcher.preprocess)[0]
        except DecodeError as exc:
            raise InputError(f"cannot re-rank for this image: {exc}") from exc
        vision = self.matcher.vision_features(pixels[None])[0]  # (N, V)
        if cache is not None and key is not None:
            cache.put(key, vision)
        return vision


def _fused(matcher, logits: np.ndarray, stage1: np.ndarray, bad: dict[int, str]) -> Scored:
    """Final scores; candidates whose files could not be read go after every other
    re-ranked one, in stage-1 order (they were never really scored)."""
    final = np.asarray(matcher.final_scores(logits, stage1), dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    if not bad:
        return Scored(final, logits=logits)
    rows = np.array(sorted(bad))
    ok = np.ones(len(final), dtype=bool)
    ok[rows] = False
    floor = final[ok].min(initial=0.0) - 1.0
    final[rows] = floor + stage1[rows] - stage1[rows].max()
    logits[rows] = np.nan  # never scored
    first = bad[int(rows[0])]
    notice = (
        f"{len(rows)} candidate image(s) could not be read for re-ranking and are ranked "
        f"after the others (first: {first})"
    )
    return Scored(final, [notice], logits)
