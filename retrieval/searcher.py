"""Where a query gets its candidates and its final order.

Stage 1: encode the query (or reuse an indexed image's stored vector) and ask FAISS for
the top candidates. Stage 2 (when a re-ranker is attached, see reranker.py) re-scores
those candidates with cross-attention; it can reorder them, never add to them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select

from retrieval.db import ImageRow, TextRow
from retrieval.errors import InputError
from retrieval.files import require_regular_file
from retrieval.filters import SearchFilter
from retrieval.imageio import DecodeError, decode_image
from retrieval.library import Collection, Library, token_mismatch

DEFAULT_CANDIDATES = 128  # stage-1 depth for re-ranking: ALBEF/BLIP's Flickr30k setting


@dataclass
class Hit:
    rank: int
    id: int
    score: float  # final score (stage 1 unless re-ranked)
    stage1_score: float
    kind: str  # "image" | "text"
    path: str | None = None
    text: str | None = None
    source: str | None = None
    meta: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = {"rank": self.rank, "score": round(self.score, 6), "id": self.id}
        out["stage1_score"] = round(self.stage1_score, 6)
        out["kind"] = self.kind
        if self.kind == "image":
            out["path"] = self.path
        else:
            out["text"] = self.text
            out["source"] = self.source
        if self.meta:
            # Nested, so a record's own "id" or "score" cannot overwrite the hit's.
            out["meta"] = self.meta
        return out


@dataclass
class Query:
    """A query's stage-1 vector and what the re-ranker needs to read it."""

    vector: np.ndarray  # (D,) float32
    tokens: np.ndarray | None  # (L, D) float16
    length: int | None  # valid text tokens, None for images
    kind: str  # "text" | "image"
    exclude_image_id: int | None = None


class Searcher:
    def __init__(self, library: Library, encoder, reranker=None):
        self.library = library
        self.encoder = encoder
        self.reranker = reranker
        reason = token_mismatch(library, reranker)
        if reason:
            from retrieval.errors import InvalidModelSpec

            raise InvalidModelSpec(f"{reason}; or --no-rerank")

    # -- building queries ----------------------------------------------------------------
    def text_query(self, text: str) -> Query:
        if not text.strip():
            raise InputError("empty query; give some words, or --image PATH")
        encoded = self.encoder.encode_texts([text])
        tokens = None if encoded.tokens is None else encoded.tokens[0]
        return Query(encoded.vectors[0], tokens, int(encoded.lengths[0]), "text")

    def image_query(self, path: Path) -> Query:
        """Reuse the stored vector of an indexed, unchanged image; otherwise encode the file."""
        path = Path(path).expanduser()
        require_regular_file(path, "query image", "an image file")
        resolved = str(path.resolve())
        stat = path.stat()
        with self.library.db.session() as session:
            row = session.scalars(select(ImageRow).where(ImageRow.path == resolved)).first()
        images = self.library.images
        if (
            row is not None
            and row.state == "indexed"
            and (row.size, row.mtime_ns) == (stat.st_size, stat.st_mtime_ns)
            and self.library.records_intact(images, row.id)
        ):
            ids = np.array([row.id])
            tokens = None if images.tokens is None else images.tokens.read(ids)[0]
            return Query(images.vectors.read(ids)[0], tokens, None, "image", row.id)
        try:
            pixels, *_ = decode_image(resolved, self.encoder.preprocess)
        except DecodeError as exc:
            raise InputError(f"cannot use {path} as a query: {exc}") from exc
        # its tokens from the vision block whose tokens the index stores
        encoded = self.encoder.encode_images(pixels.unsqueeze(0), self.library.token_layer)
        tokens = None if encoded.tokens is None else encoded.tokens[0]
        return Query(encoded.vectors[0], tokens, None, "image", None if row is None else row.id)

    # -- searching -----------------------------------------------------------------------
    def search(
        self,
        query: Query,
        target: str,
        k: int = 10,
        candidates: int | None = None,
        rerank: bool = True,
        allowed_ids=None,
        where: SearchFilter | None = None,
    ) -> list[Hit]:
        """Top-k items of `target` ("images" | "texts") for `query`, best first.

        `where` (or a ready set of `allowed_ids`) restricts the answers inside the
        stage-1 search, so k come back whenever k items match (see filters.py).
        """
        collection = self.library.images if target == "images" else self.library.texts
        if where is not None and where.active:
            matching = where.allowed_ids(self.library.db, target)
            allowed_ids = (
                matching if allowed_ids is None else np.intersect1d(matching, list(allowed_ids))
            )
        exclude = None
        if target == "images" and query.exclude_image_id is not None:
            exclude = [query.exclude_image_id]  # image->image never answers with itself
        # The re-ranker matches texts with images: it serves text->image and image->text.
        cross_modal = (query.kind == "text") == (target == "images")
        use_reranker = (
            rerank
            and cross_modal
            and self.reranker is not None
            and collection.tokens is not None
            and query.tokens is not None
        )
        depth = max(k, candidates or DEFAULT_CANDIDATES) if use_reranker else k
        scores, ids = collection.index.search(query.vector[None, :], depth, exclude, allowed_ids)
        keep = ids[0] >= 0
        ids, stage1 = ids[0][keep], scores[0][keep]  # (K,), (K,)
        final = stage1
        if use_reranker and len(ids):
            final = self._rerank(query, collection, ids, stage1)  # (K,)
        order = np.argsort(-final, kind="stable")[:k]
        return self._hits(collection, ids[order], final[order], stage1[order])

    def _rerank(self, query: Query, collection: Collection, ids, stage1) -> np.ndarray:
        if query.kind == "text":
            kept = collection.features
            if kept is not None and kept.serves(self.reranker):  # the stem ran at index time
                tokens, features = None, kept.read(ids)  # (K, N', W)
            else:
                tokens, features = collection.tokens.read(ids), None  # (K, N', D)
            return self.reranker.rerank_images(
                query.tokens, query.length, tokens, stage1, features=features
            )
        tokens = collection.tokens.read(ids)  # (K, L, D)
        with self.library.db.session() as session:
            query_lengths = select(TextRow.id, TextRow.n_tokens).where(TextRow.id.in_(ids.tolist()))
            lengths = {i: n for i, n in session.execute(query_lengths)}
        text_lengths = np.array([lengths[int(i)] for i in ids])
        return self.reranker.rerank_texts(query.tokens, tokens, text_lengths, stage1)

    def _hits(self, collection: Collection, ids, final, stage1) -> list[Hit]:
        table = collection.table
        with self.library.db.session() as session:
            rows = {
                r.id: r for r in session.scalars(select(table).where(table.id.in_(ids.tolist())))
            }
        hits = []
        for item_id, score, s1 in zip(ids, final, stage1, strict=True):
            row = rows.get(int(item_id))
            if row is None:  # deleted by a concurrent writer since FAISS was loaded
                continue
            hit = Hit(len(hits) + 1, int(item_id), float(score), float(s1), collection.name[:-1])
            if table is ImageRow:
                hit.path = row.path
            else:
                assert table is TextRow
                hit.text, hit.source = row.text, row.source
                hit.meta = json.loads(row.meta_json) if row.meta_json else {}
            hits.append(hit)
        return hits
