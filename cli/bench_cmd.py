"""`xmr bench`: recall@k of the dual encoder and the re-ranker on a dataset split."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from xmr.cli.errors import handle_errors
from xmr.cli.options import DeviceOption, QuietOption


@handle_errors
def bench(
    data: Path = typer.Argument(
        ...,
        help="Karpathy JSON (COCO/Flickr30k/xmr make-corpus) or "
        "LAVIS/CLIP_benchmark annotation list.",
    ),
    images_root: Path = typer.Option(None, "--images-root", help="Folder image paths are under."),
    model: str = typer.Option("xmr-tiny", "--model", "-m", help="Encoder NAME[:PRETRAINED]."),
    reranker: str = typer.Option(
        "auto", "--reranker", help="Re-ranker folder, 'auto' (the model's own) or 'none'."
    ),
    split: str = typer.Option("test", "--split", help="Karpathy split; 'all' for every image."),
    candidates: int = typer.Option(
        128, "--candidates", "-K", min=1, help="Stage-1 depth for re-ranking."
    ),
    index_type: str = typer.Option("flat", "--index-type", help="flat, hnsw, ivf, ivfpq, auto."),
    limit: int = typer.Option(
        None, "--limit", min=1, help="Only the first N images, N >= 1 (quick runs) [default: all]."
    ),
    cache: Path = typer.Option(
        Path.home() / ".cache" / "xmr" / "bench", "--cache", help="Embedding cache folder."
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Always re-encode."),
    json_out: Path = typer.Option(None, "--json", help="Write the result JSON here."),
    report: Path = typer.Option(None, "--report", help="Write a markdown table here."),
    plot: Path = typer.Option(None, "--plot", help="Write a PNG of recall@k curves here."),
    device: str = DeviceOption,
    quiet: bool = QuietOption,
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
