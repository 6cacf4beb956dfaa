"""Helpers of the reliability tests: small real file systems (a tmpfs of a few MB for a full
disk, a read-only bind mount for a read-only index), an index built with the CLI, a SIGKILL
at the right moment, and the one-line error check. Mounting needs root (the test
container); where it is missing the caller skips with the reason, and the hook-based tests
(XMR_FAULT_ENOSPC_AT) cover disk-full everywhere."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path


def _mount(*args) -> str | None:
    """Run mount(8); None on success, else why not."""
    if os.geteuid() != 0:
        return "mounting needs root"
    try:
        done = subprocess.run(["mount", *map(str, args)], capture_output=True, text=True)
    except FileNotFoundError:
        return "no mount(8) here"
    return None if done.returncode == 0 else (done.stderr.strip() or "mount failed")


@contextlib.contextmanager
def tmpfs(folder: Path, size: str):
    """A tmpfs of `size` (e.g. "8m") mounted at `folder`; yields None, or why it could not."""
    folder.mkdir(parents=True, exist_ok=True)
    failure = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", folder)
    try:
        yield failure
    finally:
        if failure is None:
            subprocess.run(["umount", "-l", str(folder)], check=False)


@contextlib.contextmanager
def read_only_view(source: Path, target: Path):
    """`source` bind-mounted read-only at `target`; yields None, or why it could not."""
    target.mkdir(parents=True, exist_ok=True)
    failure = _mount("--bind", "-o", "ro", source, target)
    if failure is None:
        probe = target / ".write-probe"
        try:
            probe.write_text("x")
            probe.unlink()
            failure = "the bind mount is writable (old mount(8)?)"
        except OSError as exc:
            if exc.errno != errno.EROFS:
                failure = f"unexpected error probing the mount: {exc}"
    try:
        yield failure
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill the file system under `folder` until at most `leave` bytes are free."""
    filler = folder / "filler.bin"
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(filler, "wb", buffering=0) as f:  # unbuffered: ENOSPC surfaces in write()
        chunk = b"\0" * 65536
        remaining = max(0, free - leave)
        try:
            while remaining > 0:
                remaining -= f.write(chunk[: min(len(chunk), remaining)])
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return filler


def error_line(result) -> str:
    """The single `Error: ...` line a failed command printed (a subprocess result or a
    CliRunner one), after any `note:` lines; never a traceback."""
    stderr = result.stderr
    assert "Traceback" not in stderr and "Traceback" not in (result.stdout or ""), stderr
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("note:")]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: "), lines[0]
    return lines[0]


def cli_built_index(cli, tmp_path: Path, spec: str, captions: list[str], n_images: int):
    """(folder, corpus, index) built with the CLI, `n_images` images and `captions`, so the
    index records where its files came from, as a user's does."""
    from conftest import make_images

    folder = tmp_path / "photos"
    make_images(folder, n_images)
    corpus = tmp_path / "captions.txt"
    corpus.write_text("\n".join(captions) + "\n")
    index_dir = tmp_path / "index"
    base = ("--index", index_dir, "--model", spec)
    assert cli("index", folder, *base, "--workers", "0").exit_code == 0
    assert cli("add-texts", corpus, *base).exit_code == 0
    return folder, corpus, index_dir


def sigkill_when(proc, ready, what: str, timeout: float = 180) -> None:
    """SIGKILL `proc` as soon as `ready()` holds (polled), failing if it ends first."""
    import signal
    import time

    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, f"the process ended before {what}"
            assert time.monotonic() < deadline, f"no {what} after {timeout:.0f} s"
            time.sleep(0.01)
        assert proc.poll() is None, f"the process finished before it could be killed ({what})"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
