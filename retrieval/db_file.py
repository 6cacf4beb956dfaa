"""The metadata database file: its name, schema version, how paths are stored in it, and
the one-line translation of an SQLite failure. Shared by the plain-sqlite3 reader
(db_read.py) and the SQLAlchemy writer (db.py), so neither needs the other's imports.

File paths are kept losslessly: a name that is not UTF-8 reaches Python as a str with
surrogate escapes (PEP 383), which SQLite cannot store; a stored path keeps such a
character as DEL + two hex digits (and a DEL in a name as two DELs), a one-to-one,
prefix-keeping mapping, so equality and prefix queries work unchanged on every path.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from xmr.retrieval.errors import DatabaseDamaged, DiskFull, IndexCorrupt, ReadOnlyIndex, XmrError

SCHEMA_VERSION = 2
DB_FILE = "xmr.sqlite3"
CHUNK = 500  # ids per statement: SQLite caps the bound parameters of one statement

_ESCAPE = "\x7f"  # DEL: the escape character of stored paths
_SURROGATE = re.compile("[\udc80-\udcff\x7f]")
_ESCAPED = re.compile("\x7f(\x7f|[0-9a-f]{2})")


def escape_path(path: str) -> str:
    """A str path (surrogate escapes allowed) -> a storable str; see the module docstring."""
    if not _SURROGATE.search(path):
        return path
    return _SURROGATE.sub(
        lambda m: (
            _ESCAPE * 2 if m.group() == _ESCAPE else f"{_ESCAPE}{ord(m.group()) - 0xDC00:02x}"
        ),
        path,
    )


def unescape_path(stored: str) -> str:
    if _ESCAPE not in stored:
        return stored
    return _ESCAPED.sub(
        lambda m: _ESCAPE if m.group(1) == _ESCAPE else chr(0xDC00 + int(m.group(1), 16)), stored
    )


def database_error(exc: BaseException, path: Path) -> XmrError | None:
    """The one-line error for an SQLite failure on `path` (raised by sqlite3 itself or
    wrapped by SQLAlchemy, which keeps it as `.orig`); None for anything else."""
    orig = getattr(exc, "orig", None) or exc
    if not isinstance(orig, sqlite3.DatabaseError):
        return None
    message = str(orig)
    if "disk I/O error" in message and _nearly_full(path.parent):
        message = "disk is full"  # SQLite cannot grow its shared-memory file: no space
    if "disk I/O error" in message:
        return XmrError(f"cannot read or write {path}: disk I/O error; check the disk")
    if "disk is full" in message:
        return DiskFull(
            f"no space left on device writing {path}; free space and re-run: "
            "nothing committed is lost"
        )
    if "readonly" in message or "read-only" in message:
        return ReadOnlyIndex(
            f"cannot write {path} ({message}): the index folder is read-only; "
            "searching works, indexing needs a writable folder"
        )
    # SQLITE_CORRUPT and SQLITE_NOTADB arrive as a bare DatabaseError; a schema without
    # xmr's tables (an emptied file) as "no such table". Locks and busy files are not damage.
    if type(orig) is sqlite3.DatabaseError or "no such table" in message:
        return DatabaseDamaged(
            f"{path} is damaged ({message}); `xmr check --repair` (or `xmr index FOLDERS`) "
            "moves it aside and rebuilds the index from the image files"
        )
    return None


@contextmanager
def opening(path: Path, close: Callable[[], None]) -> Iterator[None]:
    """Around opening the database at `path`: on any failure `close` what was opened, and
    raise an SQLite failure as its one-line error."""
    try:
        yield
    except BaseException as exc:
        close()
        error = None if isinstance(exc, XmrError) else database_error(exc, path)
        if error is None:
            raise
        raise error from exc


def _nearly_full(folder: Path) -> bool:
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < 1 << 20


def check_schema_version(path: Path, version: int | None) -> None:
    """Raise unless `version` is the schema this xmr reads."""
    if version is None:
        raise DatabaseDamaged(f"{path} has no schema version; it is not an xmr index")
    if version > SCHEMA_VERSION:
        raise IndexCorrupt(newer_schema(path, version))
    if version < SCHEMA_VERSION:
        raise IndexCorrupt(
            f"{path} was written by an older xmr (schema {version}); run a writing "
            "command once (`xmr index` or `xmr check --repair`) to upgrade it"
        )


def newer_schema(path: Path, version: int) -> str:
    return (
        f"{path} has schema version {version}, newer than this xmr "
        f"({SCHEMA_VERSION}); upgrade xmr to open it"
    )
