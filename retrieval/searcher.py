"""Where a query gets its candidates and its final order.

Stage 1: encode the query (or reuse an indexed image's stored vector) and ask FAISS for
the top candidates. Stage 2 (when a re-ranker is attached, see reranker.py) re-scores
those candidates with cross-attention; it can reorder them, never add to them. At most
MAX_RERANK_DEPTH candidates are re-ranked: a query for more results gets the rest in
stage-1 order, with a notice.

A searcher may be shared by threads (the HTTP server): `state` guards reads of the index
against a concurrent refresh, and `compute(fn, *args)` runs the model work (by default
right here); both come from the engine (engine/engine.py), which decides what needs
serialising.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from xmr.retrieval.calibration import stage1_probability
from xmr.retrieval.content_hash import content_hash, content_hash_bytes
from xmr.retrieval.duplicates import PixelCheck
from xmr.retrieval.errors import InputError, InvalidModelSpec, ItemNotFound
from xmr.retrieval.files import require_regular_file
from xmr.retrieval.filters import SearchFilter
from xmr.retrieval.library import Collection, Library
from xmr.retrieval.query_language import Term, combine
from xmr.retrieval.reranker_compat import token_mismatch
from xmr.retrieval.vector_index import Ids

if TYPE_CHECKING:
    import torch

    from xmr.retrieval.calibration import Logistic
    from xmr.retrieval.encoded import Encoded
    from xmr.retrieval.imageio import Preprocess
    from xmr.retrieval.matching import Matcher

DEFAULT_CANDIDATES = 128  # stage-1 depth for re-ranking: ALBEF/BLIP's Flickr30k setting
MAX_RERANK_DEPTH = 1024  # beyond this, stage 2 costs seconds and gigabytes for no gain
TARGETS = ("images", "texts")
Upload = tuple[bytes | None, str, str | None]  # an uploaded image's bytes, name, path hint


class QueryEncoding(Protocol):
    """What a Searcher asks of its encoder (engine.models.QueryEncoder, or an Encoder)."""

    def encode_texts(self, texts: Sequence[str]) -> Encoded: ...

    def encode_images(self, pixels: torch.Tensor, token_layer: int | None = None) -> Encoded: ...

    @property
    def preprocess(self) -> Preprocess: ...


@dataclass
class Hit:
    rank: int
    id: int
    score: float  # the shown score: a calibrated 0..1 probability of a match (calibration.py)
    stage1_score: float  # the stage-1 cosine
    kind: str  # "image" | "text"
    path: str | None = None
    text: str | None = None
    source: str | None = None
    meta: dict = field(default_factory=dict)
    duplicates: list[int] | None = None  # ids folded into this hit (search with dedup)
    reranker: str | None = None  # the re-ranker that scored this hit (None: stage 1's score)
    rerank_logit: float | None = None  # the re-ranker's own logit, when it scored this hit
    fused_score: float | None = None  # logit + weight * cosine: what the order follows

    def as_dict(self) -> dict:
        out: dict = {"rank": self.rank, "score": round(self.score, 6), "id": self.id}
        out["stage1_score"] = round(self.stage1_score, 6)
        if self.rerank_logit is not None:
            out["rerank_logit"] = round(self.rerank_logit, 6)
        if self.fused_score is not None:
            out["fused_score"] = round(self.fused_score, 6)
        out["kind"] = self.kind
        if self.kind == "image":
            out["path"] = self.path
        else:
            out["text"] = self.text
            out["source"] = self.source
        if self.meta:
            # Nested, so a record's own "id" or "score" cannot overwrite the hit's.
            out["meta"] = self.meta
        if self.duplicates is not None:
            out["duplicates"] = self.duplicates
        if self.reranker is not None:
            out["reranker"] = self.reranker
        return out


@dataclass
class Query:
    """A query's stage-1 vector and what the re-ranker needs to read it."""

    vector: np.ndarray  # (D,) float32
    tokens: np.ndarray | None  # (L, D) float16
    length: int | None  # valid text tokens, None for images
    kind: str  # "text" | "image"
    exclude_ids: tuple[int, ...] = ()  # indexed images that are the query (never answers)
    encode_ms: float = 0.0  # time spent in the encoder (0 for a stored vector)
    rerank_note: str | None = None  # why a re-ranker cannot read this query, if so
    # What a matcher with its own towers reads (blip_rerank.py): the query's words, or
    # its image (an absolute path, or an upload's bytes).
    text: str | None = None
    image: str | bytes | None = None
    image_id: int | None = None  # the indexed image the query is, content unchanged


