"""Options shared by several commands, and the helpers that resolve them.

Each option is an `Annotated` type (`index: IndexDir = None`); the `...Option` defaults
serve the commands not yet written that way (search, train-*)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

_INDEX: dict[str, Any] = dict(
    help="Index directory [default: $XMR_INDEX, else a per-user data directory].",
    show_default=False,
)
_MODEL: dict[str, Any] = dict(
    help="NAME[:PRETRAINED], e.g. ViT-B-32:laion2b_s34b_b79k, xmr-tiny, "
    "cfg.json:weights.safetensors, ViT-B-32:none. Default: the index's model, else "
    "ViT-B-32:laion2b_s34b_b79k.",
    show_default=False,
)
_DEVICE: dict[str, Any] = dict(help="cpu, cuda, cuda:1 ... [default: cuda when present, else cpu]")
_QUIET: dict[str, Any] = dict(help="No progress bars or summary.")
_THREADS: dict[str, Any] = dict(
    min=1,
    help="CPU threads PyTorch may use [default: its own, all cores]; 1 leaves the other "
    "cores free for other work.",
    show_default=False,
)


def plain_help() -> None:
    """`--help` in words people read. Every option and argument that takes a value names
    it with a metavar (FILE, FOLDER, N, ID, 0..1: tests/test_cli_help.py checks), and
    typer's numeric bounds (`min=`, `max=`), which it writes as `[x>=1]` after the help and
    the default, read as code and are left out. The bounds still hold: a value out of
    them is refused with the range in the error; where they matter to a reader, the
    metavar says them (`0..1`)."""
    from typer._click.types import _NumberRangeBase
    from typer.core import TyperOption

    with_bounds = TyperOption.get_help_record

    def without_bounds(self, ctx):
        record = with_bounds(self, ctx)
        if record is None or not isinstance(self.type, _NumberRangeBase):
            return record
        name, text = record
        bounds = self.type._describe_range()
        text = text.replace(f"; {bounds}]", "]").replace(f"[{bounds}]", "").rstrip()
        return name, text

    TyperOption.get_help_record = without_bounds  # type: ignore[method-assign]


plain_help()

IndexDir = Annotated[Path | None, typer.Option("--index", metavar="FOLDER", **_INDEX)]
ModelName = Annotated[str | None, typer.Option("--model", "-m", metavar="MODEL", **_MODEL)]
Device = Annotated[str | None, typer.Option("--device", metavar="DEVICE", **_DEVICE)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", **_QUIET)]
Threads = Annotated[int | None, typer.Option("--threads", metavar="N", **_THREADS)]
JsonReport = Annotated[
    bool, typer.Option("--json", metavar="FILE", help="Print the report as JSON on stdout.")
]
IndexType = Annotated[
    str | None,
    typer.Option(
        "--index-type",
        metavar="TYPE",
        help="FAISS index: auto, flat, hnsw, ivf, ivfpq. Kept in the index; auto picks by "
        "size and --max-memory [default: the index's, else auto].",
        show_default=False,
    ),
]
MaxMemory = Annotated[
    str | None,
    typer.Option(
        "--max-memory",
        metavar="SIZE",
        help="RAM budget for the FAISS index under auto, e.g. 4G, 512M; 'none' removes it. "
        "Over budget, auto compresses (ivfpq).",
        show_default=False,
    ),
]


SearchReranker = Annotated[
    str,
    typer.Option(
        "--reranker",
        metavar="NAME",
        help="Re-ranker folder, 'auto' (the model's own) or 'none', or a BLIP model for "
        "photos: blip-itm-base-coco, blip-itm-large-coco, a Hugging Face id or folder.",
    ),
]
FeatureCache = Annotated[
    str | None,
    typer.Option(
        "--feature-cache",
        metavar="SIZE",
        help="Size cap of the BLIP vision tokens cached in the index folder at search time "
        "(e.g. 4G; 0: none) [default: 2G].",
    ),
]


def index_dir(index: Path | None) -> Path:
    """--index, else $XMR_INDEX, else the per-user default (no heavy imports)."""
    from xmr.engine.paths import index_directory

    return index_directory(index)
