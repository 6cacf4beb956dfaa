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
            metavar="FOLDER",
            help="Where to put the corpus and index "
            "[default: a new temporary folder, kept afterwards].",
        ),
    ] = None,
    images: Annotated[
        int, typer.Option("--images", "-n", metavar="N", min=20, help="Scenes to generate.")
    ] = 300,
    candidates: Annotated[
        int,
        typer.Option(
            "--candidates",
            "-K",
            metavar="N",
            min=1,
            help="Stage-1 depth re-ranked in the recall table.",
        ),
    ] = 16,
    quiet: Quiet = False,
):
    """Generate a corpus, index it with xmr-tiny, run queries, print recall@k (offline)."""
    from xmr.cli.progress import BarReporter
    from xmr.engine.demo import run_demo

    started = time.monotonic()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="xmr-demo-"))
    typer.echo(f"xmr demo: {images} generated scenes in {workdir}\n")
    result = run_demo(workdir, n_images=images, candidates=candidates, reporter=BarReporter(quiet))
    typer.echo(
        f"indexed {result.n_images} images and {result.n_texts} captions with xmr-tiny "
        f"in {result.index_seconds:.1f}s  (index: {workdir / 'index'})\n"
    )
    for q in result.queries:
        typer.echo(f"== {q.title}: {q.query}")
        for hit in q.hits:
            answer = hit.path if hit.kind == "image" else hit.text
            mark = ("  ✓" if answer in q.correct else "  ✗") if q.correct else ""
            typer.echo(f"{hit.rank:>3}  {hit.score:.3f}  {answer}{mark}")
        if q.correct:
            typer.echo("     (✓ = a correct answer: the scene the caption was written for)")
        typer.echo("")
    typer.echo(result.bench_markdown)
    typer.echo(_next_steps(workdir, result.try_query, result.queries[-1].query))
    typer.echo(f"\ndemo finished in {time.monotonic() - started:.0f}s", err=True)
    sys.stdout.flush()


def _next_steps(workdir: Path, sentence: str, image: str) -> str:
    """What to try next, as commands that run as printed (cli/launch.py), then the page,
    then where the demo's files are and how to remove them."""
    from shlex import quote

    from xmr.cli.launch import xmr_command
    from xmr.cli.output import human_bytes

    xmr, index = xmr_command(), quote(str(workdir / "index"))
    size = sum(p.stat().st_size for p in workdir.rglob("*") if p.is_file())
    return "\n".join(
        [
            "Try it yourself:",
            f"  {xmr} search {quote(sentence)} --index {index}",
            f"  {xmr} search --image {quote(image)} --texts --index {index}",
            "",
            "Browse it on the page (search, filters, more like this):",
            f"  {xmr} serve --index {index} --open",
            "  then open http://127.0.0.1:8765/ if no browser opens (Ctrl-C stops the server)",
            "",
            f"The demo left its files in {workdir} (corpus, captions, index: {human_bytes(size)}).",
            f"Remove them with: rm -r {quote(str(workdir))}",
        ]
    )
