"""Open an indexed image's file only while it is still what was indexed.

The server serves files by id, and the path in the database is the one the indexer saw.
Between indexing and a request the file may have been replaced: by a symlink to
/etc/shadow, by a FIFO (which would block a reader forever), by a device, or simply by
another picture. `open_indexed` opens without blocking (O_NONBLOCK: a FIFO opens at
once, and is then refused), looks at the opened descriptor (fstat, so nothing can be
swapped between the check and the read), and compares size and mtime with the database.
A symlink is opened without following it first; a path the indexer saw as a link (it
records its target's size and mtime) is followed only when its target matches them
exactly, which a link swapped in later, to a file the attacker does not own, cannot.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING

from xmr.retrieval.errors import ItemNotFound, XmrError

if TYPE_CHECKING:
    from xmr.engine.engine import IndexedFile

CHUNK = 256 * 1024


class FileChanged(XmrError):
    """The file at an indexed path is no longer the one that was indexed (HTTP 409)."""


def open_indexed(record: IndexedFile) -> tuple[int, os.stat_result]:
    """A read-only descriptor of `record`'s file (an engine IndexedFile) and its stat;
    raises ItemNotFound (gone) or FileChanged (anything else than what was indexed)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(record.path, flags | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno != errno.ELOOP:  # ELOOP: the last part is a symbolic link
            raise _gone_or_unreadable(record, exc) from None
        try:
            if not stat.S_ISREG(os.stat(record.path).st_mode):  # never open a device
                raise FileChanged(_changed(record, "is no longer a regular file"))
            fd = os.open(record.path, flags)
        except OSError as inner:
            raise _gone_or_unreadable(record, inner) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileChanged(_changed(record, "is no longer a regular file"))
        if (info.st_size, info.st_mtime_ns) != (record.size, record.mtime_ns):
            raise FileChanged(_changed(record, "has changed"))
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def read_chunks(fd: int, size: int):
    """The file's bytes, at most `size` of them, in chunks; closes `fd` when done."""
    try:
        left = size
        while left > 0:
            data = os.read(fd, min(CHUNK, left))
            if not data:
                return
            left -= len(data)
            yield data
    finally:
        os.close(fd)


def _changed(record, what: str) -> str:
    return f"the file of image {record.id} {what} since indexing; index its folder again"


def _gone_or_unreadable(record, exc: OSError) -> XmrError:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return ItemNotFound(f"the file of image {record.id} is no longer on disk")
    return FileChanged(_changed(record, f"cannot be opened now ({exc.strerror})"))
