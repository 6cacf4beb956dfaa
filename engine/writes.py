"""The engine's writing operations: index image folders, add a text corpus, compact,
check and repair (`Engine.index`, `add_texts`, `compact`, `check` call these).

Each checks every argument before any model or index is touched, takes the index's
write lock (one writer at a time), resolves the model (the index's own, else the one
asked for, else the default) and returns its summary with notices for the caller to show.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from xmr.engine.models import auto_reranker, random_weights_notice
from xmr.engine.progress import Reporter
from xmr.retrieval.errors import InputError
from xmr.retrieval.library import Library
from xmr.retrieval.modelspec import DEFAULT_MODEL, ModelSpec
from xmr.retrieval.reranker_compat import reranker_config_mismatch
from xmr.retrieval.reranker_files import folder_config, reranker_name

if TYPE_CHECKING:
    from xmr.engine.progress import IndexSummary
    from xmr.indexer.executor import Executor
    from xmr.indexer.images import IndexOptions
    from xmr.retrieval.check import CheckReport
    from xmr.retrieval.encoder import Encoder, LazyEncoder
    from xmr.retrieval.reranker import RerankerRuntime

Summary = TypeVar("Summary")


@dataclass
class WriteReport(Generic[Summary]):
    """What a writing operation did (`summary`) and what a person should know (`notices`)."""

    summary: Summary  # IndexSummary; compact: {"collections", "sizes"}; check: CheckReport
    notices: list[str] = field(default_factory=list)
    # The encoder the operation loaded (None if it needed none): the ONNX export reuses it.
    loaded_encoder: Any = field(default=None, repr=False, compare=False)


def parse_executor(executor: str, actors: int | None = None) -> Executor:
    """'local' | 'ray' | 'ray:ADDRESS' (and a Ray actor count) -> an Executor; refused
    before any work."""
    from dataclasses import replace

    from xmr.indexer.executor import parse_executor as parse_text

    parsed = parse_text(executor)
    if actors is not None and parsed.kind != "ray":
        raise InputError(
            "actors sizes a Ray actor pool: use executor ray or ray:ADDRESS", setting="actors"
        )
    if actors is not None and actors < 1:
        raise InputError(f"actors must be at least 1, not {actors}", setting="actors")
    return replace(parsed, actors=actors)


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
    folders: Sequence[Path | str],
    *,
    model: str | None = None,
    device: str | None = None,
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
    """Every image under `folders`, incrementally (indexer/images.py `index_folders`).

    `reranker` (a folder, auto: the model's own, none) names the re-ranker whose image
    features the index keeps; a new index stores the image tokens of the vision block that
    re-ranker reads (the model's own under none). `workers`: decoding processes (None:
    one per core); `max_pixels`: the decompression-bomb guard (None: the default)."""
    from xmr.indexer.executor import let_idle_threads_sleep
    from xmr.indexer.images import IndexOptions, index_folders
    from xmr.retrieval.encoder import LazyEncoder
    from xmr.retrieval.imageio import DEFAULT_MAX_PIXELS, default_workers

    let_idle_threads_sleep()  # before the encoder loads torch
    from xmr.retrieval.reranker_files import (
        check_reranker_choice,
        folder_fingerprint,
        folder_token_source,
        reranker_folder,
    )

    run_on = parse_executor(executor, actors)  # a bad value fails before any work
    options = IndexOptions(
        exclude=tuple(exclude),
        include_hidden=include_hidden,
        follow_links=follow_links,
        batch_size=batch_size,
        workers=default_workers() if workers is None else workers,
        commit_every=commit_every,
        max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
        executor=run_on,
    )
    check_index_policy(index_type, max_memory)
    check_reranker_choice(reranker)
    _check_matcher(reranker)
    roots = [Path(f).expanduser() for f in folders]
    missing = [str(f) for f in roots if not f.exists()]
    if missing:
        raise InputError(f"{', '.join(missing)} does not exist; give a folder of images")
    encoder = LazyEncoder(model_for_index(directory, model), device)
    named = reranker_folder(reranker, encoder.spec)  # resolved once, read without loading
    tokens = "auto" if reranker in ("auto", "none") else folder_token_source(named)
    notices: list[str] = []
    with Library.open_or_create(
        directory, encoder, keep_tokens, index_type, max_memory, token_pool, tokens
    ) as library:
        notices += library.notices  # what opening found and repaired
        notices += random_weights_notice(encoder.spec)  # once the index accepted the model
        # decided from configs: no model loads on every run to find out what fits
        folder, reason = _kept_features_reranker(library, reranker, named, encoder.spec)
        if reason and keep_tokens:
            notices.append(reason)
        folder = folder if keep_tokens else None
        summary = index_folders(
            library,
            encoder,
            roots,
            options,
            reporter,
            lambda: folder and _load_reranker(folder, encoder, device),
            folder_fingerprint(folder) if folder else None,
        )
        notices += _keep_matcher_features(
            library, reranker, device, feature_form, options, reporter
        )
    return WriteReport(summary, notices, encoder.load() if encoder.loaded else None)


def _kept_features_reranker(
    library: Library, reranker: str, named: Path | None, spec: ModelSpec
) -> tuple[Path | None, str | None]:
    """The re-ranker whose image features the index keeps, and what to tell the user: under
    auto the model's re-ranker that the index's tokens suit (an index built for an earlier
    one keeps that one's), else the one named if they suit it."""
    if reranker == "auto":
        choice = auto_reranker(spec, library, "its image features are not kept")
        return choice.folder, choice.notice
    reason = named and reranker_config_mismatch(library, folder_config(named), reranker_name(named))
    if reason:
        return None, f"{reason}; its image features are not kept"
    return named, None


def _check_matcher(reranker: str) -> None:
    """A named BLIP matcher that cannot load fails before the encoder's pass, not after."""
    from xmr.retrieval.matcher_names import matcher_source

    source = matcher_source(reranker)
    if source is not None:
        from xmr.retrieval.hub_weights import check_available

        check_available(source)


def _keep_matcher_features(
    library: Library,
    reranker: str,
    device: str | None,
    form: str,
    options: IndexOptions,
    reporter: Reporter | None,
) -> list[str]:
    """A pretrained matcher's vision tokens for every image (indexer/matcher_pass.py): the
    one named, or under auto the one the index already keeps."""
    from xmr.retrieval.matcher_features import MANIFEST_KEY
    from xmr.retrieval.matcher_names import MatcherSource, matcher_source

    source = matcher_source(reranker)
    kept = library.manifest.get(MANIFEST_KEY)
    if source is None and reranker == "auto" and kept and kept.get("source"):
        source, form = MatcherSource.from_dict(kept["source"]), kept.get("form", form)
    if source is None:
        return []
    from xmr.indexer.matcher_pass import keep_matcher_features

    report = keep_matcher_features(
        library, source, device, form, reporter, options.batch_size, options.workers,
        options.max_pixels,
    )  # fmt: skip
    if report["unreadable"]:
        return [f"{report['unreadable']} images could not be read for {source.name}'s features"]
    return []


def _load_reranker(
    folder: Path, encoder: Encoder | LazyEncoder | None, device: str | None
) -> RerankerRuntime:
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
    executor: str = "local",
    actors: int | None = None,
    reporter: Reporter | None = None,
) -> WriteReport[IndexSummary]:
    """A text corpus, deduplicated; re-runs embed only what changed (indexer/texts.py).
    `executor`: where the encoding runs ('local', 'ray', 'ray:ADDRESS')."""
    from xmr.indexer.texts import add_texts, read_corpus
    from xmr.retrieval.encoder import LazyEncoder

    run_on = parse_executor(executor, actors)
    read_corpus(file, text_field)  # refuse a bad file before loading a model
    encoder = LazyEncoder(model_for_index(directory, model), device)
    with Library.open_or_create(directory, encoder) as library:
        notices = list(library.notices) + random_weights_notice(encoder.spec)
        summary = add_texts(library, encoder, file, text_field, batch_size, reporter, run_on)
    return WriteReport(summary, notices)


def compact_index(
    directory: Path,
    *,
    index_type: str | None = None,
    max_memory: str | None = None,
    shards: int = 1,
    executor: str = "local",
    reporter: Reporter | None = None,
) -> WriteReport[dict[str, Any]]:
    """Rebuild the FAISS indexes from the stored vectors (Library.compact); nothing is
    re-encoded. IVF types may be filled in `shards` shards, run by `executor` ('local':
    one after another here; 'ray', 'ray:ADDRESS': Ray tasks). The summary also carries the files'
    sizes afterwards ("sizes")."""
    run_on = parse_executor(executor)
    check_index_policy(index_type, max_memory)
    if shards < 1:
        raise InputError(f"shards must be at least 1, not {shards}", setting="shards")
    if shards > 1 and index_type in ("flat", "hnsw"):
        raise InputError(f"shards split IVF builds; use index type ivf or ivfpq, not {index_type}")
    map_shards = run_on.map_shards()
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
