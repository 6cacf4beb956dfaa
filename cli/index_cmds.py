"""Index maintenance commands: `xmr compact` (rebuild FAISS from the stored vectors), and
the `--executor` and `--actors` options of `xmr index` / `xmr add-texts`."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from xmr.cli.errors import handle_errors
from xmr.cli.options import (
    IndexDir,
    IndexType,
    JsonReport,
    MaxMemory,
    Quiet,
    index_dir,
)

ExecutorChoice = Annotated[
    str,
    typer.Option(
        "--executor",
        metavar="WHERE",
        help="Where decoding and encoding run: local (this process), ray (a local Ray "
        "started for this run) or ray:ADDRESS (a running cluster, e.g. ray:auto). This "
        "process still decides what to embed and writes the index. Ray: pip install "
        "'xmr[ray]'.",
    ),
]
Actors = Annotated[
    int | None,
    typer.Option(
        "--actors",
        metavar="N",
        min=1,
        help="Ray: encoder actors [default: one per GPU of the cluster, else one per CPU].",
        show_default=False,
    ),
]


@handle_errors
def compact(
    index: IndexDir = None,
    index_type: IndexType = None,
    max_memory: MaxMemory = None,
    shards: Annotated[
        int,
        typer.Option(
            "--shards",
            metavar="N",
            min=1,
            help="Build an IVF index (ivf, ivfpq) in N shards: train once on a sample, fill "
            "the shards in parallel (--executor ray: Ray tasks), merge.",
        ),
    ] = 1,
    executor: Annotated[
        str,
        typer.Option(
            "--executor",
            metavar="WHERE",
            help="Where shards are filled: local, ray or ray:ADDRESS.",
        ),
    ] = "local",
    as_json: JsonReport = False,
    quiet: Quiet = False,
):
    """Rebuild the FAISS indexes from the stored vectors: drop tombstones, re-train and
    re-tune, or switch type (--index-type hnsw); free the disk space of deleted items'
    vectors and tokens. Nothing is re-encoded. `--index-type ivfpq --shards N
    --executor ray` builds a large index on a Ray cluster."""
    from xmr.cli.output import human_bytes, print_notices
    from xmr.cli.progress import BarReporter
    from xmr.engine.engine import Engine

    done = Engine(index_dir(index)).compact(
        index_type=index_type,
        max_memory=max_memory,
        shards=shards,
        executor=executor,
        reporter=BarReporter(quiet),
    )
    print_notices(done.notices)
    report, sizes = done.summary["collections"], done.summary["sizes"]
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    if quiet:
        return
    for name, entry in report.items():
        before, after = entry["before"], entry["after"]
        knobs = {
            k: v
            for k, v in after["search_params"].items()
            if k in ("nprobe", "efSearch", "k_factor", "shards")
        }
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
