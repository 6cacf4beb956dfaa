"""Walk folder trees for image files: recursive, excludes, hidden files, symlink-loop safe."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from xmr.retrieval.errors import InputError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


@dataclass(frozen=True)
class ScannedFile:
    path: str  # absolute
    size: int
    mtime_ns: int


def scan_folders(
    roots: Iterable[Path],
    exclude: Iterable[str] = (),
    include_hidden: bool = False,
    follow_symlinks: bool = True,
    on_skip=None,
) -> Iterator[ScannedFile]:
    """Yield every image file under `roots`, each path once.

    `exclude` holds globs matched against the path relative to its root and against
    each name (so `raw` and `*/thumbs/*` both work). Directories are visited once by
    (device, inode), so a symlink loop cannot recurse forever. `on_skip(path, reason)`
    hears of image-named entries that cannot be read (a dangling symlink).
    """
    on_skip = on_skip or (lambda path, reason: None)
    patterns = list(exclude)
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[str] = set()
    for root in roots:
        root = Path(root).expanduser()
        if not root.exists():
            raise InputError(f"{root} does not exist; give a folder of images")
        root = root.resolve()
        if root.is_file():
            entry = scan_file(root, on_skip)
            if entry is not None:
                yield entry
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_symlinks):
            stat = os.stat(dirpath)
            if (stat.st_dev, stat.st_ino) in seen_dirs:
                dirnames[:] = []
                continue
            seen_dirs.add((stat.st_dev, stat.st_ino))
            rel_dir = os.path.relpath(dirpath, root)
            dirnames[:] = sorted(
                d
                for d in dirnames
                if (include_hidden or not d.startswith("."))
                and not _excluded(d, os.path.join(rel_dir, d), patterns)
            )
            for name in sorted(filenames):
                if not include_hidden and name.startswith("."):
                    continue
                if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                    continue
                if _excluded(name, os.path.normpath(os.path.join(rel_dir, name)), patterns):
                    continue
                path = os.path.join(dirpath, name)
                real = os.path.realpath(path) if follow_symlinks else path
                if real in seen_files:
                    continue
                seen_files.add(real)
                entry = scan_file(Path(path), on_skip)
                if entry is not None:
                    yield entry


def _excluded(name: str, rel_path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(rel_path, p) for p in patterns)


def scan_file(path: Path, on_skip) -> ScannedFile | None:
    """One file's entry; None (after telling `on_skip` why, unless it simply vanished)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            on_skip(str(path.absolute()), f"broken symlink (points to {os.readlink(path)})")
        return None  # else: deleted while walking
    except OSError as exc:
        on_skip(str(path.absolute()), f"cannot read file ({exc.strerror})")
        return None
    if not path.is_file():
        on_skip(str(path.absolute()), "not a regular file")
        return None
    return ScannedFile(str(path.absolute()), stat.st_size, stat.st_mtime_ns)
