"""Writing index files so that a failure never replaces good data with bad.

Every file xmr writes whole (FAISS indexes and their sidecars, manifest.json) goes through
`atomic_write`: a temporary file in the same folder, every byte written with errors
checked, fsync, rename over the old file, fsync of the folder. On any failure the old
file stays, the temporary is removed, and the caller gets one typed error (DiskFull,
ReadOnlyIndex). Memory-mapped stores grow through `allocate` (posix_fallocate), so a full
disk is an ENOSPC error when space is asked for, never a SIGBUS when a page of a sparse
file is first touched through the map.

Test hook: `XMR_FAULT_ENOSPC_AT=N` (or `inject_enospc(N)`) makes the N-th write or
allocation of this process fail as a full disk would, for tests and benchmarks that
cannot mount a small file system.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from xmr.retrieval.errors import DiskFull, ReadOnlyIndex, XmrError

FAULT_ENV = "XMR_FAULT_ENOSPC_AT"
TEMP_SUFFIX = ".tmp"
_BUFFER = 1 << 20  # bytes collected before one os.write
_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)

_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: mkstemp makes 0600 files, a new index file gets 0666 & ~umask
_operations = 0  # writes and allocations so far (for the fault hook)
_fail_at: int | None = None if os.environ.get(FAULT_ENV) is None else int(os.environ[FAULT_ENV])


def inject_enospc(at: int | None) -> None:
    """Make the `at`-th write or allocation from now fail with ENOSPC (None: never)."""
    global _operations, _fail_at
    _operations, _fail_at = 0, at


def _use_space() -> None:
    global _operations
    _operations += 1
    if _fail_at is not None and _operations >= _fail_at:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + " (injected)")


def disk_error(exc: BaseException, path: Path | str) -> XmrError | None:
    """The one-line error for an OS error met while writing `path`; None for other errors."""
    code = getattr(exc, "errno", None)
    if code in _SPACE_ERRNOS:
        return DiskFull(
            f"no space left on device writing {path}; free space and re-run: "
            "nothing committed is lost"
        )
    if code in _READ_ONLY_ERRNOS:
        return ReadOnlyIndex(
            f"cannot write {path} ({os.strerror(code)}): the index folder is read-only; "
            "searching works, indexing needs a writable folder"
        )
    return None


@contextlib.contextmanager
def disk_errors(path: Path | str):
    """Inside it, an OS error of writing `path` that a person can act on (a full disk, a
    read-only folder) becomes its one-line DiskFull / ReadOnlyIndex; others pass."""
    try:
        yield
    except OSError as exc:
        error = disk_error(exc, path)
        if error is None:
            raise
        raise error from exc


class _Writer:
    """write(bytes) into an open file descriptor, buffered, every byte accounted for."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buffer = bytearray()

    def write(self, data) -> int:
        self.buffer += data
        if len(self.buffer) >= _BUFFER:
            self.drain()
        return len(data)

    def drain(self) -> None:
        view = memoryview(self.buffer)
        while view:
            _use_space()
            written = os.write(self.fd, view)  # raises OSError (ENOSPC, EIO, ...)
            view = view[written:]
        view.release()
        self.buffer.clear()


def atomic_write(path: Path, produce: Callable[[_Writer], object], mode: int | None = None) -> int:
    """Replace `path` with what `produce(writer)` writes; returns the bytes written.

    All or nothing: on any error the old file is untouched and no temporary is left.
    `mode`: the new file's permissions (default: those of the file it replaces).
    """
    path = Path(path)
    with disk_errors(path):  # a full or read-only folder can refuse the temporary itself
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent
        )
    tmp = Path(tmp_name)
    try:
        with disk_errors(path):
            try:
                os.fchmod(fd, _mode_of(path) if mode is None else mode)
                writer = _Writer(fd)
                produce(writer)
                writer.drain()
                os.fsync(fd)  # a delayed write error (NFS, full thin disk) surfaces here
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return size


def _mode_of(path: Path) -> int:
    """Keep the permissions of the file being replaced."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_UMASK


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> int:
    return atomic_write(path, lambda writer: writer.write(data), mode)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename itself stands
    finally:
        os.close(fd)


def allocate(fd: int, offset: int, length: int, path: Path) -> None:
    """Reserve real disk blocks for [offset, offset + length) of an open file (growing it)
    before they are written through a memory map; DiskFull when there is no room."""
    if length <= 0:
        return
    with disk_errors(path):
        _use_space()
        os.posix_fallocate(fd, offset, length)


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete temporaries a killed writer left in `folder` (call with the write lock held)."""
    removed = []
    for path in Path(folder).glob(f"*{TEMP_SUFFIX}"):  # hidden names match too
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def move_aside(path: Path) -> Path:
    """Rename a damaged file to NAME.damaged-YYYYmmddTHHMMSS (never deleted); returns it."""
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    os.replace(path, target)
    fsync_dir(path.parent)
    return target
