"""`xmr bench`: recall@k of the dual encoder and the re-ranker on a dataset split."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from xmr.cli.errors import handle_errors
from xmr.cli.options import Device, Quiet

CACHE = Path.home() / ".cache" / "xmr" / "bench"


@handle_errors
def bench(
    data: Annotated[
        Path,
        typer.Argument(
            metavar="DATA",
            help="Karpathy JSON (COCO/Flickr30k/xmr make-corpus) or "
            "LAVIS/CLIP_benchmark annotation list.",
        ),
    ],
    images_root: Annotated[
        Path | None,
        typer.Option("--images-root", metavar="FOLDER", help="Folder image paths are under."),
    ] = None,
    model: Annotated[
        str, typer.Option("--model", "-m", metavar="MODEL", help="Encoder NAME[:PRETRAINED].")
    ] = "xmr-tiny",
    reranker: Annotated[
        str,
        typer.Option(
            "--reranker",
            metavar="NAME",
            help="Re-ranker folder, 'auto' (the model's own) or 'none'.",
        ),
    ] = "auto",
    split: Annotated[
        str, typer.Option("--split", metavar="SPLIT", help="Karpathy split; 'all' for every image.")
    ] = "test",
    candidates: Annotated[
        int,
        typer.Option(
            "--candidates", "-K", metavar="N", min=1, help="Stage-1 depth for re-ranking."
        ),
    ] = 128,
    index_type: Annotated[
        str, typer.Option("--index-type", metavar="TYPE", help="flat, hnsw, ivf, ivfpq, auto.")
    ] = "flat",
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            metavar="N",
            min=1,
            help="Only the first N images, N >= 1 (quick runs) [default: all].",
        ),
    ] = None,
    cache: Annotated[
        Path, typer.Option("--cache", metavar="FOLDER", help="Embedding cache folder.")
    ] = CACHE,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Always re-encode.")] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", metavar="FILE", help="Write the result JSON here.")
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", metavar="FILE", help="Write a markdown table here.")
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", metavar="FILE", help="Write a PNG of recall@k curves here."),
    ] = None,
    device: Device = None,
    quiet: Quiet = False,
):
    """Recall@1/5/10 both ways (CLIP-paper definition), per stage, plus hard negatives."""
    from tqdm import tqdm

    from xmr.engine.bench import run_bench

    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if quiet or not sys.stderr.isatty():
            return
        bar = bars.setdefault(
            stage, tqdm(total=total, desc=f"encoding {stage}", leave=False, file=sys.stderr)
        )
        bar.update(done - bar.n)

    try:
        run = run_bench(
            data,
            images_root=images_root,
            model=model,
            reranker=reranker,
            split=split,
            candidates=candidates,
            index_type=index_type,
            limit=limit,
            cache_dir=None if no_cache else cache,
            device=device,
            progress=progress,
        )
    finally:
        for bar in bars.values():
            bar.close()
    text = run.markdown
    if json_out:
        json_out.write_text(json.dumps(run.result, indent=2))
    if report:
        report.write_text(text)
    if plot:
        run.plot(plot)
    typer.echo(text)
