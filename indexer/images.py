"""`xmr index`: bring an index in line with folders of images, incrementally.

Plan (no pixels touched):
  unchanged  size+mtime equal                          -> nothing
  touched    stat differs, same content hash           -> update stat
  moved      new path, hash of a file that vanished    -> update path, keep id/vector
  duplicate  new path, hash of an indexed file         -> new row, copy vector
  changed    stat and hash differ                      -> re-embed under a new id
  new        unknown path and hash                     -> embed
  removed    indexed path no longer on disk            -> delete row and vector
  repaired   a row whose stored records were lost      -> re-embed under a new id
             (db.Damaged; never "unchanged", never the source of a copy or a move)
Then embed in batches, here or on a Ray cluster (executor.py: the same stream either
way); this process alone writes, committing rows + vectors every `commit_every` images,
so a killed run resumes from the last commit. Texts whose records were lost are re-encoded too (from
the database, see texts.reencode_damaged_texts).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xmr.indexer.executor import LOCAL, Executor
from xmr.indexer.report import IndexSummary, Reporter
from xmr.indexer.scan import ScannedFile, WalkCounts, scan_file, scan_folders
from xmr.indexer.texts import reencode_damaged_texts
from xmr.retrieval.content_hash import content_hash
from xmr.retrieval.db import Database, ImageRow
from xmr.retrieval.imageio import DEFAULT_MAX_PIXELS, default_workers
from xmr.retrieval.library import Library


@dataclass
class IndexOptions:
    exclude: tuple[str, ...] = ()
    include_hidden: bool = False
    follow_links: bool = False  # enter symlinked folders (never in a loop, never /proc)
    batch_size: int = 64
    workers: int = field(default_factory=default_workers)
    commit_every: int = 256  # images per transaction: what a kill can cost at most
    max_pixels: int = DEFAULT_MAX_PIXELS
    executor: Executor = LOCAL  # where decoding and encoding run (indexer/executor.py)


@dataclass
class _Pending:
    """A file that needs the encoder."""

    file: ScannedFile
    content_hash: str
    replaces: int | None  # id of the stale row of a changed file
    repair: bool = False  # the stale row's content is the same: its records were lost


def index_folders(
    library: Library,
    encoder,
    roots: list[Path],
    options: IndexOptions | None = None,
    reporter: Reporter | None = None,
    reranker: Callable[[], object] | None = None,
    reranker_fingerprint: str | None = None,
) -> IndexSummary:
    """`reranker`: loads the re-ranker whose image features the index keeps (see
    feature_cache.py; returning None keeps none). Called only when images need the
    encoder, or when `reranker_fingerprint` (that re-ranker's, read from its files) says
    the kept features are missing or another re-ranker's: a run with nothing to embed
    loads neither model, and the first run after the re-ranker changed refreshes them."""
    options = options or IndexOptions()
    reporter = reporter or Reporter()
    started = time.monotonic()
    summary = IndexSummary()
    roots = [Path(r).expanduser().resolve() for r in roots]

    def unreadable(path: str, reason: str) -> None:
        summary.skipped.append((path, reason))
        reporter.skip(path, reason)

    walked = WalkCounts()
    scanned = {
        f.path: f
        for f in scan_folders(
            roots,
            options.exclude,
            options.include_hidden,
            follow_links=options.follow_links,
            on_skip=unreadable,
            counts=walked,
        )
    }
    summary.links_not_followed = walked.links_not_followed
    summary.notices = list(library.notices) + [
        f"{path}: a pseudo file system, not entered" for path in walked.pseudo_skipped
    ]
    with library.writer_db.session() as session:
        known = {row.path: row for row in Database.image_rows_under(session, roots)}
        pending, twins = _plan(session, library, scanned, known, summary, reporter)
        library.writer_db.bump_generation(session)
        session.commit()
    library.record_sources("image_roots", [str(root) for root in roots if root.is_dir()])

    if pending or library.features_stale(reranker_fingerprint):
        library.keep_reranker_features(reranker and reranker(), reporter)
    _embed(library, encoder, pending, twins, options, summary, reporter)
    reencode_damaged_texts(library, encoder, summary, reporter)
    library.save(reporter)
    waiting = len(library.db.damaged_ids("images"))
    if waiting:
        summary.notices.append(
            f"{waiting} images outside these folders lost their stored records; "
            "`xmr check --repair` (or `xmr index` on their folders) re-encodes them"
        )
    summary.seconds = time.monotonic() - started
    return summary


def reencode_damaged_images(
    library: Library,
    encoder,
    options: IndexOptions | None = None,
    reporter: Reporter | None = None,
) -> IndexSummary:
    """Re-embed every image whose records were lost, wherever it lies (`xmr check
    --repair`): the same plan as `index_folders`, over those rows' files only (a vanished
    file's row is removed, a changed one re-embedded as such)."""
    options = options or IndexOptions()
    reporter = reporter or Reporter()
    started = time.monotonic()
    summary = IndexSummary()
    with library.writer_db.session() as session:
        damaged = library.writer_db.damaged_in(session, "images")
        if not damaged:
            return summary
        rows = library.writer_db.rows_in(session, "images", damaged).values()
        known = {row.path: row for row in rows}
        scanned = {}
        for path in known:
            file = scan_file(Path(path), lambda p, reason: None)
            if file is not None:
                scanned[path] = file
        pending, twins = _plan(session, library, scanned, known, summary, reporter)
        library.writer_db.bump_generation(session)
        session.commit()
    _embed(library, encoder, pending, twins, options, summary, reporter)
    library.save(reporter)
    summary.seconds = time.monotonic() - started
    return summary


def _plan(session, library, scanned, known, summary, reporter):
    """Apply every change that needs no encoder; return the files that do."""
    damaged = set(library.writer_db.damaged_in(session, "images"))
    to_hash: list[ScannedFile] = []
    for path, file in scanned.items():
        row = known.get(path)
        if row is not None and row.id in damaged:
            to_hash.append(file)  # its records were lost: re-embed, whatever the stat says
        elif row is not None and row.size == file.size and row.mtime_ns == file.mtime_ns:
            if row.state == "indexed":
                summary.unchanged += 1
            else:
                summary.skipped_before += 1
        else:
            to_hash.append(file)
    hashes = _hash_files(to_hash, reporter)
    gone = {path: row for path, row in known.items() if path not in scanned}
    gone_by_hash = {
        row.content_hash: row
        for row in gone.values()
        if row.state == "indexed" and row.id not in damaged  # a lost vector cannot move
    }
    indexed_by_hash = Database.indexed_hashes(session, leave_out=damaged) if to_hash else {}

    pending: list[_Pending] = []
    twins: dict[str, list[_Pending]] = {}  # hash -> later files of the same new content
    for file in to_hash:
        digest = hashes.get(file.path)
        if digest is None:
            summary.skipped.append((file.path, "cannot read file"))
            reporter.skip(file.path, "cannot read file")
            continue
        row = known.get(file.path)
        if row is not None and row.id in damaged:
            same = row.content_hash == digest
            pending.append(_Pending(file, digest, row.id, repair=same))
            twins.setdefault(digest, [])
        elif row is not None and row.state == "indexed" and row.content_hash == digest:
            row.size, row.mtime_ns = file.size, file.mtime_ns
            summary.touched += 1
        elif row is None and digest in gone_by_hash:
            moved = gone_by_hash.pop(digest)
            gone.pop(moved.path)
            moved.path, moved.size, moved.mtime_ns = file.path, file.size, file.mtime_ns
            session.flush()  # the old path is free before another row may claim it
            summary.moved += 1
        elif (twin := _twin(session, library, indexed_by_hash, digest)) is not None:
            _add_copy(session, library, twin, file, replaces=None if row is None else row.id)
            summary.duplicates += 1
        elif digest in twins:
            twins[digest].append(_Pending(file, digest, None if row is None else row.id))
        else:
            twins[digest] = []
            pending.append(_Pending(file, digest, None if row is None else row.id))
    summary.removed += sum(row.state == "indexed" for row in gone.values())  # bad files never were
    _remove_rows(session, library, list(gone.values()))
    return pending, twins


def _remove_rows(session, library, rows: list[ImageRow]) -> None:
    """Delete vanished files' rows and vectors in bulk: one FAISS call, chunked SQL."""
    ids = [row.id for row in rows]
    library.images.index.remove(ids)  # one pass over the index, not one per id
    Database.delete_rows(session, ImageRow, ids)


def _hash_files(files: list[ScannedFile], reporter: Reporter) -> dict[str, str]:
    if not files:
        return {}
    reporter.stage("hashing", len(files))
    hashes: dict[str, str] = {}

    def one(file: ScannedFile) -> tuple[str, str | None]:
        try:
            return file.path, content_hash(file.path)
        except OSError:
            return file.path, None

    # hashlib releases the GIL on large buffers, so threads overlap file I/O and hashing.
    with ThreadPoolExecutor(max_workers=4) as pool:
        for path, digest in pool.map(one, files):
            if digest is not None:
                hashes[path] = digest
            reporter.advance(1)
    reporter.done()
    return hashes


def _twin(session, library, indexed_by_hash: dict[str, int], digest: str) -> ImageRow | None:
    row_id = indexed_by_hash.get(digest)
    return (
        None
        if row_id is None
        else library.writer_db.rows_in(session, "images", [row_id]).get(row_id)
    )


def _add_copy(session, library, twin: ImageRow, file: ScannedFile, replaces: int | None):
    _drop_stale(session, library, replaces)
    row = _image_row(file, twin.content_hash, twin)
    session.add(row)
    session.flush()
    library.images.copy(twin.id, row.id)


def _image_row(file: ScannedFile, digest: str, image=None, error: str | None = None) -> ImageRow:
    """A file's row: its stat and hash, and the picture's facts from `image` (a DecodedImage,
    or the ImageRow of an indexed twin); with `error`, the row of a file that was skipped."""
    return ImageRow(
        path=file.path,
        size=file.size,
        mtime_ns=file.mtime_ns,
        content_hash=digest,
        width=(image.width or None) if image is not None else None,
        height=(image.height or None) if image is not None else None,
        format=image.format if image is not None else None,
        taken_at=image.taken_at if image is not None else None,
        state="indexed" if error is None else "skipped",
        error=error,
    )


def _drop_stale(session, library, row_id: int | None) -> None:
    """Remove the row of a file whose content changed, before its replacement is added."""
    if row_id is not None:
        library.images.index.remove([row_id])
        Database.delete_rows(session, ImageRow, [row_id])
        session.flush()


def _embed(library, encoder, pending, twins, options, summary, reporter) -> None:
    """Run the decode -> encode step on `options.executor` and write what comes back."""
    if not pending:
        return
    reporter.stage("embedding", len(pending))
    batches = options.executor.embed_images(
        [p.file.path for p in pending],
        encoder,
        library.token_layer,
        options.batch_size,
        options.workers,
        options.max_pixels,
        library.token_pixels > 0,
    )
    session = library.writer_db.session()
    uncommitted = 0
    try:
        for batch in batches:
            _write_batch(session, library, pending, twins, batch, summary, reporter)
            uncommitted += len(batch.images)
            reporter.advance(len(batch.images))
            if uncommitted >= options.commit_every:
                _commit(library, session)
                uncommitted = 0
        _commit(library, session)
    finally:
        session.close()
        reporter.done()


def _write_batch(session, library, pending, twins, batch, summary, reporter) -> None:
    """Rows for one batch (in path order, so ids follow it), then its vectors and copies."""
    if batch.encoded is not None:
        summary.encode_seconds += batch.encode_seconds
        summary.encoded += len(batch.decoded)
    rows = []
    for decoded in batch.images:
        item = pending[decoded.position]
        _drop_stale(session, library, item.replaces)
        row = _image_row(item.file, item.content_hash, decoded, decoded.error)
        session.add(row)
        if decoded.error is not None:
            # Later files with the same bytes fail the same way (e.g. several zero-byte
            # files): record and report each, or they vanish silently.
            for failed in [item, *twins.get(item.content_hash, ())]:
                if failed is not item:
                    _drop_stale(session, library, failed.replaces)
                    session.add(_image_row(failed.file, failed.content_hash, error=decoded.error))
                summary.skipped.append((failed.file.path, decoded.error))
                reporter.skip(failed.file.path, decoded.error)
        else:
            rows.append(row)
            if item.replaces is None:
                summary.new += 1
            elif item.repair:
                summary.repaired += 1
            else:
                summary.updated += 1
    session.flush()  # assigns ids
    if rows:
        ids = np.array([row.id for row in rows], dtype=np.int64)
        library.images.write(ids, batch.encoded.vectors, batch.encoded.tokens)
        for row in rows:
            for twin in twins.get(row.content_hash, ()):
                _add_copy(session, library, row, twin.file, replaces=twin.replaces)
                summary.duplicates += 1


def _commit(library: Library, session) -> None:
    """Vectors reach the disk before the rows that point at them."""
    library.images.flush()
    Database.bump_generation(session)
    session.commit()
