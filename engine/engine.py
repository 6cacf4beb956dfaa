"""The engine: one index, the models that serve it, and every operation the faces offer.

The CLI, the HTTP server and the demo all call an `Engine`; none of them resolves models,
re-rankers or index files itself. An engine returns notices (fallbacks, random weights,
an empty index) with its answers and never prints.

Reading is safe from many threads:
  - `_state` guards the open index: a refresh never runs while a search reads FAISS or
    the stores, and the reads a search needs (stage 1, candidates' tokens) are short;
  - model work (encoding, re-ranking) runs on one thread of its own (`_models_thread`):
    on a CPU, two forward passes at once only compete for the same cores, and the
    allocator keeps one pool of tensor memory instead of one per request thread, so
    memory stays flat under any number of concurrent requests.
Freshness: every search first compares the database's generation (bumped by each
commit of `xmr index`, `add-texts` and `compact`) and the stamps of the manifest and
FAISS files with what the open index reflects; on a change it catches up before
answering, so a query never sees a half-written batch and never a deleted item.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xmr.engine import writes
from xmr.engine.models import (
    Models,
    QueryEncoder,
    RerankerChoice,
    choose_reranker,
    random_weights_notice,
    stage1_calibration,
)
from xmr.engine.paging import file_date, page_of, pool_size
from xmr.engine.paths import index_directory
from xmr.engine.progress import IndexSummary, Reporter
from xmr.engine.query_input import MAX_ID, QueryInput
from xmr.engine.request import DUPLICATE_THRESHOLD, PAGE_K, SearchRequest
from xmr.engine.writes import WriteReport
from xmr.retrieval.errors import IndexCorrupt, InputError, ItemNotFound
from xmr.retrieval.filters import SearchFilter
from xmr.retrieval.library import Library
from xmr.retrieval.searcher import Answer, Searcher

if TYPE_CHECKING:
    from xmr.retrieval.check import CheckReport

_INDEX_FILES = ("manifest.json", "images.faiss.json", "texts.faiss.json")
EXAMPLES_FILE = "examples.txt"  # a shipped model's sentences it answers well, one a line
MAX_EXAMPLE_CHARS = 120
GENERIC_EXAMPLES = (
    "a dog running on a sandy beach",
    "a city street at night with lights",
    "a plate of food on a wooden table",
    "snowy mountains under a blue sky",
)


@dataclass(frozen=True)
class IndexedFile:
    id: int
    path: str
    size: int
    mtime_ns: int


class ModelThread:
    """Runs model work, one call at a time, on a thread of its own: `thread(fn, *args)`."""

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xmr-models")

    def __call__(self, fn, *args):
        return self._pool.submit(fn, *args).result()


class _Snapshot:
    """An open, read-only index as of one committed state, and (built at the first search,
    so `info` loads no model) the searcher over it."""

    def __init__(self, library: Library, reranker: RerankerChoice):
        self.library = library
        self.reranker = reranker
        self.searcher: Searcher | None = None
        self.generation = library.db.generation()
        self.stamp = _stamp(library.directory)

    @property
    def notices(self) -> list[str]:
        """True of every answer from this state: what opening the index found and worked
        around (damage), a re-ranker fallback."""
        fallback = [self.reranker.notice] if self.reranker.notice else []
        return list(self.library.notices) + fallback


class Engine:
    """One index and the models that serve it: `Engine("my-index")`, then `search`,
    `index`, `add_texts`, `compact`, `check`, `info`, `duplicates` (docs/python.md).

    `index`: the index folder (None: `$XMR_INDEX`, else a per-user data directory);
    `device`: cpu, cuda, cuda:1 ... (None: cuda when present); `reranker`: the folder of
    the re-ranker searches use, 'auto' (the model's own) or 'none'. Nothing is opened or
    loaded until the first call that needs it."""

    def __init__(
        self,
        index: Path | str | None = None,
        device: str | None = None,
        reranker: str = "auto",
        feature_cache: str | int | None = None,
        short_lived: bool = False,
    ):
        """`feature_cache`: the size cap of the vision tokens a pretrained matcher computes
        at search time and caches in the index folder ("4G"; 0: none; default 2 GiB).
        `short_lived`: the engine answers one query and its process ends (a CLI search):
        models load for a fast first answer rather than for the fastest later ones."""
        from xmr.retrieval.index_choice import parse_size

        self.directory = index_directory(index)
        self.device = device
        self.reranker_choice = reranker
        self.feature_cache = (
            0 if str(feature_cache).strip() in ("0", "none") else parse_size(feature_cache)
        )
        self._state = threading.Lock()
        self._models_thread = ModelThread()
        self._snapshot: _Snapshot | None = None
        self._models: Models | None = None
        self.short_lived = short_lived

    # -- reading -------------------------------------------------------------------------
    def search(self, query: SearchRequest | QueryInput | str, **options: Any) -> Answer:
        """The top-k items for a request, with notices and timings (ms): either a
        SearchRequest, or a query and the request's other fields by name
        (`engine.search("a dog", k=5, dedup=0.9)`); see Searcher.answer for
        `min_score` and `dedup`."""
        if isinstance(query, SearchRequest):
            if options:
                raise TypeError("give a SearchRequest or options, not both")
            request = query
        else:
            asked = QueryInput(text=query) if isinstance(query, str) else query
            request = SearchRequest(query=asked, **options)  # bounds checked before loading
        query = request.query
        terms = query.terms()
        snapshot = self._current()
        searcher = self._searcher(snapshot)
        upload = (query.image_bytes, query.image_name, query.path_hint)
        built = searcher.expression_query(terms, request.target, upload)
        _check_dimensions(snapshot.library, request.target, len(built.vector))
        answer = searcher.answer(
            built,
            request.target,
            k=pool_size(request),  # the page is a slice of this ranking (paging.py)
            candidates=request.candidates,
            rerank=request.rerank,
            where=request.where,
            min_score=request.min_score,
            dedup=request.dedup,
        )
        answer.notices[:0] = (
            snapshot.notices + random_weights_notice(self.models.spec) + self.models.notices
        )
        return page_of(answer, request, snapshot.library.db)

    def info(self) -> dict:
        """What `xmr info --json` prints: counts, model, types and sizes on disk."""
        from xmr.retrieval.stats import index_info

        snapshot = self._current()
        with self._state:
            return index_info(snapshot.library)

    def duplicates(
        self, *, threshold: float = DUPLICATE_THRESHOLD, under: Sequence[Path | str] = ()
    ) -> list[dict]:
        """Groups of near-duplicate images (cosine >= threshold) across the index, or under
        some folders, largest first; each item with what a person needs to pick one.
        Only the rows and vectors of the images in scope are read."""
        import numpy as np

        from xmr.retrieval.duplicates import PixelCheck, duplicate_groups

        if not 0 < threshold <= 1:
            raise InputError(f"threshold {threshold} must be above 0 and at most 1")
        library = self._current().library
        ids = SearchFilter.parse([str(folder) for folder in under]).allowed_ids(
            library.db, "images"
        )
        if ids is None:  # no folder given: every image
            ids = np.asarray(library.db.ids("images"), dtype=np.int64)
        rows = library.db.rows_by_ids("images", ids)
        with self._state:
            vectors = library.images.vectors.read(ids)  # (N, D)
        check = PixelCheck(
            {i: rows[int(ids[i])].path for i in range(len(ids))},
            {i: rows[int(ids[i])].content_hash for i in range(len(ids))},
        )
        out = []
        for group in duplicate_groups(vectors, threshold, check):
            items = [_duplicate_item(rows[int(i)]) for i in ids[group]]
            items.sort(key=lambda item: (-(item["width"] or 0) * (item["height"] or 0), item["id"]))
            if len(items) > 1:
                out.append({"count": len(items), "items": items})
        return out

    def examples(self, n: int = 4) -> dict:
        """Queries to offer on the page: texts of the index's own corpus (sentences the model
        was meant to match), else the model's shipped examples, else generic photo queries."""
        library = self._current().library
        counts = library.db.counts()
        picked = library.db.sample_texts(n, MAX_EXAMPLE_CHARS)
        if not picked:
            shipped = Path(self.models.spec.name) / EXAMPLES_FILE
            if self.models.spec.kind == "shipped" and shipped.is_file():
                picked = shipped.read_text().splitlines()[:n]
            else:
                picked = list(GENERIC_EXAMPLES[:n])
        return {
            "examples": picked,
            "images": counts["images"],
            "texts": counts["texts"],
            "model": library.encoder_spec,
        }

    def config(self) -> dict:
        """The defaults a face offers (the page reads them from /api/config): one constant
        each, in engine/request.py and retrieval/searcher.py."""
        from xmr.engine.request import MAX_K, ORDERS
        from xmr.retrieval.searcher import DEFAULT_CANDIDATES, MAX_RERANK_DEPTH

        return {
            "k": PAGE_K,
            "max_k": MAX_K,
            "candidates": DEFAULT_CANDIDATES,
            "max_rerank_depth": MAX_RERANK_DEPTH,
            "duplicate_threshold": DUPLICATE_THRESHOLD,
            "orders": list(ORDERS),
            "min_score": {"low": 0.0, "high": 1.0, "step": 0.01},
            **self.examples(),
        }

    def image_path(self, image_id: int) -> Path:
        """The file of an indexed image (the server serves files by id, never by path)."""
        return Path(self.indexed_file(image_id).path)

    def indexed_file(self, image_id: int) -> IndexedFile:
        """What the index recorded of an image's file: its path, size and mtime, which a
        server compares with what is on disk now before it serves the file."""
        if not 0 <= int(image_id) <= MAX_ID:  # beyond SQLite's integers: no such row
            raise ItemNotFound(f"no indexed image has id {image_id}")
        row = self._current().library.db.image_row(int(image_id))
        if row is None or row.state != "indexed":
            raise ItemNotFound(f"no indexed image has id {image_id}")
        return IndexedFile(int(row.id), row.path, row.size, row.mtime_ns)

    def reranker(self):
        """The re-ranker searches use (None: stage 1 only), loaded if it was not yet."""
        return self._searcher(self._current()).reranker

    @property
    def models(self) -> Models:
        if self._models is None:
            self._current()
        assert self._models is not None  # opening the index loads them
        return self._models

    def warm_up(self, image_tower: bool = True) -> list[str]:
        """Load what searches will need now rather than at the first query (a server)."""
        searcher = self._searcher(self._current())
        encoder = QueryEncoder(self.models)  # ONNX Runtime where it serves, else PyTorch
        if self.models.onnx_text() is None:
            self.models.text_encoder()
        if image_tower:
            encoder.preprocess  # noqa: B018 - loads the image tower its queries use
        if searcher.reranker is not None:
            searcher.reranker.fingerprint  # noqa: B018 - hashed once, here
        return self.models.loaded

    def _current(self) -> _Snapshot:
        """The open index as of the last commit: opened on first use, caught up after.

        New commits alone (same FAISS files and manifest) are added to the open index in
        place; a writer's saved FAISS file, a new manifest or a memory-mapped index
        (read-only) mean reading the index again."""
        with self._state:
            snapshot = self._snapshot
            if snapshot is None:
                self._snapshot = self._open()
                return self._snapshot
            generation = snapshot.library.db.generation()
            same_files = snapshot.stamp == _stamp(self.directory)
            if generation == snapshot.generation and same_files:
                return snapshot
            library = snapshot.library
            if same_files and not any(c.index.mmapped for c in (library.images, library.texts)):
                library.sync()
                snapshot.generation = generation
                return snapshot
            self._snapshot = self._open()
            return self._snapshot

    def _open(self) -> _Snapshot:
        library = Library.open(self.directory)
        if self._models is None or self._models.spec.canonical != library.encoder_spec:
            self._models = Models(library.encoder_spec, self.device, self.short_lived)
        self._models.token_layer = library.token_layer
        choice = choose_reranker(self.reranker_choice, self._models.spec, library)
        return _Snapshot(library, choice)

    def _searcher(self, snapshot: _Snapshot) -> Searcher:
        if snapshot.searcher is None:
            assert self._models is not None  # set by _open, which made the snapshot
            folder = snapshot.reranker.folder
            reranker = None if folder is None else self.models.reranker(folder)
            if snapshot.reranker.matcher is not None:
                reranker = self._matcher(snapshot)
            snapshot.searcher = Searcher(
                snapshot.library,
                QueryEncoder(self.models),
                reranker,
                self._state,
                self._models_thread,
                stage1_calibration(self.models.spec),
            )
        return snapshot.searcher

    def close(self) -> None:
        """Close the open index (its database connections); a later call opens it again."""
        with self._state:
            if self._snapshot is not None:
                self._snapshot.library.close()
                self._snapshot = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _matcher(self, snapshot: _Snapshot):
        """The pretrained matcher the snapshot's choice names; one `auto` picked that cannot
        load (transformers missing, weights unreachable) leaves stage 1 with a notice."""
        from dataclasses import replace

        from xmr.retrieval.errors import XmrError

        choice = snapshot.reranker
        assert choice.matcher is not None  # called only when the choice names a matcher
        try:
            return self.models.matcher(choice.matcher, self.feature_cache)
        except XmrError as exc:
            if not choice.automatic:
                raise
            snapshot.reranker = replace(choice, matcher=None, notice=f"{exc}; stage 1 only")
            return None

    # -- writing (one writer at a time per index; see indexer/) -------------------------
    def index(
        self,
        folders: Sequence[Path | str],
        *,
        model: str | None = None,
        exclude: Sequence[str] = (),
        include_hidden: bool = False,
        follow_links: bool = False,
        batch_size: int = 64,
        workers: int | None = None,
        commit_every: int = 256,
        max_pixels: int | None = None,
        keep_tokens: bool = True,
        token_pool: int | None = None,
        reranker: str = "auto",
        index_type: str | None = None,
        max_memory: str | None = None,
        executor: str = "local",
        actors: int | None = None,
        reporter: Reporter | None = None,
        feature_form: str = "fp16",
    ) -> WriteReport[IndexSummary]:
        """Bring the index in line with image folders: new, changed, moved and deleted
        files (engine/writes.py `index_images` says what each setting does). Then the
        ONNX exports its queries use are made, if they are not there yet."""
        report = writes.index_images(
            self.directory,
            folders,
            model=model,
            device=self.device,
            exclude=exclude,
            include_hidden=include_hidden,
            follow_links=follow_links,
            batch_size=batch_size,
            workers=workers,
            commit_every=commit_every,
            max_pixels=max_pixels,
            keep_tokens=keep_tokens,
            token_pool=token_pool,
            reranker=reranker,
            index_type=index_type,
            max_memory=max_memory,
            executor=executor,
            actors=actors,
            reporter=reporter,
            feature_form=feature_form,
        )
        report.notices += self.prepare_queries(report.loaded_encoder)
        return report

    def add_texts(
        self,
        file: Path | str,
        *,
        model: str | None = None,
        text_field: str | None = None,
        batch_size: int = 256,
        executor: str = "local",
        actors: int | None = None,
        reporter: Reporter | None = None,
    ) -> WriteReport[IndexSummary]:
        """Add a text corpus (.txt, .jsonl, .csv, or a Karpathy-style captions JSON),
        deduplicated; a re-run embeds only what changed."""
        return writes.add_text_corpus(
            self.directory,
            Path(file),
            model=model,
            device=self.device,
            text_field=text_field,
            batch_size=batch_size,
            executor=executor,
            actors=actors,
            reporter=reporter,
        )

    def compact(
        self,
        *,
        index_type: str | None = None,
        max_memory: str | None = None,
        shards: int = 1,
        executor: str = "local",
        reporter: Reporter | None = None,
    ) -> WriteReport[dict[str, Any]]:
        """Rebuild the FAISS indexes from the stored vectors; nothing is re-encoded. Then
        the ONNX exports its queries use are made, if they are not there yet."""
        report = writes.compact_index(
            self.directory,
            index_type=index_type,
            max_memory=max_memory,
            shards=shards,
            executor=executor,
            reporter=reporter,
        )
        report.notices += self.prepare_queries()
        return report

    def prepare_queries(self, loaded_encoder=None) -> list[str]:
        """Export the text and image towers and the native re-ranker this index's queries
        use to ONNX (retrieval/onnx/), unless the cache holds them already: the next
        `xmr search` is then a cold one without torch. Notices for what could not be made
        (queries then run through PyTorch); nothing when ONNX is off (XMR_ONNX=0, a GPU).
        `loaded_encoder`: the model as a write just loaded it, exported without a rebuild."""
        self.close()  # the index was just written: open it afresh
        snapshot = self._current()
        if not self.models.onnx:
            return []
        if loaded_encoder is not None:
            self.models.adopt(loaded_encoder)
        return self.models.prepare_onnx(snapshot.reranker.folder)

    def check(
        self, *, repair: bool = False, model: str | None = None, reporter: Reporter | None = None
    ) -> WriteReport[CheckReport]:
        """Verify every file of the index; with `repair`, fix what can be re-derived first.
        The summary is a report with `ok`, `findings` and `as_dict()`."""
        return writes.check_or_repair(
            self.directory, repair=repair, model=model, device=self.device, reporter=reporter
        )


