"""What the core's long operations report their progress to.

indexer.report.Reporter (and the CLI's progress bars) fit it; the core cannot import
them (it imports no other layer), so it names only the methods it calls.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def stage(self, name: str, total: int) -> None:
        """A long step begins: `name` over `total` items."""

    def advance(self, n: int) -> None:
        """`n` more items of the current stage are done."""

    def done(self) -> None:
        """The current stage ended."""
