"""`xmr demo`: show the whole job offline, right after install."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from xmr.cli.errors import handle_errors
from xmr.cli.options import Quiet


@handle_errors
def demo(
    workdir: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            help="Where to put the corpus and index "
            "[default: a new temporary folder, kept afterwards].",
        ),
    ] = None,
    images: Annotated[
        int, typer.Option("--images", "-n", min=20, help="Scenes to generate.")
    ] = 300,
    candidates: Annotated[
        int,
        typer.Option(
            "--candidates", "-K", min=1, help="Stage-1 depth re-ranked in the recall table."
        ),
    ] = 16,
    quiet: Quiet = False,
) -> None:
    """Generate a corpus, index it with xmr-tiny, run queries, print recall@k (offline)."""
    from xmr.cli.progress import BarReporter
    from xmr.engine.demo import run_demo
    from xmr.evaluation.bench_report import markdown_report

    started = time.monotonic()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="xmr-demo-"))
    typer.echo(f"xmr demo: {images} generated scenes in {workdir}\n")
    result = run_demo(workdir, images, candidates, BarReporter(quiet))
    typer.echo(
        f"indexed {result.n_images} images and {result.n_texts} captions with xmr-tiny "
        f"in {result.index_seconds:.1f}s  (index: {workdir / 'index'})\n"
    )
    for q in result.queries:
        typer.echo(f"== {q.title}: {q.query}")
        for hit in q.hits:
            answer = hit.path if hit.kind == "image" else hit.text
            mark = ("  ✓" if answer in q.correct else "  ✗") if q.correct else ""
            typer.echo(f"{hit.rank:>3}  {hit.score:7.4f}  {answer}{mark}")
        if q.correct:
            typer.echo("     (✓ = a correct answer: the scene the caption was written for)")
        typer.echo("")
    assert result.bench is not None  # run_demo always measures recall
    typer.echo(markdown_report(result.bench))

    typer.echo(
        f'Try it yourself:\n  xmr search "{result.try_query}" '
        f"--index {workdir / 'index'}\n  xmr search --image "
        f"{result.queries[-1].query} --texts --index {workdir / 'index'}"
    )
    typer.echo(f"\ndemo finished in {time.monotonic() - started:.0f}s", err=True)
    sys.stdout.flush()