@dataclass
class Answer:
    """Hits plus what a person should know about how they were found."""

    hits: list[Hit]
    reranked: bool
    notices: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    # With a minimum score: how many of the results asked for scored below it.
    below_min_score: int | None = None
    reranker: str | None = None  # the re-ranker that ordered the hits (None: stage 1)

    def as_dict(self) -> dict:
        """The HTTP API's answer; `xmr search` prints from the same dict."""
        out = {
            "results": [hit.as_dict() for hit in self.hits],
            "reranked": self.reranked,
            "notices": self.notices,
            "timings_ms": self.timings_ms,
        }
        if self.reranker is not None:
            out["reranker"] = self.reranker  # which re-ranker ordered the hits
        if self.below_min_score is not None:
            out["below_min_score"] = self.below_min_score
        return out


@dataclass
class _Ranked:
    """Stage 1 (and 2) for one depth: candidates and their scores."""

    ids: np.ndarray  # (K,)
    final: np.ndarray  # (K,) final scores: what the order follows
    stage1: np.ndarray  # (K,) stage-1 cosines
    shown: np.ndarray  # (K,) the scores shown: calibrated, 0..1 (calibration.py)
    stage1_ms: float
    logits: np.ndarray | None = None  # (K,) the re-ranker's logits, NaN where it did not score
    rerank_ms: float = 0.0
    reranked: bool = False
    tail: set = field(default_factory=set)  # ids the re-ranker did not score
    notices: list[str] = field(default_factory=list)
    empty: bool = False


