"""`xmr check [--repair]`: verify every file of an index; repair what can be re-derived."""

from __future__ import annotations

from typing import Annotated

import typer

from xmr.cli.errors import handle_errors
from xmr.cli.options import (
    Device,
    Index,
    JsonReport,
    Model,
    Quiet,
    index_dir,
)


@handle_errors
def check(
    index: Index = None,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Fix what is found: rebuild FAISS, re-encode lost vectors and tokens, restore "
            "the manifest, move a damaged database aside and rebuild from the image folders.",
        ),
    ] = False,
    model: Model = None,
    device: Device = None,
    as_json: JsonReport = False,
    quiet: Quiet = False,
) -> None:
    """Verify an index: SQLite integrity, the manifest's schema, every store against its
    ids and every vector's norm, FAISS against the database. Exit status 1 while problems
    remain. --model only matters when the manifest is lost with no copy to restore."""
    from xmr.cli.output import json_text, print_notices
    from xmr.cli.progress import BarReporter
    from xmr.engine.writes import check_or_repair

    done = check_or_repair(
        index_dir(index), repair=repair, model=model, device=device, reporter=BarReporter(quiet)
    )
    print_notices(done.notices)
    report = done.summary
    if as_json:
        typer.echo(json_text(report.as_dict()))
    elif not quiet or not report.ok:
        _print_report(report, repair)
    if not report.ok:
        raise typer.Exit(1)


def _print_report(report, repaired: bool) -> None:
    counts = ", ".join(f"{n} {name}" for name, n in report.counts.items())
    typer.echo(f"index: {report.directory}" + (f" ({counts})" if counts else ""))
    for finding in report.findings:
        if not repaired:
            state = "would"
        else:
            state = "done" if finding.repaired else "NOT repaired"
        typer.echo(f"  {finding.file}: {finding.problem}\n    -> {finding.repair} [{state}]")
    if not report.findings:
        typer.echo("ok: every file checked, nothing to repair")
    elif not repaired:
        typer.echo(f"{len(report.findings)} problems; `xmr check --repair` fixes them", err=True)
    elif report.ok:
        typer.echo("repaired: every problem found is fixed")
    else:
        typer.echo("some problems remain (see above)", err=True)
