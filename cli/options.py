"""Options shared by several commands, and the helpers that resolve them."""

from __future__ import annotations

from pathlib import Path

import typer

IndexOption = typer.Option(
    None,
    "--index",
    help="Index directory [default: $XMR_INDEX, else a per-user data directory].",
    show_default=False,
)
ModelOption = typer.Option(
    None,
    "--model",
    "-m",
    help="NAME[:PRETRAINED], e.g. ViT-B-32:laion2b_s34b_b79k, xmr-tiny, "
    "cfg.json:weights.safetensors, ViT-B-32:none. Default: the index's model, else "
    "ViT-B-32:laion2b_s34b_b79k.",
    show_default=False,
)
DeviceOption = typer.Option(
    None, "--device", help="cpu, cuda, cuda:1 ... [default: cuda when present, else cpu]"
)
QuietOption = typer.Option(False, "--quiet", "-q", help="No progress bars or summary.")
JsonReportOption = typer.Option(False, "--json", help="Print the report as JSON on stdout.")
ThreadsOption = typer.Option(
    None,
    "--threads",
    min=1,
    help="CPU threads PyTorch may use [default: its own, all cores]; 1 leaves the other "
    "cores free for other work.",
    show_default=False,
)
IndexTypeOption = typer.Option(
    None,
    "--index-type",
    help="FAISS index: auto, flat, hnsw, ivf, ivfpq. Kept in the index; auto picks by "
    "size and --max-memory [default: the index's, else auto].",
    show_default=False,
)
MaxMemoryOption = typer.Option(
    None,
    "--max-memory",
    help="RAM budget for the FAISS index under auto, e.g. 4G, 512M; 'none' removes it. "
    "Over budget, auto compresses (ivfpq).",
    show_default=False,
)


def index_dir(index: Path | None) -> Path:
    """--index, else $XMR_INDEX, else the per-user default (no heavy imports)."""
    from xmr.engine.paths import index_directory

    return index_directory(index)