class Searcher:
    def __init__(
        self,
        library: Library,
        encoder: QueryEncoding,
        reranker: Matcher | None = None,
        state: contextlib.AbstractContextManager[Any] | None = None,
        compute: Callable[..., Any] | None = None,
        stage1_calibration: Logistic | None = None,
    ):
        self.library = library
        self.encoder = encoder
        self.reranker = reranker
        # the encoder's text <-> image cosine -> probability fit (calibration.py), if any
        self.stage1_calibration = stage1_calibration
        self.state = state or contextlib.nullcontext()
        self.compute = compute or _here  # compute(fn, *args): where model work runs
        reason = token_mismatch(library, reranker)
        if reason:
            raise InvalidModelSpec(f"{reason}; or search without re-ranking")

    # -- building queries ----------------------------------------------------------------
    def text_query(self, text: str) -> Query:
        if not text.strip():
            raise InputError("empty query; give some words, or an image")
        started = time.perf_counter()
        encoded = self.compute(self.encoder.encode_texts, [text])
        tokens = None if encoded.tokens is None else encoded.tokens[0]
        length = int(encoded.lengths[0])
        return Query(encoded.vectors[0], tokens, length, "text", (), _ms(started), text=text)

    def image_query(self, path: Path) -> Query:
        """Reuse the stored vector of an indexed, unchanged image; otherwise encode the file.
        The query image is never its own answer: the image indexed at this path is left
        out, or, for a file outside the index, the indexed image with the same content."""
        path = Path(path).expanduser()
        require_regular_file(path, "query image", "an image file")
        resolved = str(path.resolve())
        stat = path.stat()
        row = self._indexed_row(resolved, None)
        if row is not None:
            unchanged = (row.size, row.mtime_ns) == (stat.st_size, stat.st_mtime_ns)
        else:
            row = self._indexed_row(None, content_hash(resolved))
            unchanged = row is not None
        return self._stored_or_encoded(row, unchanged, resolved, path)

    def upload_query(self, data: bytes, name: str = "upload", path_hint: str | None = None):
        """An image sent as bytes (an HTTP upload), answered as `image_query` answers for a
        file. `path_hint`, the sender's own absolute path of the file (compared with indexed
        paths, never opened), makes the answer exactly `image_query`'s: the image indexed
        at that path is left out, and its stored vector used while the content is the same.
        Without a hint, or with one the index does not hold, an upload with the content
        of an indexed image is that image (as a file outside the index is)."""
        digest = content_hash_bytes(data)
        row = self._indexed_row(path_hint, None) if path_hint is not None else None
        if row is None:
            row = self._indexed_row(None, digest)
        unchanged = row is not None and row.content_hash == digest
        return self._stored_or_encoded(row, unchanged, data, name)

    def _indexed_row(self, path: str | None, digest: str | None):
        """The indexed image at `path`, or the first (lowest id) with content `digest`."""
        if path is not None:
            return self.library.db.indexed_image_at(path)
        return None if digest is None else self.library.db.indexed_image_with_hash(digest)

    def _stored_or_encoded(self, row, unchanged: bool, source, name) -> Query:
        """The stored vector of the indexed image `row` while `unchanged` and its records
        are intact; else `source` (a path or bytes) decoded and encoded, `row` left out."""
        if unchanged and self.library.records_intact(self.library.images, row.id):
            return self._stored_query(row.id, source if isinstance(source, bytes) else row.path)
        from xmr.retrieval.imageio import DecodeError, decode_image  # PIL: image queries only

        try:
            pixels, *_ = decode_image(source, self.encoder.preprocess)
        except DecodeError as exc:
            raise InputError(f"cannot use {name} as a query: {exc}") from exc
        query = self._encoded_image_query(pixels, None if row is None else row.id)
        query.image = source
        return query

    def item_query(self, image_id: int) -> Query:
        """An indexed image by id ("more like this"): its stored vector, itself left out."""
        row = self.library.db.image_row(int(image_id))
        if row is None or row.state != "indexed":
            raise ItemNotFound(f"no indexed image has id {image_id}")
        if not self.library.records_intact(self.library.images, row.id):
            raise ItemNotFound(
                f"the stored vector of image {image_id} was lost; indexing its folder again "
                "restores it"
            )
        return self._stored_query(row.id, row.path)

    def expression_query(
        self, terms: list[Term], target: str, upload: Upload | None = None
    ) -> Query:
        """A query of several terms (query_language.py): text, image file, indexed image
        ("like") and uploaded image terms, summed with their weights. One term alone is
        that term's own query. The re-ranker reads one query: with a composite, the single
        positive term of the other modality than `target` (a text for images, an image
        for texts); with several such terms, stage 1 decides (`rerank_note`); with none, the
        query is text->text or image->image, which is never re-ranked.
        `upload`: (bytes, name, path hint) for an "upload" term."""
        if len(terms) == 1 and terms[0].weight == 1.0:
            return self._term_query(terms[0], upload)
        started = time.perf_counter()
        parts = self._term_queries(terms, upload)
        vector = combine(np.stack([p.vector for p in parts]), [t.weight for t in terms])
        excluded = tuple(dict.fromkeys(i for p in parts for i in p.exclude_ids))
        wanted = "text" if target == "images" else "image"
        leads = [p for p, t in zip(parts, terms, strict=True) if t.weight > 0 and p.kind == wanted]
        encode_ms = _ms(started)
        if len(leads) == 1:
            lead = leads[0]
            return Query(
                vector, lead.tokens, lead.length, lead.kind, excluded, encode_ms,
                text=lead.text, image=lead.image, image_id=lead.image_id,
            )  # fmt: skip
        if not leads:  # text->text or image->image: never re-ranked, nothing to say
            return Query(vector, None, None, parts[0].kind, excluded, encode_ms)
        note = (
            f"this query combines terms; re-ranking needs exactly one positive {wanted} term "
            f"(it has {len(leads)}), so the order is stage 1's"
        )
        return Query(vector, None, None, wanted, excluded, encode_ms, note)

    def _term_queries(self, terms: list[Term], upload) -> list[Query]:
        """Each term's own query; the text terms encoded in one batch."""
        texts = [t.value for t in terms if t.kind == "text"]
        encoded = None
        if texts:
            encoded = self.compute(self.encoder.encode_texts, texts)
        queries, n_text = [], 0
        for term in terms:
            if term.kind == "text":
                assert encoded is not None  # encoded above, with every text term
                tokens = None if encoded.tokens is None else encoded.tokens[n_text]
                length = int(encoded.lengths[n_text])
                queries.append(
                    Query(encoded.vectors[n_text], tokens, length, "text", text=term.value)
                )
                n_text += 1
            else:
                queries.append(self._term_query(term, upload))
        return queries

    def _term_query(self, term: Term, upload) -> Query:
        if term.kind == "text":
            return self.text_query(term.value)
        if term.kind == "image":
            return self.image_query(Path(term.value))
        if term.kind == "like":
            return self.item_query(int(term.value))
        return self.upload_query(*upload)

    def _stored_query(self, image_id: int, image: str | bytes | None = None) -> Query:
        images = self.library.images
        ids = np.array([image_id])
        with self.state:
            vector = images.vectors.read(ids)[0]
            tokens = None if images.tokens is None else images.tokens.read(ids)[0]
        return Query(vector, tokens, None, "image", (image_id,), image=image, image_id=image_id)

    def _encoded_image_query(self, pixels, exclude_id: int | None) -> Query:
        started = time.perf_counter()
        # its tokens from the vision block whose tokens the index stores
        encoded = self.compute(self.encoder.encode_images, pixels[None], self.library.token_layer)
        if self.library.token_pixels:  # and the pixels of each patch, as the index keeps them
            from xmr.retrieval.embedding import add_patch_pixels  # (PIL: not for text queries)

            encoded = add_patch_pixels(encoded, pixels[None])
        tokens = None if encoded.tokens is None else encoded.tokens[0]
        exclude = () if exclude_id is None else (exclude_id,)
        return Query(encoded.vectors[0], tokens, None, "image", exclude, _ms(started))

    # -- searching -----------------------------------------------------------------------
    def search(self, query: Query, target: str, **options: Any) -> list[Hit]:
        """Top-k items of `target` ("images" | "texts") for `query`, best first; the
        options are `answer`'s."""
        return self.answer(query, target, **options).hits

    def answer(
        self,
        query: Query,
        target: str,
        k: int = 10,
        candidates: int | None = None,
        rerank: bool = True,
        allowed_ids: Ids | None = None,
        where: SearchFilter | None = None,
        min_score: float | None = None,
        dedup: float | None = None,
    ) -> Answer:
        """`search` with its notices and timings.

        `where` (or a ready set of `allowed_ids`) restricts the answers inside the
        stage-1 search, so k come back whenever k items match (see filters.py).
        `min_score` leaves out results whose shown score (Hit.score, calibrated 0..1) is
        lower: fewer than k may come back, and Answer.below_min_score says how many of the
        k were cut. `dedup` T folds results
        whose vectors are at least T-similar into the best-ranked of them
        (Hit.duplicates), and still returns k whenever k distinct ones exist.
        """
        if target not in TARGETS:
            raise InputError(f"unknown target '{target}'; use images or texts")
        started = time.perf_counter()
        collection = self.library.images if target == "images" else self.library.texts
        if where is not None and where.active:
            matching = where.allowed_ids(self.library.db, target)
            assert matching is not None  # an active filter always yields ids
            allowed_ids = (
                matching if allowed_ids is None else np.intersect1d(matching, list(allowed_ids))
            )
        exclude = list(query.exclude_ids) if target == "images" and query.exclude_ids else None
        use_reranker = rerank and self._reranks(query, target, collection)
        notices = []
        if rerank and self.reranker is not None and query.rerank_note:
            notices.append(query.rerank_note)
        want = k if dedup is None else 3 * k  # duplicates fold away: look a little deeper
        while True:
            ranked = self._rank(
                query, collection, want, candidates, use_reranker, exclude, allowed_ids
            )
            order = np.argsort(-ranked.final, kind="stable")[:want]
            below = 0
            if min_score is not None:  # on the score shown, whichever stage gave it
                keep = ranked.shown[order] >= min_score
                below = int((~keep).sum())
                order = order[keep]
            hits = self._hits(collection, ranked, order)
            if dedup is None:
                break
            hits = self._fold_duplicates(collection, hits, dedup)
            exhausted = len(ranked.ids) < want or want >= collection.index.live_count
            if len(hits) >= k or exhausted:
                break
            want *= 4
        hits = hits[:k]
        for rank, hit in enumerate(hits, start=1):
            hit.rank = rank
        notices += ranked.notices
        if ranked.empty:
            notices.append(f"the index holds no {target} yet")
        elif not hits and allowed_ids is not None:
            notices.append(f"no {target} match the filter")
        below_min = None
        if min_score is not None:
            below_min = below
            if len(hits) < k and below:
                notices.append(f"{len(hits)} of {k} results scored at least {min_score}")
        timings = {
            "encode": round(query.encode_ms, 2),
            "stage1": round(ranked.stage1_ms, 2),
            "rerank": round(ranked.rerank_ms, 2),
            "total": round(query.encode_ms + _ms(started), 2),
        }
        name = self.reranker.name if ranked.reranked and self.reranker is not None else None
        return Answer(hits, ranked.reranked, notices, timings, below_min, name)

    def _rank(self, query, collection, want, candidates, use_reranker, exclude, allowed):
        """Stage 1 for `want` results (deeper when re-ranking), then stage 2 over at most
        MAX_RERANK_DEPTH of them: candidate ids with final, stage-1 and shown scores."""
        started = time.perf_counter()
        depth = rerank_depth(want, candidates) if use_reranker else want
        with self.state:
            scores, ids = collection.index.search(query.vector[None, :], depth, exclude, allowed)
            keep = ids[0] >= 0
            ids, stage1 = ids[0][keep], scores[0][keep]  # (K,), (K,)
            reranker = self.reranker if use_reranker else None
            head = min(len(ids), MAX_RERANK_DEPTH) if reranker is not None else 0
            inputs = None
            if reranker is not None and head:  # copies, read under the lock (matching.py)
                inputs = reranker.candidate_inputs(self.library, query, collection, ids[:head])
            empty = collection.index.live_count == 0
        cross_modal = (query.kind == "text") == (collection.name == "images")
        shown = stage1_probability(stage1, cross_modal, self.stage1_calibration)  # (K,)
        ranked = _Ranked(ids, stage1, stage1, shown, _ms(started), empty=empty)
        if reranker is None or inputs is None:
            return ranked
        rerank_started = time.perf_counter()
        scored = self.compute(reranker.score, query, stage1[:head], inputs)
        final = scored.final  # (K',)
        ranked.notices += scored.notices
        # Past the re-ranked head, stage-1 order: ranked after every re-ranked item.
        tail = stage1[head:] - stage1[head:].max(initial=0) + final.min(initial=0) - 1
        ranked.final = np.concatenate([final, tail])
        ranked.logits = np.full(len(ids), np.nan)
        if scored.logits is not None:
            ranked.logits[:head] = scored.logits
        # What the re-ranker scored shows its calibrated probability; a candidate it could
        # not read (a NaN logit) or never reached keeps its stage-1 score.
        scored_rows = np.flatnonzero(~np.isnan(ranked.logits[:head]))
        if scored.logits is None:
            scored_rows = np.arange(head)
        ranked.shown = shown.copy()
        ranked.shown[scored_rows] = reranker.probability(final[scored_rows])
        ranked.reranked = True
        ranked.rerank_ms = _ms(rerank_started)
        unscored = np.setdiff1d(np.arange(len(ids)), scored_rows)
        ranked.tail = set(ids[unscored].tolist())
        if len(ids) > head:
            ranked.notices.append(
                f"re-ranked the top {head} of {len(ids)} candidates; results past rank "
                f"{head} are in stage-1 order"
            )
        return ranked

    def _fold_duplicates(self, collection: Collection, hits: list[Hit], threshold: float):
        """Best-ranked first: a hit that is a near-duplicate of one already kept is folded
        into it: vectors at least `threshold`-similar and, for images, the same pixels
        (duplicates.py: a model alone can take two distinct pictures for one)."""
        if not hits:
            return hits
        ids = np.array([h.id for h in hits])
        with self.state:
            vectors = collection.vectors.read(ids)  # (n, D)
        same_picture = None
        if collection.name == "images":
            rows = self.library.db.rows_by_ids("images", ids.tolist())
            hashes = {i: row.content_hash for i, row in rows.items()}
            same_picture = PixelCheck({h.id: h.path for h in hits}, hashes)
        kept: list[int] = []  # positions in hits
        for i, hit in enumerate(hits):
            hit.duplicates = []
            similar = vectors[kept] @ vectors[i] if kept else np.zeros(0)  # (len(kept),)
            owners = [hits[kept[j]] for j in np.argsort(-similar) if similar[j] >= threshold]
            owner = next(
                (o for o in owners if same_picture is None or same_picture(o.id, hit.id)), None
            )
            if owner is None:
                kept.append(i)
            else:
                owner.duplicates.append(hit.id)
        return [hits[i] for i in kept]

    def _reranks(self, query: Query, target: str, collection: Collection) -> bool:
        """The re-ranker matches texts with images: it serves text->image and image->text,
        where it can read the query and the collection (matching.py)."""
        cross_modal = (query.kind == "text") == (target == "images")
        return cross_modal and self.reranker is not None and self.reranker.reads(query, collection)

    def _hits(self, collection: Collection, ranked: _Ranked, order: np.ndarray) -> list[Hit]:
        """The hits at positions `order` of `ranked`, in that order, with their rows."""
        ids = ranked.ids[order]
        rows = self.library.db.rows_by_ids(collection.name, ids.tolist())
        hits: list[Hit] = []
        for position, item_id in zip(order.tolist(), ids.tolist(), strict=True):
            row = rows.get(int(item_id))
            if row is None:  # deleted by a concurrent writer since FAISS was loaded
                continue
            hit = Hit(
                len(hits) + 1,
                int(item_id),
                float(ranked.shown[position]),
                float(ranked.stage1[position]),
                collection.name[:-1],
            )
            if ranked.reranked and item_id not in ranked.tail and self.reranker is not None:
                hit.reranker = self.reranker.name
                hit.fused_score = float(ranked.final[position])
                if ranked.logits is not None and not np.isnan(ranked.logits[position]):
                    hit.rerank_logit = float(ranked.logits[position])
            if collection.name == "images":
                hit.path = row.path
            else:
                hit.text, hit.source = row.text, row.source
                hit.meta = json.loads(row.meta_json) if row.meta_json else {}
            hits.append(hit)
        return hits


def rerank_depth(want: int, candidates: int | None) -> int:
    """How many stage-1 candidates a re-ranked search for `want` results reads, and the
    re-ranker scores (at most MAX_RERANK_DEPTH of them; the rest keep stage-1 order)."""
    return max(want, candidates or DEFAULT_CANDIDATES)


def _here(fn, *args):
    return fn(*args)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
