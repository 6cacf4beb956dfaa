"""One writing process per index: an exclusive flock on DIR/write.lock, and what a
process sets up before it first writes (the fork hook, storage's umask and fault hook).

A child forked while the lock is held (a decode worker) closes its inherited copy at
once and dies with the writer (PR_SET_PDEATHSIG), so a writer killed with -9 frees the
lock and leaves no orphaned workers behind.
"""

from __future__ import annotations

import fcntl
import os
import weakref
from pathlib import Path

from xmr.retrieval.errors import InputError, XmrError
from xmr.retrieval.storage import disk_errors, prepare_writes

LOCK_FILE = "write.lock"


class WriteLock:
    """An exclusive flock on DIR/write.lock: one writing process per index at a time.

    A child forked while it is held (a decode worker) closes its inherited copy at once
    and is killed when the writer dies (PR_SET_PDEATHSIG): a writer killed with -9 frees
    the lock when it dies, and leaves no orphaned workers behind."""

    _held: weakref.WeakSet[WriteLock] = weakref.WeakSet()

    def __init__(self, fd: int):
        self.fd: int | None = fd
        self.owner = os.getpid()

    @classmethod
    def acquire(cls, directory: Path) -> WriteLock:
        _prepare_writer()
        with disk_errors(directory):  # one line naming the folder
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):  # it, or a folder above it, a file
                raise InputError(
                    f"{directory} is not a folder (it or a folder above it is a file); give "
                    "the index a folder of its own",
                    setting="index",
                ) from None
            fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise XmrError(
                f"another xmr process is writing to {directory}; wait for it to finish"
            ) from exc
        lock = cls(fd)
        cls._held.add(lock)
        return lock

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _after_fork_in_child() -> None:
    owners = set()
    for lock in list(WriteLock._held):
        if lock.fd is not None:
            owners.add(lock.owner)
            try:
                os.close(lock.fd)  # the flock stays the parent's alone
            except OSError:
                pass
            lock.fd = None
    if owners:
        _die_with_parent(owners)


def _die_with_parent(parents: set[int]) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL (Linux; elsewhere no prctl)
    except (OSError, AttributeError):
        return
    if os.getppid() not in parents:  # the writer died before the line above
        os._exit(1)


_fork_hook: list[bool] = []  # registered once, by the first writer of this process


def _prepare_writer() -> None:
    """What a process needs before it first writes an index (not done at import: a
    reader never pays for it): the fork hook above and storage's umask and fault hook."""
    prepare_writes()
    if not _fork_hook:
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook.append(True)
