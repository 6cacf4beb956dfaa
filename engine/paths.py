"""Which index an operation means; cheap to import (a face resolves it before loading)."""

from __future__ import annotations

from pathlib import Path

from xmr.retrieval.locations import default_index_dir


def index_directory(index: Path | str | None = None) -> Path:
    """`index`, else `$XMR_INDEX`, else a per-user data directory."""
    return Path(index).expanduser() if index is not None else default_index_dir()
