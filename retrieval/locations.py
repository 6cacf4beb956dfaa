"""Where an index lives by default; imports nothing heavy (the CLI asks before loading)."""

from __future__ import annotations

import os
from pathlib import Path

INDEX_ENV = "XMR_INDEX"


def default_index_dir() -> Path:
    """`$XMR_INDEX`, else a per-user data directory."""
    if os.environ.get(INDEX_ENV):
        return Path(os.environ[INDEX_ENV]).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("xmr")) / "index"
