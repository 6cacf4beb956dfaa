"""Checks on the files a user names (a query image, a corpus): say what a path really is."""

from __future__ import annotations

import stat
from pathlib import Path

from xmr.retrieval.errors import InputError

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def require_regular_file(path: Path, role: str, wanted: str) -> None:
    """Raise InputError unless `path` is a regular file (symlinks followed), naming what it
    is instead: "query image /x is a directory; give an image file". Never opens it, so a
    FIFO cannot block the caller."""
    try:
        mode = Path(path).stat().st_mode
    except FileNotFoundError:
        raise InputError(f"{role} {path} does not exist; give {wanted}") from None
    except OSError as exc:
        raise InputError(f"{role} {path} cannot be read ({exc.strerror}); give {wanted}") from exc
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    raise InputError(f"{role} {path} is {kind}, not a file; give {wanted}")
