"""Where a query gets its candidates and its final order.

Stage 1: encode the query (or reuse an indexed image's stored vector) and ask FAISS for
the top candidates. Stage 2 (when a re-ranker is attached, see reranker.py) re-scores
those candidates with cross-attention; it can reorder them, never add to them. At most
MAX_RERANK_DEPTH candidates are re-ranked: a query for more results gets the rest in
stage-1 order, with a notice.

A searcher may be shared by threads (the HTTP server): `state` guards reads of the index
against a concurrent refresh, `compute` the model work; both come from the engine
(engine/engine.py), which decides what needs serialising.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select

from retrieval.content_hash import content_hash_bytes
from retrieval.db import ImageRow, TextRow
from retrieval.errors import InputError, InvalidModelSpec, ItemNotFound
from retrieval.filters import SearchFilter
from retrieval.imageio import DecodeError, decode_image
from retrieval.library import Collection, Library, token_mismatch

DEFAULT_CANDIDATES = 128  # stage-1 depth for re-ranking: ALBEF/BLIP's Flickr30k setting
MAX_RERANK_DEPTH = 1024  # beyond this, stage 2 costs seconds and gigabytes for no gain
TARGETS = ("images", "texts")


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
    encode_ms: float = 0.0  # time spent in the encoder (0 for a stored vector)


@dataclass
class Answer:
    """Hits plus what a person should know about how they were found."""

    hits: list[Hit]
    reranked: bool
    notices: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The HTTP API's answer; `xmr search` prints from the same dict."""
        return {
            "results": [hit.as_dict() for hit in self.hits],
            "reranked": self.reranked,
            "notices": self.notices,
            "timings_ms": self.timings_ms,
        }


