"""Index maintenance commands: `xmr compact` (rebuild FAISS from the stored vectors)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cli.errors import handle_errors
from cli.options import (
    IndexOption,
    IndexTypeOption,
    JsonReportOption,
    MaxMemoryOption,
    QuietOption,
    check_index_options,
    index_dir,
)


@handle_errors
def compact(
    index: Path = IndexOption,
    index_type: str = IndexTypeOption,
    max_memory: str = MaxMemoryOption,
    as_json: bool = JsonReportOption,
    quiet: bool = QuietOption,
):
    """Rebuild the FAISS indexes from the stored vectors: drop tombstones, re-train and
    re-tune, or switch type (--index-type hnsw); free the disk space of deleted items'
    vectors and tokens. Nothing is re-encoded."""
    from cli.output import human_bytes
    from cli.progress import BarReporter
    from retrieval.library import Library

    check_index_options(index_type, max_memory)
    with Library.open(index_dir(index), writable=True) as library:
        report = library.compact(index_type, max_memory, BarReporter(quiet))
        sizes = library.disk_usage()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    if quiet:
        return
    for name, entry in report.items():
        before, after = entry["before"], entry["after"]
        knobs = {k: v for k, v in after["search_params"].items() if k in ("nprobe", "efSearch")}
        recall = after["search_params"].get("recall_at_10")
        tuned = ", ".join(f"{k} {v}" for k, v in knobs.items())
        if tuned and recall is not None:
            tuned += f", recall@10 {recall}"
        size = human_bytes(sizes.get(f"{name}.faiss", 0))
        typer.echo(
            f"{name}: {before['type']} ({before['live']} items, {before['tombstones']} "
            f"tombstones) -> {after['type']} ({after['live']} items"
            + (f"; {tuned}" if tuned else "")
            + f"), {size}, {human_bytes(entry['store_bytes_freed'])} of dead records freed, "
            + f"{entry['seconds']:.1f}s",
            err=True,
        )
