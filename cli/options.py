"""Options shared by several commands, and the helpers that resolve them.

Commands declare them with Annotated: `index: Index = None`. search_cmd.py and
train_cmds.py still declare options as default values (`index: Path = IndexOption`);
the `...Option` forms serve them until they move over too. Each factory below makes
both forms of an option: called with no default, the Annotated form (which takes none).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def _index(default: Any = ...) -> Any:
    return typer.Option(
        default,
        "--index",
        help="Index directory [default: $XMR_INDEX, else a per-user data directory].",
        show_default=False,
    )


def _device(default: Any = ...) -> Any:
    return typer.Option(
        default, "--device", help="cpu, cuda, cuda:1 ... [default: cuda when present, else cpu]"
    )


def _quiet(default: Any = ...) -> Any:
    return typer.Option(default, "--quiet", "-q", help="No progress bars or summary.")


def _threads(default: Any = ...) -> Any:
    return typer.Option(
        default,
        "--threads",
        min=1,
        help="CPU threads PyTorch may use [default: its own, all cores]; 1 leaves the other "
        "cores free for other work.",
        show_default=False,
    )


Index = Annotated[Path | None, _index()]
Model = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="NAME[:PRETRAINED], e.g. ViT-B-32:laion2b_s34b_b79k, xmr-tiny, "
        "cfg.json:weights.safetensors, ViT-B-32:none. Default: the index's model, else "
        "ViT-B-32:laion2b_s34b_b79k.",
        show_default=False,
    ),
]
Device = Annotated[str | None, _device()]
Quiet = Annotated[bool, _quiet()]
JsonReport = Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")]
Threads = Annotated[int | None, _threads()]
IndexType = Annotated[
    str | None,
    typer.Option(
        "--index-type",
        help="FAISS index: auto, flat, hnsw, ivf, ivfpq. Kept in the index; auto picks by "
        "size and --max-memory [default: the index's, else auto].",
        show_default=False,
    ),
]
MaxMemory = Annotated[
    str | None,
    typer.Option(
        "--max-memory",
        help="RAM budget for the FAISS index under auto, e.g. 4G, 512M; 'none' removes it. "
        "Over budget, auto compresses (ivfpq).",
        show_default=False,
    ),
]

# The default-value forms, for search_cmd.py and train_cmds.py.
IndexOption = _index(None)
DeviceOption = _device(None)
QuietOption = _quiet(False)
ThreadsOption = _threads(None)


def index_dir(index: Path | None) -> Path:
    """--index, else $XMR_INDEX, else the per-user default (no heavy imports)."""
    from xmr.retrieval.locations import default_index_dir

    return Path(index).expanduser() if index is not None else default_index_dir()