class Searcher:
    def __init__(self, library: Library, encoder, reranker=None, state=None, compute=None):
        self.library = library
        self.encoder = encoder
        self.reranker = reranker
        self.state = state or contextlib.nullcontext()
        self.compute = compute or contextlib.nullcontext()
        reason = token_mismatch(library, reranker)
        if reason:
            raise InvalidModelSpec(f"{reason}; or search without re-ranking")

    # -- building queries ----------------------------------------------------------------
    def text_query(self, text: str) -> Query:
        if not text.strip():
            raise InputError("empty query; give some words, or an image")
        started = time.perf_counter()
        with self.compute:
            encoded = self.encoder.encode_texts([text])
        tokens = None if encoded.tokens is None else encoded.tokens[0]
        return Query(
            encoded.vectors[0], tokens, int(encoded.lengths[0]), "text", None, _ms(started)
        )

    def image_query(self, path: Path) -> Query:
        """Reuse the stored vector of an indexed, unchanged image; otherwise encode the file."""
        path = Path(path).expanduser()
        if not path.exists():
            raise InputError(f"query image {path} does not exist")
        if not path.is_file():
            raise InputError(f"query image {path} is not a regular file ({_file_kind(path)})")
        resolved = str(path.resolve())
        stat = path.stat()
        with self.library.db.session() as session:
            row = session.scalars(select(ImageRow).where(ImageRow.path == resolved)).first()
        if (
            row is not None
            and row.state == "indexed"
            and (row.size, row.mtime_ns) == (stat.st_size, stat.st_mtime_ns)
        ):
            return self._stored_query(row.id)
        try:
            pixels, *_ = decode_image(resolved, self.encoder.preprocess)
        except DecodeError as exc:
            raise InputError(f"cannot use {path} as a query: {exc}") from exc
        return self._encoded_image_query(pixels, None if row is None else row.id)

    def upload_query(self, data: bytes, name: str = "upload", path_hint: str | None = None):
        """An image sent as bytes (an HTTP upload), answered as `image_query` answers for a
        file. `path_hint`, the sender's own absolute path of the file (compared with indexed
        paths, never opened), makes the answer exactly `image_query`'s: the image indexed
        at that path is left out, and its stored vector used while the content is the same.
        Without a hint, an upload with the content of an indexed image is that image."""
        digest = content_hash_bytes(data)
        with self.library.db.session() as session:
            rows = select(ImageRow).where(ImageRow.state == "indexed")
            if path_hint is not None:
                row = session.scalars(rows.where(ImageRow.path == path_hint)).first()
            else:
                row = session.scalars(
                    rows.where(ImageRow.content_hash == digest).order_by(ImageRow.id)
                ).first()
        if row is not None and row.content_hash == digest:
            return self._stored_query(row.id)
        try:
            pixels, *_ = decode_image(data, self.encoder.preprocess)
        except DecodeError as exc:
            raise InputError(f"cannot use {name} as a query: {exc}") from exc
        return self._encoded_image_query(pixels, None if row is None else row.id)

    def item_query(self, image_id: int) -> Query:
        """An indexed image by id ("more like this"): its stored vector, itself left out."""
        with self.library.db.session() as session:
            row = session.get(ImageRow, int(image_id))
        if row is None or row.state != "indexed":
            raise ItemNotFound(f"no indexed image has id {image_id}")
        return self._stored_query(row.id)

    def _stored_query(self, image_id: int) -> Query:
        images = self.library.images
        ids = np.array([image_id])
        with self.state:
            vector = images.vectors.read(ids)[0]
            tokens = None if images.tokens is None else images.tokens.read(ids)[0]
        return Query(vector, tokens, None, "image", image_id)

    def _encoded_image_query(self, pixels, exclude_id: int | None) -> Query:
        started = time.perf_counter()
        with self.compute:  # its tokens from the vision block whose tokens the index stores
            encoded = self.encoder.encode_images(pixels.unsqueeze(0), self.library.token_layer)
        tokens = None if encoded.tokens is None else encoded.tokens[0]
        return Query(encoded.vectors[0], tokens, None, "image", exclude_id, _ms(started))

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
        """Top-k items of `target` ("images" | "texts") for `query`, best first."""
        return self.answer(query, target, k, candidates, rerank, allowed_ids, where).hits

    def answer(
        self,
        query: Query,
        target: str,
        k: int = 10,
        candidates: int | None = None,
        rerank: bool = True,
        allowed_ids=None,
        where: SearchFilter | None = None,
    ) -> Answer:
        """`search` with its notices and timings.

        `where` (or a ready set of `allowed_ids`) restricts the answers inside the
        stage-1 search, so k come back whenever k items match (see filters.py).
        """
        if target not in TARGETS:
            raise InputError(f"unknown target '{target}'; use images or texts")
        started = time.perf_counter()
        collection = self.library.images if target == "images" else self.library.texts
        notices: list[str] = []
        if where is not None and where.active:
            matching = where.allowed_ids(self.library.db, target)
            allowed_ids = (
                matching if allowed_ids is None else np.intersect1d(matching, list(allowed_ids))
            )
        exclude = None
        if target == "images" and query.exclude_image_id is not None:
            exclude = [query.exclude_image_id]  # image->image never answers with itself
        use_reranker = self._reranks(query, target, collection) and rerank
        depth = max(k, candidates or DEFAULT_CANDIDATES) if use_reranker else k
        with self.state:
            scores, ids = collection.index.search(
                query.vector[None, :], depth, exclude, allowed_ids
            )
            keep = ids[0] >= 0
            ids, stage1 = ids[0][keep], scores[0][keep]  # (K,), (K,)
            head = min(len(ids), MAX_RERANK_DEPTH) if use_reranker else 0
            inputs = self._rerank_inputs(query, collection, ids[:head]) if head else None
            empty = collection.index.live_count == 0
        stage1_ms = _ms(started)
        final = stage1
        rerank_started = time.perf_counter()
        if inputs is not None:
            with self.compute:
                logits = self._rerank(query, ids[:head], stage1[:head], *inputs)  # (K',)
            # Past the re-ranked head, stage-1 order: ranked after every re-ranked item.
            tail = stage1[head:] - stage1[head:].max(initial=0) + logits.min(initial=0) - 1
            final = np.concatenate([logits, tail])
            if len(ids) > head:
                notices.append(
                    f"re-ranked the top {head} of {len(ids)} candidates; results past rank "
                    f"{head} are in stage-1 order"
                )
        rerank_ms = _ms(rerank_started) if inputs is not None else 0.0
        order = np.argsort(-final, kind="stable")[:k]
        hits = self._hits(collection, ids[order], final[order], stage1[order])
        if inputs is not None and len(ids) > head:
            tail_ids = set(ids[head:].tolist())
            for hit in hits:
                if hit.id in tail_ids:
                    hit.score = hit.stage1_score  # not re-ranked: its stage-1 cosine
        if empty:
            notices.append(f"the index holds no {target} yet")
        elif not hits and allowed_ids is not None:
            notices.append(f"no {target} match the filter")
        timings = {
            "encode": round(query.encode_ms, 2),
            "stage1": round(stage1_ms, 2),
            "rerank": round(rerank_ms, 2),
        }
        timings["total"] = round(query.encode_ms + _ms(started), 2)
        return Answer(hits, inputs is not None, notices, timings)

    def _reranks(self, query: Query, target: str, collection: Collection) -> bool:
        """The re-ranker matches texts with images: it serves text->image and image->text."""
        cross_modal = (query.kind == "text") == (target == "images")
        return (
            cross_modal
            and self.reranker is not None
            and collection.tokens is not None
            and query.tokens is not None
        )

    def _rerank_inputs(self, query: Query, collection: Collection, ids):
        """What stage 2 reads for these candidates, copied out of the stores:
        text->image (tokens (K, N', D) or kept features (K, N', W), None),
        image->text (tokens (K, L, D), their valid lengths (K,))."""
        if query.kind == "text":
            kept = collection.features
            if kept is not None and kept.serves(self.reranker):  # the stem ran at index time
                return None, kept.read(ids)
            return collection.tokens.read(ids), None
        tokens = collection.tokens.read(ids)  # (K, L, D)
        with self.library.db.session() as session:
            lengths = select(TextRow.id, TextRow.n_tokens).where(TextRow.id.in_(ids.tolist()))
            by_id = {i: n for i, n in session.execute(lengths)}
        return tokens, np.array([by_id.get(int(i), 1) for i in ids])

    def _rerank(self, query: Query, ids, stage1, tokens, extra) -> np.ndarray:
        if query.kind == "text":
            return self.reranker.rerank_images(
                query.tokens, query.length, tokens, stage1, features=extra
            )
        return self.reranker.rerank_texts(query.tokens, tokens, extra, stage1)

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


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _file_kind(path: Path) -> str:
    if path.is_dir():
        return "a directory"
    if path.is_fifo():
        return "a named pipe"
    if path.is_socket():
        return "a socket"
    return "a device or special file"
