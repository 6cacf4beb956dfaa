"""`xmr check --repair`: act on what retrieval/check.py finds, in the order of what can be
re-derived. SQLite is the source of truth: a damaged file is moved aside and the index
rebuilt from the image folders and corpora it was built from (the manifest remembers
them). FAISS files and kept re-ranker features are derived: rebuilt or dropped. Vectors
and tokens are re-encoded, images from their files, texts from the database.
"""

from __future__ import annotations

from pathlib import Path

from xmr.indexer.images import IndexOptions, index_folders, reencode_damaged_images
from xmr.indexer.report import IndexSummary, Reporter
from xmr.indexer.texts import add_texts, reencode_damaged_texts
from xmr.retrieval.check import CheckReport, check_index
from xmr.retrieval.library import Library


def repair_index(
    directory: Path,
    encoder,
    options: IndexOptions | None = None,
    reporter: Reporter | None = None,
) -> tuple[CheckReport, IndexSummary]:
    """Check, repair what was found, check again. Returns the first report, each finding
    marked repaired or not (plus any the second check found anew), and what re-encoding
    did (its notices say what was moved aside or rebuilt)."""
    reporter = reporter or Reporter()
    before = check_index(directory)
    summary = IndexSummary()
    if not before.findings:
        return before, summary
    database_damaged = any(f.kind == "database" for f in before.findings)
    with Library.open_or_create(
        directory, encoder, verify="full" if database_damaged else "quick"
    ) as library:
        summary.notices += library.notices
        if library.writer_db.created:  # the database was moved aside (or lost): build it again
            _rebuild_from_sources(library, encoder, options, reporter, summary)
        else:
            for finding in before.findings:
                collection = getattr(library, finding.collection or "", None)
                if finding.kind == "records":
                    library.mark_damaged(collection, finding.ids)
                elif finding.kind == "features" and library.images.features is not None:
                    library.drop_features_file()
                elif finding.kind == "faiss":
                    library.rebuild_index(collection, reporter)
        images = reencode_damaged_images(library, encoder, options, reporter)
        _merge(summary, images)
        reencode_damaged_texts(library, encoder, summary, reporter)
    after = check_index(directory)
    remaining = {(f.file, f.kind) for f in after.findings}
    for finding in before.findings:
        finding.repaired = (finding.file, finding.kind) not in remaining
    seen = {(f.file, f.kind) for f in before.findings}
    for finding in after.findings:
        if (finding.file, finding.kind) not in seen:
            finding.repaired = False
            before.findings.append(finding)
    before.counts = after.counts
    return before, summary


def _rebuild_from_sources(library, encoder, options, reporter, summary: IndexSummary) -> None:
    roots = [Path(p) for p in library.manifest.get("image_roots") or []]
    corpora = [Path(p) for p in library.manifest.get("text_sources") or []]
    here = [p for p in roots if p.is_dir()]
    for path in [p for p in roots if not p.is_dir()] + [p for p in corpora if not p.is_file()]:
        summary.notices.append(f"{path} is gone; what it held is not in the rebuilt index")
    if here:
        _merge(summary, index_folders(library, encoder, here, options, reporter))
    for corpus in corpora:
        if corpus.is_file():
            _merge(summary, add_texts(library, encoder, corpus, reporter=reporter))


def _merge(total: IndexSummary, part: IndexSummary) -> None:
    for name in ("new", "updated", "repaired", "removed", "duplicates", "encoded"):
        setattr(total, name, getattr(total, name) + getattr(part, name))
    total.skipped += part.skipped
    total.notices += [n for n in part.notices if n not in total.notices]
