"""The `xmr` command line. Each command parses, makes one engine call, formats.

Heavy imports (torch, open_clip, faiss) happen inside commands, so `xmr --help` and
argument errors answer at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from xmr.cli.errors import handle_errors
from xmr.cli.index_cmds import Actors, ExecutorChoice
from xmr.cli.options import (
    Device,
    IndexDir,
    IndexType,
    JsonReport,
    MaxMemory,
    ModelName,
    Quiet,
    index_dir,
)

app = typer.Typer(
    name="xmr",
    help="Cross-modal retrieval: index images and texts, search text->image, image->image, "
    "image->text.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "[default: 128]" is not markup
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.command()
@handle_errors
def index(
    folders: Annotated[
        list[Path],
        typer.Argument(metavar="FOLDER", help="Folders (or files) of images to index."),
    ],
    index: IndexDir = None,
    model: ModelName = None,
    device: Device = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", "-x", metavar="GLOB", help="Glob to leave out (repeatable)."),
    ] = None,
    hidden: Annotated[
        bool, typer.Option("--hidden", help="Include hidden files and folders.")
    ] = False,
    follow_links: Annotated[
        bool,
        typer.Option(
            "--follow-links",
            help="Enter symlinked folders too (never twice, never /proc, /sys or /dev).",
        ),
    ] = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", metavar="N", min=1, help="Images per encoder batch.")
    ] = 64,
    workers: Annotated[
        int | None,
        typer.Option("--workers", metavar="N", min=0, help="Decoding processes [default: cores]."),
    ] = None,
    commit_every: Annotated[
        int,
        typer.Option(
            "--commit-every",
            metavar="N",
            min=1,
            help="Images per commit: the most a kill can lose.",
        ),
    ] = 256,
    max_pixels: Annotated[
        int | None, typer.Option("--max-pixels", metavar="N", help="Decompression-bomb guard.")
    ] = None,
    no_tokens: Annotated[
        bool,
        typer.Option("--no-tokens", help="Do not keep token features (no re-ranking; less disk)."),
    ] = False,
    token_pool: Annotated[
        int | None,
        typer.Option(
            "--token-pool",
            metavar="N",
            min=1,
            help="Store image patch tokens k x k pooled: k^2 less disk; needs a re-ranker "
            "trained with --image-pool k. Fixed at the index's creation [default: 1].",
        ),
    ] = None,
    reranker: Annotated[
        str,
        typer.Option(
            "--reranker",
            metavar="NAME",
            help="Keep this re-ranker's image features so text searches skip that work: a "
            "folder, 'auto' (the model's own), 'none', or a BLIP model for photos "
            "(blip-itm-base-coco, blip-itm-large-coco, a Hugging Face id or folder).",
        ),
    ] = "auto",
    feature_form: Annotated[
        str,
        typer.Option(
            "--feature-form",
            metavar="FORM",
            help="How a BLIP re-ranker's vision tokens are kept: fp16, int8 (half the disk) or "
            "fp32 (exact, twice the disk).",
        ),
    ] = "fp16",
    index_type: IndexType = None,
    max_memory: MaxMemory = None,
    executor: ExecutorChoice = "local",
    actors: Actors = None,
    as_json: JsonReport = False,
    quiet: Quiet = False,
):
    """Index every image under FOLDERS, incrementally (new, changed, moved, deleted)."""
    from xmr.cli.output import print_report
    from xmr.cli.progress import BarReporter
    from xmr.engine.engine import Engine

    report = Engine(index_dir(index), device).index(
        folders,
        model=model,
        exclude=exclude or (),
        include_hidden=hidden,
        follow_links=follow_links,
        batch_size=batch_size,
        workers=workers,
        commit_every=commit_every,
        max_pixels=max_pixels,
        keep_tokens=not no_tokens,
        token_pool=token_pool,
        reranker=reranker,
        index_type=index_type,
        max_memory=max_memory,
        executor=executor,
        actors=actors,
        reporter=BarReporter(quiet),
        feature_form=feature_form,
    )
    print_report(report, "images", as_json, quiet)


@app.command("add-texts")
@handle_errors
def add_texts(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            help=".txt (one per line), .jsonl, .csv, or a Karpathy captions .json corpus.",
        ),
    ],
    index: IndexDir = None,
    model: ModelName = None,
    device: Device = None,
    text_field: Annotated[
        str | None,
        typer.Option(
            "--text-field",
            metavar="NAME",
            help="JSONL key / CSV column [default: text, caption, ...].",
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", metavar="N", min=1, help="Texts per encoder batch.")
    ] = 256,
    executor: ExecutorChoice = "local",
    actors: Actors = None,
    as_json: JsonReport = False,
    quiet: Quiet = False,
):
    """Add a text corpus to the index (deduplicated; re-runs embed only what changed)."""
    from xmr.cli.output import print_report
    from xmr.cli.progress import BarReporter
    from xmr.engine.engine import Engine

    report = Engine(index_dir(index), device).add_texts(
        file,
        model=model,
        text_field=text_field,
        batch_size=batch_size,
        executor=executor,
        actors=actors,
        reporter=BarReporter(quiet),
    )
    print_report(report, "texts", as_json, quiet)


@app.command()
@handle_errors
def info(
    index: IndexDir = None,
    as_json: Annotated[
        bool, typer.Option("--json", metavar="FILE", help="Machine-readable output.")
    ] = False,
):
    """What an index holds: counts, model, sizes on disk."""

    from xmr.cli.output import human_bytes, json_text, print_notices
    from xmr.engine.engine import Engine

    data = Engine(index_dir(index)).info()
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
        if pool > 1:
            source += f", pooled {pool}x{pool}"
        if data["image_token_pixels"]:
            source += ", with each patch's pixels"
        image_tokens = f"{image_tokens} ({source})"
    typer.echo(f"tokens:   images {image_tokens}, texts {data['text_tokens']}")
    kept = data["reranker_features"]
    if kept:
        typer.echo(f"features: {kept['reranker']} {kept['shape']} (re-ranker image features)")
    matcher = data.get("matcher_features")
    if matcher:
        kept_text = (
            f"{matcher['matcher']} {matcher['form']} {matcher['shape']}, "
            if matcher["matcher"]
            else ""
        )
        typer.echo(
            f"matcher:  {kept_text}kept {human_bytes(matcher['kept_bytes'])}, search-time "
            f"cache {human_bytes(matcher['cache_bytes'])} (vision tokens)"
        )
    from xmr.cli.output import describe_index

    typer.echo(f"faiss:    {describe_index(data['index'])}")
    typer.echo(f"on disk:  {human_bytes(data['bytes_total'])}")
    for name, size in data["files"].items():
        typer.echo(f"  {name:<24} {human_bytes(size):>10}")


from xmr.cli import (  # noqa: E402 (after the core commands)
    bench_cmd,
    check_cmd,
    demo_cmd,
    duplicates_cmd,
    index_cmds,
    search_cmd,
    serve_cmd,
    train_cmds,
)

app.command()(search_cmd.search)
app.command()(serve_cmd.serve)
app.command()(duplicates_cmd.duplicates)
app.command("make-corpus")(train_cmds.make_corpus)
app.command("train-encoder")(train_cmds.train_encoder)
app.command("train-reranker")(train_cmds.train_reranker)
app.command("bench")(bench_cmd.bench)
app.command("demo")(demo_cmd.demo)
app.command("compact")(index_cmds.compact)
app.command("check")(check_cmd.check)


def run() -> None:
    import sys

    from xmr.cli.output import install_escaping

    install_escaping()
    app(args=_optional_values(sys.argv[1:]))


def _optional_values(argv: list[str]) -> list[str]:
    """`--dedup` takes an optional value (`--dedup` or `--dedup 0.9`), which typer cannot
    declare: the default is filled in before parsing."""
    from xmr.cli.search_cmd import DEDUP_DEFAULT

    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        following = argv[i + 1] if i + 1 < len(argv) else ""
        if arg == "--dedup" and not _is_number(following):
            out.append(str(DEDUP_DEFAULT))
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


if __name__ == "__main__":
    run()
