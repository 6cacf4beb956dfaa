"""The engine's writing operations: index image folders, add a text corpus, compact.

Each checks every argument before any model or index is touched, takes the index's
write lock (one writer at a time), resolves the model (the index's own, else the one
asked for, else the default) and returns its summary with notices for the caller to show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from xmr.engine.models import random_weights_notice
from xmr.retrieval.errors import InputError
from xmr.retrieval.library import Library, reranker_config_mismatch
from xmr.retrieval.modelspec import DEFAULT_MODEL

if TYPE_CHECKING:
    from xmr.indexer.executor import Executor
    from xmr.indexer.images import IndexOptions
    from xmr.indexer.report import IndexSummary, Reporter
    from xmr.retrieval.check import CheckReport

Summary = TypeVar("Summary")


@dataclass
class WriteReport(Generic[Summary]):
    summary: Summary  # IndexSummary; CheckReport; compact's {"collections", "sizes"} dict
    notices: list[str] = field(default_factory=list)


def model_for_index(directory: Path, model: str | None) -> str:
    """The model asked for, else the one the index was built with (its manifest, or the
    database's copy of it), else the default."""
    if model:
        return model
    from xmr.retrieval.library import stored_model_spec

    return stored_model_spec(directory) or DEFAULT_MODEL


def check_index_policy(index_type: str | None, max_memory: str | None) -> None:
    """Refuse a bad index type or memory budget before any model or index is touched."""
    from xmr.retrieval.index_choice import check_index_type, parse_size

    if index_type is not None:
        check_index_type(index_type)
    if max_memory is not None and max_memory.strip().lower() != "none":
        parse_size(max_memory)


def index_images(
    directory: Path,
    folders: Sequence[str | Path],
    *,
    model: str | None = None,
    device: str | None = None,
    options: IndexOptions | None = None,
    keep_tokens: bool = True,
    token_pool: int | None = None,
    reranker: str = "auto",
    index_type: str | None = None,
    max_memory: str | None = None,
    reporter: Reporter | None = None,
) -> WriteReport[IndexSummary]:
    """Every image under `folders`, incrementally (indexer/images.py `index_folders`).

    `reranker` (a folder, auto: the model's own, none) names the re-ranker whose image
    features the index keeps; a new index stores the image tokens of the vision block that
    re-ranker reads (the model's own under none)."""
    from xmr.indexer.images import IndexOptions, index_folders
    from xmr.retrieval.encoder import LazyEncoder
    from xmr.retrieval.reranker_files import (
        check_reranker_choice,
        folder_config,
        folder_fingerprint,
        folder_token_layer,
        reranker_folder,
        reranker_name,
    )

    check_index_policy(index_type, max_memory)
    check_reranker_choice(reranker)
    roots = [Path(f).expanduser() for f in folders]
    missing = [str(f) for f in roots if not f.exists()]
    if missing:
        raise InputError(f"{', '.join(missing)} does not exist; give a folder of images")
    encoder = LazyEncoder(model_for_index(directory, model), device)
    named = reranker_folder(reranker, encoder.spec)  # resolved once, read without loading
    layer = "auto" if reranker in ("auto", "none") else folder_token_layer(named)
    notices: list[str] = []
    with Library.open_or_create(
        directory, encoder, keep_tokens, index_type, max_memory, token_pool, layer
    ) as library:
        notices += library.notices  # what opening found and repaired
        notices += random_weights_notice(encoder.spec)  # once the index accepted the model
        folder = named if keep_tokens else None
        reason = folder and reranker_config_mismatch(
            library, folder_config(folder), reranker_name(folder)
        )
        if reason:  # decided from its config: no model loads on every run to find this out
            notices.append(f"{reason}; its image features are not kept")
            folder = None
        summary = index_folders(
            library,
            encoder,
            roots,
            options or IndexOptions(),
            reporter,
            lambda: folder and _load_reranker(folder, encoder, device),
            folder_fingerprint(folder) if folder else None,
        )
    return WriteReport(summary, notices)


def _load_reranker(folder: Path, encoder, device: str | None):
    from xmr.retrieval.reranker import load_reranker  # imports torch: only when images need it

    return load_reranker(folder, encoder, device)


def add_text_corpus(
    directory: Path,
    file: Path,
    *,
    model: str | None = None,
    device: str | None = None,
    text_field: str | None = None,
    batch_size: int = 256,
    executor: Executor | None = None,
    reporter: Reporter | None = None,
) -> WriteReport[IndexSummary]:
    """A text corpus, deduplicated; re-runs embed only what changed (indexer/texts.py).
    `executor`: where the encoding runs (indexer/executor.py; default: this process)."""
    from xmr.indexer.executor import LOCAL
    from xmr.indexer.texts import add_texts, read_corpus
    from xmr.retrieval.encoder import LazyEncoder

    read_corpus(file, text_field)  # refuse a bad file before loading a model
    encoder = LazyEncoder(model_for_index(directory, model), device)
    with Library.open_or_create(directory, encoder) as library:
        notices = list(library.notices) + random_weights_notice(encoder.spec)
        summary = add_texts(
            library, encoder, file, text_field, batch_size, reporter, executor or LOCAL
        )
    return WriteReport(summary, notices)


def compact_index(
    directory: Path,
    *,
    index_type: str | None = None,
    max_memory: str | None = None,
    shards: int = 1,
    executor: Executor | None = None,
    reporter: Reporter | None = None,
) -> WriteReport[dict]:
    """Rebuild the FAISS indexes from the stored vectors (Library.compact); nothing is
    re-encoded. IVF types may be filled in `shards` shards, run by `executor`
    (indexer/executor.py; default: this process). The summary also carries the files'
    sizes afterwards ("sizes")."""
    check_index_policy(index_type, max_memory)
    if shards > 1 and index_type in ("flat", "hnsw"):
        raise InputError(f"shards split IVF builds; use index type ivf or ivfpq, not {index_type}")
    map_shards = None if executor is None else executor.map_shards()
    with Library.open(directory, writable=True) as library:
        report = library.compact(index_type, max_memory, reporter, shards, map_shards)
        sizes = library.disk_usage()
        notices = list(library.notices)
    return WriteReport({"collections": report, "sizes": sizes}, notices)


def check_or_repair(
    directory: Path,
    *,
    repair: bool = False,
    model: str | None = None,
    device: str | None = None,
    reporter: Reporter | None = None,
) -> WriteReport[CheckReport]:
    """Verify every file of an index (retrieval/check.py); with `repair`, fix what can be
    re-derived or re-encoded first (indexer/repair.py). The summary is the check's report;
    `model` only matters when the manifest is lost with no copy to restore."""
    if not repair:
        from xmr.retrieval.check import check_index

        return WriteReport(check_index(directory))
    from xmr.indexer.repair import repair_index
    from xmr.retrieval.encoder import LazyEncoder

    encoder = LazyEncoder(model_for_index(directory, model), device)
    report, summary = repair_index(directory, encoder, reporter=reporter)
    return WriteReport(report, list(summary.notices))