def _check_dimensions(library: Library, target: str, query_dim: int) -> None:
    """A manifest or FAISS file copied in from an index of another model: say so in one
    line (what `xmr check` says) instead of FAISS's assertion."""
    collection = library.images if target == "images" else library.texts
    held = collection.index.dim
    if held != query_dim:
        raise IndexCorrupt(
            f"{target}.faiss in {library.directory} holds {held}-d vectors, but the model "
            f"of its manifest ({library.encoder_spec}) gives {query_dim}-d ones: a file of "
            "another index was copied in; run `xmr check` (then `xmr check --repair`)"
        )


def _duplicate_item(row) -> dict:
    return {
        "id": row.id,
        "path": row.path,
        "bytes": row.size,
        "width": row.width,
        "height": row.height,
        "format": row.format,
        "taken_at": row.taken_at.isoformat() if row.taken_at else None,
        "date": (file_date(row) or (None, None))[0],  # taken_at, else modified (local)
    }


def _stamp(directory: Path) -> tuple:
    """(mtime, size) of the files a writer replaces when it saves: a new manifest (kept
    features, policy) or FAISS file means the open index must be read again."""
    stamp: list[tuple[int, int] | None] = []
    for name in _INDEX_FILES:
        try:
            stat = (Path(directory) / name).stat()
            stamp.append((stat.st_mtime_ns, stat.st_size))
        except FileNotFoundError:
            stamp.append(None)
    return tuple(stamp)
