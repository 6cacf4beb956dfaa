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
from pathlib import Path
from typing import Any

from xmr.engine import writes
from xmr.engine.models import (
    Models,
    QueryEncoder,
    RerankerChoice,
    choose_reranker,
    random_weights_notice,
)
from xmr.engine.query_input import QueryInput
from xmr.retrieval.errors import InputError, ItemNotFound
from xmr.retrieval.filters import SearchFilter
from xmr.retrieval.library import Library
from xmr.retrieval.locations import default_index_dir
from xmr.retrieval.searcher import TARGETS, Answer, Searcher

_INDEX_FILES = ("manifest.json", "images.faiss.json", "texts.faiss.json")
EXAMPLES_FILE = "examples.txt"  # a shipped model's sentences it answers well, one a line
MAX_EXAMPLE_CHARS = 120
GENERIC_EXAMPLES = (
    "a dog running on a sandy beach",
    "a city street at night with lights",
    "a plate of food on a wooden table",
    "snowy mountains under a blue sky",
)


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
    def __init__(
        self, index: Path | None = None, device: str | None = None, reranker: str = "auto"
    ):
        self.directory = Path(index).expanduser() if index is not None else default_index_dir()
        self.device = device
        self.reranker_choice = reranker
        self._state = threading.Lock()
        self._models_thread = ModelThread()
        self._snapshot: _Snapshot | None = None
        self._models: Models | None = None

    # -- reading -------------------------------------------------------------------------
    def search(
        self,
        query: QueryInput | str,
        target: str = "images",
        k: int = 10,
        candidates: int | None = None,
        rerank: bool = True,
        where: SearchFilter | None = None,
        min_score: float | None = None,
        dedup: float | None = None,
    ) -> Answer:
        """The top-k `target` items for `query`, with notices and timings (ms); see
        Searcher.answer for `min_score` and `dedup`."""
        query = QueryInput(text=query) if isinstance(query, str) else query
        terms = query.terms()  # a bad expression fails before anything is loaded or encoded
        if target not in TARGETS:
            raise InputError(f"unknown target '{target}'; use images or texts")
        if k < 1 or (candidates is not None and candidates < 1):
            raise InputError("k and candidates must be at least 1")
        snapshot = self._current()
        searcher = self._searcher(snapshot)
        upload = (query.image_bytes, query.image_name, query.path_hint)
        built = searcher.expression_query(terms, target, upload)
        answer = searcher.answer(
            built, target, k, candidates, rerank, where=where, min_score=min_score, dedup=dedup
        )
        answer.notices[:0] = snapshot.notices + random_weights_notice(self.models.spec)
        return answer

    def info(self) -> dict:
        """What `xmr info --json` prints: counts, model, types and sizes on disk."""
        from xmr.retrieval.stats import index_info

        snapshot = self._current()
        with self._state:
            return index_info(snapshot.library)

    def duplicates(self, threshold: float = 0.95, under: Sequence[str | Path] = ()) -> list[dict]:
        """Groups of near-duplicate images (cosine >= threshold) across the index, or under
        some folders, largest first; each item with what a person needs to pick one."""
        import numpy as np
        from sqlalchemy import select

        from xmr.retrieval.db import ImageRow
        from xmr.retrieval.duplicates import PixelCheck, duplicate_groups

        if not 0 < threshold <= 1:
            raise InputError(f"threshold {threshold} must be above 0 and at most 1")
        library = self._current().library
        where = SearchFilter.parse(under)
        if where.active:
            ids = where.allowed_ids(library.db, "images")
            assert ids is not None  # an active filter always yields ids
        else:
            ids = np.asarray(library.db.ids(ImageRow), dtype=np.int64)
        with self._state:
            vectors = library.images.vectors.read(ids)  # (N, D)
        with library.db.session() as session:
            files = {i: path for i, path in session.execute(select(ImageRow.id, ImageRow.path))}
            hashes = {i: h for i, h in session.execute(select(ImageRow.id, ImageRow.content_hash))}
        check = PixelCheck(
            {i: files[int(ids[i])] for i in range(len(ids))},
            {i: hashes.get(int(ids[i])) for i in range(len(ids))},
        )
        groups = [ids[g] for g in duplicate_groups(vectors, threshold, check)]
        wanted = [int(i) for g in groups for i in g]
        rows: dict[int, ImageRow] = {}
        with library.db.session() as session:
            for start in range(0, len(wanted), 500):  # SQLite caps bound parameters
                chunk = select(ImageRow).where(ImageRow.id.in_(wanted[start : start + 500]))
                rows.update((r.id, r) for r in session.scalars(chunk))
        out = []
        for group in groups:
            items = [_duplicate_item(rows[int(i)]) for i in group if int(i) in rows]
            items.sort(key=lambda item: (-(item["width"] or 0) * (item["height"] or 0), item["id"]))
            if len(items) > 1:
                out.append({"count": len(items), "items": items})
        return out

    def examples(self, n: int = 4) -> dict:
        """Queries to offer on the page: texts of the index's own corpus (sentences the model
        was meant to match), else the model's shipped examples, else generic photo queries."""
        from sqlalchemy import func, select

        from xmr.retrieval.db import ImageRow, TextRow

        library = self._current().library
        with library.db.session() as session:
            images = session.scalar(select(func.count()).where(ImageRow.state == "indexed"))
            short = select(TextRow.text).where(func.length(TextRow.text) <= MAX_EXAMPLE_CHARS)
            texts = session.scalar(select(func.count()).select_from(TextRow)) or 0
            step = max(1, texts // n)
            picked = list(session.scalars(short.where(TextRow.id % step == 0).limit(n)))
            if len(picked) < n:  # too few short ones at the spaced ids: take any short ones
                picked = list(session.scalars(short.limit(n)))
        if not picked:
            shipped = Path(self.models.spec.name) / EXAMPLES_FILE
            if self.models.spec.kind == "shipped" and shipped.is_file():
                picked = shipped.read_text().splitlines()[:n]
            else:
                picked = list(GENERIC_EXAMPLES[:n])
        return {
            "examples": picked,
            "images": images,
            "texts": texts,
            "model": library.encoder_spec,
        }

    def image_path(self, image_id: int) -> Path:
        """The file of an indexed image (the server serves files by id, never by path)."""
        from xmr.retrieval.db import ImageRow

        library = self._current().library
        with library.db.session() as session:
            row = session.get(ImageRow, int(image_id))
        if row is None or row.state != "indexed":
            raise ItemNotFound(f"no indexed image has id {image_id}")
        return Path(row.path)

    def reranker(self):
        """The re-ranker searches use (None: stage 1 only), loaded if it was not yet."""
        return self._searcher(self._current()).reranker

    @property
    def models(self) -> Models:
        if self._models is None:
            self._current()
        assert self._models is not None  # set by _open, whenever a snapshot is made
        return self._models

    def warm_up(self, image_tower: bool = True) -> list[str]:
        """Load what searches will need now rather than at the first query (a server)."""
        searcher = self._searcher(self._current())
        self.models.text_encoder()
        if image_tower:
            self.models.encoder()
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
            self._models = Models(library.encoder_spec, self.device)
        choice = choose_reranker(self.reranker_choice, self._models.spec, library)
        return _Snapshot(library, choice)

    def _searcher(self, snapshot: _Snapshot) -> Searcher:
        if snapshot.searcher is None:
            assert self._models is not None  # set by _open, which made the snapshot
            folder = snapshot.reranker.folder
            reranker = None if folder is None else self._models.reranker(folder)
            snapshot.searcher = Searcher(
                snapshot.library,
                QueryEncoder(self._models),
                reranker,
                self._state,
                self._models_thread,
            )
        return snapshot.searcher

    # -- writing (one writer at a time per index; see indexer/) -------------------------
    def index(self, folders: Sequence[str | Path], **options: Any) -> writes.WriteReport:
        """Bring the index in line with image folders (engine/writes.py `index_images`)."""
        return writes.index_images(self.directory, folders, device=self.device, **options)

    def add_texts(self, file: Path, **options: Any) -> writes.WriteReport:
        return writes.add_text_corpus(self.directory, file, device=self.device, **options)

    def compact(self, **options: Any) -> writes.WriteReport:

        return writes.compact_index(self.directory, **options)


def _duplicate_item(row) -> dict:
    return {
        "id": row.id,
        "path": row.path,
        "bytes": row.size,
        "width": row.width,
        "height": row.height,
        "format": row.format,
        "taken_at": row.taken_at.isoformat() if row.taken_at else None,
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
