"""Walk folder trees for image files: recursive, excludes, hidden files; symlinked folders
only when asked, never in a loop and never into a pseudo file system (/proc, /sys)."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from xmr.indexer.pseudo_fs import pseudo_file_system
from xmr.retrieval.errors import InputError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


@dataclass(frozen=True)
class ScannedFile:
    path: str  # absolute
    size: int
    mtime_ns: int


@dataclass
class WalkCounts:
    """What the walk passed by, for the summary."""

    links_not_followed: int = 0  # symlinked folders left out (no --follow-links)
    pseudo_skipped: list[str] = field(default_factory=list)  # mount points of /proc and kin


def scan_folders(
    roots: Iterable[Path],
    exclude: Iterable[str] = (),
    include_hidden: bool = False,
    follow_links: bool = False,
    on_skip=None,
    counts: WalkCounts | None = None,
) -> Iterator[ScannedFile]:
    """Yield every image file under `roots`, each path once.

    `exclude` holds globs matched against the path relative to its root and against
    each name (so `raw` and `*/thumbs/*` both work). Symlinked folders are entered only
    with `follow_links`; directories are visited once by (device, inode), so a link loop
    cannot recurse forever, and pseudo file systems are never entered. Symlinked files
    are indexed (a photo library often links pictures into albums). `on_skip(path,
    reason)` hears of image-named entries that cannot be read (a dangling symlink);
    `counts` gathers what was passed by.
    """
    on_skip = on_skip or (lambda path, reason: None)
    counts = counts if counts is not None else WalkCounts()
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
        kind = pseudo_file_system(root.stat().st_dev)
        if kind is not None:
            raise InputError(
                f"{root} is a {kind} pseudo file system, not a folder of pictures; "
                "give the folder your images are in"
            )
        for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_links):
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
                and _enterable(os.path.join(dirpath, d), follow_links, counts)
            )
            for name in sorted(filenames):
                if not include_hidden and name.startswith("."):
                    continue
                if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                    continue
                if _excluded(name, os.path.normpath(os.path.join(rel_dir, name)), patterns):
                    continue
                path = os.path.join(dirpath, name)
                real = os.path.realpath(path)
                if real in seen_files:
                    continue
                seen_files.add(real)
                entry = scan_file(Path(path), on_skip)
                if entry is not None:
                    yield entry


def _enterable(path: str, follow_links: bool, counts: WalkCounts) -> bool:
    """Whether the walk goes into the folder `path`: not a symlink unless asked, never a
    pseudo file system (a mount point such as /proc met while walking / )."""
    if os.path.islink(path) and not follow_links:
        counts.links_not_followed += 1
        return False
    try:
        device = os.stat(path).st_dev
    except OSError:
        return False  # a dangling link or a folder gone while walking
    if pseudo_file_system(device) is not None:
        counts.pseudo_skipped.append(path)
        return False
    return True


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
