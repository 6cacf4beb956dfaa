"""`xmr bench`: recall@k of the dual encoder and the re-ranker on a dataset split."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from xmr.cli.errors import handle_errors
from xmr.cli.options import Device, Quiet

DEFAULT_CACHE = Path.home() / ".cache" / "xmr" / "bench"


@handle_errors
def bench(
    data: Annotated[
        Path,
        typer.Argument(
            help="Karpathy JSON (COCO/Flickr30k/xmr make-corpus) or "
            "LAVIS/CLIP_benchmark annotation list.",
        ),
    ],
    images_root: Annotated[
        Path | None, typer.Option("--images-root", help="Folder image paths are under.")
    ] = None,
    model: Annotated[
        str, typer.Option("--model", "-m", help="Encoder NAME[:PRETRAINED].")
    ] = "xmr-tiny",
    reranker: Annotated[
        str,
        typer.Option("--reranker", help="Re-ranker folder, 'auto' (the model's own) or 'none'."),
    ] = "auto",
    split: Annotated[
        str, typer.Option("--split", help="Karpathy split; 'all' for every image.")
    ] = "test",
    candidates: Annotated[
        int, typer.Option("--candidates", "-K", min=1, help="Stage-1 depth for re-ranking.")
    ] = 128,
    index_type: Annotated[
        str, typer.Option("--index-type", help="flat, hnsw, ivf, ivfpq, auto.")
    ] = "flat",
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", min=1, help="Only the first N images, N >= 1 (quick runs) [default: all]."
        ),
    ] = None,
    cache: Annotated[Path, typer.Option("--cache", help="Embedding cache folder.")] = DEFAULT_CACHE,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Always re-encode.")] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the result JSON here.")
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write a markdown table here.")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write a PNG of recall@k curves here.")
    ] = None,
    device: Device = None,
    quiet: Quiet = False,
) -> None:
    """Recall@1/5/10 both ways (CLIP-paper definition), per stage, plus hard negatives."""
    from xmr.evaluation.bench import BenchOptions, run_benchmark
    from xmr.evaluation.bench_report import markdown_report, plot_curves
    from xmr.evaluation.datasets import load_dataset
    from xmr.retrieval.encoder import load_encoder
    from xmr.retrieval.reranker import resolve_reranker

    dataset = load_dataset(data, images_root, split=None if split == "all" else split)
    if limit is not None:
        dataset = dataset.head(limit)
    encoder = load_encoder(model, device)
    ranker = resolve_reranker(reranker, encoder, device)
    options = BenchOptions(
        candidates=candidates, index_type=index_type, cache_dir=None if no_cache else cache
    )
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if quiet or not sys.stderr.isatty():
            return
        bar = bars.setdefault(
            stage, tqdm(total=total, desc=f"encoding {stage}", leave=False, file=sys.stderr)
        )
        bar.update(done - bar.n)

    result = run_benchmark(dataset, encoder, ranker, options, progress)
    for bar in bars.values():
        bar.close()
    text = markdown_report(result)
    if json_out:
        json_out.write_text(json.dumps(result, indent=2))
    if report:
        report.write_text(text)
    if plot:
        plot_curves(result, plot)
    typer.echo(text)
