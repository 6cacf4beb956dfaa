"""Options shared by several commands, and the helpers that resolve them."""

from __future__ import annotations

import os
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


def check_index_options(index_type: str | None, max_memory: str | None) -> None:
    """Refuse a bad --index-type or --max-memory before any model or index is touched."""
    from retrieval.index_choice import check_index_type, parse_size

    if index_type is not None:
        check_index_type(index_type)
    if max_memory is not None and max_memory.strip().lower() != "none":
        parse_size(max_memory)


def index_dir(index: Path | None) -> Path:
    from retrieval.library import default_index_dir

    return Path(index).expanduser() if index is not None else default_index_dir()


def model_for_index(index: Path, model: str | None) -> str:
    """--model if given, else the model the index was built with, else the default."""
    if model:
        return model
    from retrieval.library import stored_model_spec
    from retrieval.modelspec import DEFAULT_MODEL

    return stored_model_spec(index) or DEFAULT_MODEL


def load_encoder_for_cli(
    spec: str, device: str | None, quiet: bool, lazy: bool = False, warn: bool = True
):
    """The encoder for `spec`; `lazy` defers loading the model until something needs it.

    `warn=False` leaves the random-weights warning to the caller (`warn_random_weights`),
    so a command that may still refuse the model (index mismatch) prints only the error.
    """
    from retrieval.encoder import LazyEncoder, load_encoder

    encoder = LazyEncoder(spec, device) if lazy else load_encoder(spec, device)
    if warn:
        warn_random_weights(encoder, quiet)
    return encoder


def warn_random_weights(encoder, quiet: bool) -> None:
    if encoder.spec.random_weights and not quiet and not os.environ.get("XMR_NO_RANDOM_WARNING"):
        typer.echo(
            f"warning: {encoder.spec.canonical} has random weights; its results mean nothing "
            f"(use it for tests and speed measurements only)",
            err=True,
        )
