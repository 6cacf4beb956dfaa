"""A Reporter that draws tqdm progress bars on stderr, only where a person is watching."""

from __future__ import annotations

import sys

import typer

from xmr.engine.progress import Reporter


class BarReporter(Reporter):
    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.show_bars = not quiet and sys.stderr.isatty()
        self._bar = None

    def stage(self, name: str, total: int) -> None:
        if self.show_bars:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                desc=name,
                unit="item",
                file=sys.stderr,
                dynamic_ncols=True,
                leave=False,
            )

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def skip(self, path: str, reason: str) -> None:
        # Skips are printed even with --quiet: a file that was not indexed must be told.
        line = f"skipping {path}: {reason}"
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            typer.echo(line, err=True)

    def done(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
