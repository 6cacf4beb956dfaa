"""How indexing talks to whoever runs it: counts in a summary, events through a reporter.

Library code never prints; the CLI passes a Reporter that draws progress bars and
prints `skipping PATH: reason` lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class Reporter:
    """No-op base: override what you want to show."""

    def stage(self, name: str, total: int) -> None:
        """A long step begins: `name` over `total` items."""

    def advance(self, n: int) -> None:
        """`n` more items of the current stage are done."""

    def skip(self, path: str, reason: str) -> None:
        """A file was not indexed, and why."""

    def done(self) -> None:
        """The current stage ended."""


@dataclass
class IndexSummary:
    new: int = 0
    updated: int = 0  # content changed: re-embedded
    unchanged: int = 0
    touched: int = 0  # mtime changed, content identical: no encoder work
    moved: int = 0  # renamed or moved: vector kept
    duplicates: int = 0  # same content as an indexed file: vector copied
    removed: int = 0
    repaired: int = 0  # items whose lost records were re-encoded
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), this run
    skipped_before: int = 0  # unchanged files that failed in an earlier run
    links_not_followed: int = 0  # symlinked folders the walk left out (no --follow-links)
    encoded: int = 0  # items that went through the encoder
    seconds: float = 0.0
    encode_seconds: float = 0.0  # time inside the encoder alone
    notices: list[str] = field(default_factory=list)  # repairs and policies applied, for people
    cleaned: int = 0  # texts: control characters removed
    shortened: int = 0  # texts: cut to the stored length limit

    @property
    def items_per_second(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "new": self.new,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "touched": self.touched,
            "moved": self.moved,
            "duplicates": self.duplicates,
            "removed": self.removed,
            "repaired": self.repaired,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "skipped_before": self.skipped_before,
            "links_not_followed": self.links_not_followed,
            "encoded": self.encoded,
            "seconds": round(self.seconds, 3),
            "encode_seconds": round(self.encode_seconds, 3),
            "items_per_second": round(self.items_per_second, 2),
            "cleaned": self.cleaned,
            "shortened": self.shortened,
            "notices": self.notices,
        }
