"""`xmr duplicates`: groups of near-duplicate images, for a person to decide what to keep."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from xmr.cli.errors import handle_errors
from xmr.cli.options import IndexDir, index_dir
from xmr.engine.request import DUPLICATE_THRESHOLD


@handle_errors
def duplicates(
    threshold: Annotated[
        float,
        typer.Option(
            "--threshold",
            "-T",
            metavar="0..1",
            min=0.0,
            max=1.0,
            help="Cosine at or above which two "
            "images are one picture (copies, re-encodes, resizes, small crops).",
        ),
    ] = DUPLICATE_THRESHOLD,
    under: Annotated[
        list[Path] | None,
        typer.Option(
            "--under", metavar="FOLDER", help="Only images at or below this folder (repeatable)."
        ),
    ] = None,
    index: IndexDir = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            metavar="FILE",
            help="A list of groups, each {count, items: [{id, path, ...}]}.",
        ),
    ] = False,
):
    """Groups of near-duplicate images across the index, biggest groups first."""
    from xmr.cli.output import human_bytes
    from xmr.engine.engine import Engine

    groups = Engine(index_dir(index)).duplicates(threshold=threshold, under=under or ())
    if as_json:
        typer.echo(json.dumps(groups, ensure_ascii=False, indent=2))
        return
    for number, group in enumerate(groups, start=1):
        typer.echo(f"group {number}: {group['count']} images")
        for item in group["items"]:
            size = f"{item['width']}x{item['height']}" if item["width"] else "?"
            typer.echo(f"  {size:>11}  {human_bytes(item['bytes']):>10}  {item['path']}")
    extra = sum(g["count"] - 1 for g in groups)
    typer.echo(f"{len(groups)} groups, {extra} images beyond one of each", err=True)
