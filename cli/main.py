"""The `xmr` command line. Each command parses, calls one library function, formats.

Heavy imports (torch, open_clip, faiss) happen inside commands, so `xmr --help` and
argument errors answer at once.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cli.errors import handle_errors
from cli.options import (
    DeviceOption,
    IndexOption,
    IndexTypeOption,
    MaxMemoryOption,
    ModelOption,
    QuietOption,
    check_index_options,
    index_dir,
    load_encoder_for_cli,
    model_for_index,
    warn_random_weights,
)

app = typer.Typer(
    name="xmr",
    help="Cross-modal retrieval: index images and texts, search text->image, image->image, "
    "image->text.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.command()
@handle_errors
def index(
    folders: list[Path] = typer.Argument(..., help="Folders (or files) of images to index."),
    index: Path = IndexOption,
    model: str = ModelOption,
    device: str = DeviceOption,
    exclude: list[str] = typer.Option(
        [], "--exclude", "-x", help="Glob to leave out (repeatable)."
    ),
    hidden: bool = typer.Option(False, "--hidden", help="Include hidden files and folders."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    workers: int = typer.Option(
        None, "--workers", min=0, help="Decoding processes [default: cores]."
    ),
    commit_every: int = typer.Option(
        256, "--commit-every", min=1, help="Images per commit: the most a kill can lose."
    ),
    max_pixels: int = typer.Option(None, "--max-pixels", help="Decompression-bomb guard."),
    no_tokens: bool = typer.Option(
        False, "--no-tokens", help="Do not keep token features (no re-ranking; less disk)."
    ),
    token_pool: int = typer.Option(
        None,
        "--token-pool",
        min=1,
        help="Store image patch tokens k x k pooled: k^2 less disk; needs a re-ranker "
        "trained with --image-pool k. Fixed at the index's creation [default: 1].",
    ),
    reranker: str = typer.Option(
        "auto",
        "--reranker",
        help="Keep this re-ranker's image features so text searches skip that work: a "
        "folder, 'auto' (the model's own) or 'none'.",
    ),
    index_type: str = IndexTypeOption,
    max_memory: str = MaxMemoryOption,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    quiet: bool = QuietOption,
):
    """Index every image under FOLDERS, incrementally (new, changed, moved, deleted)."""
    from cli.progress import BarReporter
    from indexer.images import IndexOptions, index_folders
    from retrieval.imageio import DEFAULT_MAX_PIXELS, default_workers
    from retrieval.library import Library, reranker_config_mismatch
    from retrieval.reranker_files import (
        check_reranker_choice,
        folder_config,
        folder_fingerprint,
        folder_token_layer,
        reranker_folder,
        reranker_name,
    )

    check_index_options(index_type, max_memory)
    check_reranker_choice(reranker)
    missing = [str(f) for f in folders if not f.expanduser().exists()]
    if missing:  # before any model or index is touched
        from retrieval.errors import InputError

        raise InputError(f"{', '.join(missing)} does not exist; give a folder of images")
    directory = index_dir(index)
    spec = model_for_index(directory, model)
    encoder = load_encoder_for_cli(spec, device, quiet, lazy=True, warn=False)
    options = IndexOptions(
        exclude=tuple(exclude),
        include_hidden=hidden,
        batch_size=batch_size,
        workers=default_workers() if workers is None else workers,
        commit_every=commit_every,
        max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
    )
    # A new index stores the image tokens the re-ranker reads: --reranker's, or under 'none'
    # the model's own, which searches use by default.
    named = reranker_folder(reranker, encoder)  # resolved once, read without loading
    layer = "auto" if reranker in ("auto", "none") else folder_token_layer(named)
    with Library.open_or_create(
        directory, encoder, not no_tokens, index_type, max_memory, token_pool, layer
    ) as library:
        warn_random_weights(encoder, quiet)  # only once the index accepted the model
        folder = None if no_tokens else named
        reason = folder and reranker_config_mismatch(
            library, folder_config(folder), reranker_name(folder)
        )
        if reason:  # decided from its config: no model loads on every run to find this out
            typer.echo(f"note: {reason}; its image features are not kept", err=True)
            folder = None
        summary = index_folders(
            library,
            encoder,
            folders,
            options,
            BarReporter(quiet),
            lambda: folder and _load_reranker(reranker, encoder, device),
            folder and folder_fingerprint(folder),
        )
    if as_json or not quiet:
        from cli.output import print_summary

        print_summary(summary, "images", as_json)


def _load_reranker(choice: str, encoder, device: str | None):
    from retrieval.reranker import resolve_reranker  # imports torch: only when needed

    return resolve_reranker(choice, encoder, device)


@app.command("add-texts")
@handle_errors
def add_texts(
    file: Path = typer.Argument(..., help=".txt (one per line), .jsonl or .csv corpus."),
    index: Path = IndexOption,
    model: str = ModelOption,
    device: str = DeviceOption,
    text_field: str = typer.Option(
        None, "--text-field", help="JSONL key / CSV column [default: text, caption, ...]."
    ),
    batch_size: int = typer.Option(256, "--batch-size", min=1),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    quiet: bool = QuietOption,
):
    """Add a text corpus to the index (deduplicated; re-runs embed only what changed)."""
    from cli.progress import BarReporter
    from indexer.texts import add_texts as run_add_texts
    from indexer.texts import read_corpus
    from retrieval.library import Library

    read_corpus(file, text_field)  # refuse a bad file before loading a model
    directory = index_dir(index)
    spec = model_for_index(directory, model)
    encoder = load_encoder_for_cli(spec, device, quiet, lazy=True, warn=False)
    with Library.open_or_create(directory, encoder) as library:
        warn_random_weights(encoder, quiet)
        summary = run_add_texts(library, encoder, file, text_field, batch_size, BarReporter(quiet))
    if as_json or not quiet:
        from cli.output import print_summary

        print_summary(summary, "texts", as_json)


@app.command()
@handle_errors
def search(
    query: str = typer.Argument(None, help="Text query (omit with --image)."),
    image: Path = typer.Option(None, "--image", "-i", help="Query by this image."),
    texts: bool = typer.Option(
        False, "--texts", "-t", help="Search the text corpus instead of images."
    ),
    k: int = typer.Option(10, "-k", "--top", min=1, help="How many results."),
    candidates: int = typer.Option(
        None, "--candidates", "-K", min=1, help="Stage-1 depth re-ranked [default: 128]."
    ),
    no_rerank: bool = typer.Option(False, "--no-rerank", help="Stage 1 only (dual encoder)."),
    reranker: str = typer.Option(
        "auto", "--reranker", help="Re-ranker folder, 'auto' (the model's own) or 'none'."
    ),
    index: Path = IndexOption,
    device: str = DeviceOption,
    as_json: bool = typer.Option(
        False, "--json", help="JSON array with rank, score, id, stage1_score, path/text."
    ),
    paths_only: bool = typer.Option(
        False, "--paths", "-p", help="Only paths (or texts), one a line."
    ),
    print0: bool = typer.Option(
        False, "--print0", "-0", help="Only paths (or texts), each ended by NUL (as find -print0)."
    ),
    under: list[Path] = typer.Option(
        [], "--under", help="Only files at or below this folder (repeatable; texts: corpus files)."
    ),
    after: str = typer.Option(
        None, "--after", help="Only images taken (EXIF) or modified on or after YYYY-MM-DD."
    ),
    before: str = typer.Option(
        None, "--before", help="Only images taken (EXIF) or modified before YYYY-MM-DD."
    ),
    ext: str = typer.Option(None, "--ext", help="Only these extensions, e.g. jpg,png."),
):
    """Search: text->image (default), image->image (--image), image->text (--image --texts).

    Filters (--under, --after, --before, --ext) act inside the search: k results come
    back whenever k items match.
    """
    if (query is None) == (image is None):
        raise typer.BadParameter("give either a text QUERY or --image PATH (not both)")
    from cli.output import print_hits, print_notices
    from retrieval.filters import SearchFilter
    from retrieval.library import Library, token_mismatch
    from retrieval.reranker import resolve_reranker
    from retrieval.searcher import Searcher

    where = SearchFilter.parse(under, after, before, ext)  # bad values fail before any work
    with Library.open(index_dir(index)) as library:
        print_notices(library.notices)
        encoder = load_encoder_for_cli(library.encoder_spec, device, quiet=True)
        ranker = None if no_rerank else resolve_reranker(reranker, encoder, device)
        reason = token_mismatch(library, ranker)
        if reason and reranker == "auto":  # the model's own re-ranker does not fit this index
            typer.echo(f"note: {reason}; stage 1 only", err=True)
            ranker = None
        searcher = Searcher(library, encoder, ranker)
        q = searcher.image_query(image) if image is not None else searcher.text_query(query)
        target = "texts" if texts else "images"
        hits = searcher.search(q, target, k=k, candidates=candidates, where=where)
    if not hits and where.active:
        typer.echo(f"no {target} match the filter", err=True)
    print_hits(hits, as_json, paths_only, print0)


@app.command()
@handle_errors
def info(
    index: Path = IndexOption,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
):
    """What an index holds: counts, model, sizes on disk."""

    from cli.output import human_bytes, json_text, print_notices
    from retrieval.library import Library
    from retrieval.stats import index_info

    with Library.open(index_dir(index)) as library:
        data = index_info(library)
    print_notices(data["notices"])
    if as_json:
        typer.echo(json_text(data))
        return
    typer.echo(f"index:    {data['directory']}")
    typer.echo(f"model:    {data['model']} (dim {data['dim']})")
    typer.echo(f"images:   {data['images']} indexed, {data['images_skipped']} skipped")
    typer.echo(f"texts:    {data['texts']}")
    image_tokens = data["image_tokens"]
    if image_tokens:
        layer = data["image_token_layer"]
        pool = data["image_token_pool"]
        source = "last vision block" if layer is None else f"vision block {layer}"
        image_tokens = f"{image_tokens} ({source}{f', pooled {pool}x{pool}' if pool > 1 else ''})"
    typer.echo(f"tokens:   images {image_tokens}, texts {data['text_tokens']}")
    kept = data["reranker_features"]
    if kept:
        typer.echo(f"features: {kept['reranker']} {kept['shape']} (re-ranker image features)")
    from cli.output import describe_index

    typer.echo(f"faiss:    {describe_index(data['index'])}")
    typer.echo(f"on disk:  {human_bytes(data['bytes_total'])}")
    for name, size in data["files"].items():
        typer.echo(f"  {name:<24} {human_bytes(size):>10}")


from cli import (  # noqa: E402 (after the core commands)
    bench_cmd,
    check_cmd,
    demo_cmd,
    index_cmds,
    train_cmds,
)

app.command("make-corpus")(train_cmds.make_corpus)
app.command("train-encoder")(train_cmds.train_encoder)
app.command("train-reranker")(train_cmds.train_reranker)
app.command("bench")(bench_cmd.bench)
app.command("demo")(demo_cmd.demo)
app.command("compact")(index_cmds.compact)
app.command("check")(check_cmd.check)


def run() -> None:
    from cli.output import install_escaping

    install_escaping()
    app()


if __name__ == "__main__":
    run()
