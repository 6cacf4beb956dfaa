"""Where ONNX exports live and how a stale one is never used. No torch here.

Exports are kept in a per-user cache, one folder per model *content*:
    $XMR_CACHE_DIR (else $XDG_CACHE_HOME/xmr, else ~/.cache/xmr) / onnx / <model key> /
        text.onnx  image-L<layer>.onnx  meta.json  (each .onnx with its weights, .onnx.data)
and re-rankers likewise under onnx/reranker-<fingerprint>/.

Why a cache keyed by the model rather than the index folder: one model serves many
indexes, and its exports are large (ViT-B-32's two towers are about 600 MB), so one copy
serves them all; a shipped model's folder may be read-only (site-packages); and an index
folder holds only what is derived from its own files. The key hashes the *content* of
the model's config and weights (plus the export format, and for random weights the
torch and open_clip versions that drew them), so weights replaced at the same path give
another key: an export made from other weights is never found, let alone trusted. The
content hash of a large file is remembered by (path, size, mtime, inode) in hashes.json,
so a cold query hashes nothing unless the file changed.

Every file is written to a temporary name, flushed, fsynced and renamed; meta.json is
written last, and an export counts as present only when meta.json names it with the
size and sha256 it was written with (a damaged or replaced file is made again).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

from xmr.retrieval.modelspec import HUB_CONFIG_FILE, HUB_WEIGHTS_FILE, ModelSpec

FORMAT = 2  # bump when what an export holds changes: every older export is then ignored
META_FILE = "meta.json"
HASHES_FILE = "hashes.json"


def cache_root() -> Path:
    base = os.environ.get("XMR_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = str(Path(xdg) / "xmr")
    return Path(base) / "onnx"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: Path, root: Path | None = None) -> str:
    """The sha256 of a file's content, remembered by its stat in the cache."""
    root = root or cache_root()
    path = Path(path).resolve()
    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
    known = _read_json(root / HASHES_FILE) or {}
    entry = known.get(str(path))
    if isinstance(entry, dict) and entry.get("stat") == stamp:
        return str(entry["sha256"])
    digest = _sha256(path)
    known[str(path)] = {"stat": stamp, "sha256": digest}
    with contextlib.suppress(OSError):  # a read-only cache only costs the next query a hash
        write_atomic(root / HASHES_FILE, json.dumps(known).encode())
    return digest


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def model_files(spec: ModelSpec) -> list[Path]:
    """The files whose content decides what the model computes."""
    files = []
    if spec.kind in ("shipped", "folder"):
        files.append(Path(spec.name) / HUB_CONFIG_FILE)
        if spec.pretrained is None:
            files.append(Path(spec.name) / HUB_WEIGHTS_FILE)
    elif spec.kind == "config":
        files.append(Path(spec.name))
    if spec.pretrained and not spec.random_weights and Path(spec.pretrained).is_file():
        files.append(Path(spec.pretrained))
    return files


def model_key(spec: ModelSpec, root: Path | None = None) -> str:
    """Names a model's exports by what it computes (see the module's docstring). An open_clip
    pretrained tag names fixed published weights, so the tag itself is hashed."""
    parts: dict[str, object] = {
        "format": FORMAT,
        "kind": spec.kind,
        "name": Path(spec.name).name if spec.kind != "openclip" else spec.name,
        "pretrained": None if spec.pretrained and "/" in spec.pretrained else spec.pretrained,
        "files": [file_digest(path, root) for path in model_files(spec)],
    }
    if spec.random_weights or spec.kind == "openclip":
        parts["versions"] = [_package_version("torch"), _package_version("open_clip_torch")]
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return digest[:24]


def model_folder(spec: ModelSpec, root: Path | None = None) -> Path:
    root = root or cache_root()
    return root / model_key(spec, root)


def image_file(layer: int | None) -> str:
    """The image tower export giving the tokens of vision block `layer` (None: the last)."""
    return f"image-L{'last' if layer is None else int(layer)}.onnx"


def reranker_export_folder(fingerprint: str, root: Path | None = None) -> Path:
    return (root or cache_root()) / f"reranker-{FORMAT}-{fingerprint}"


def read_meta(folder: Path) -> dict | None:
    meta = _read_json(Path(folder) / META_FILE)
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def present(folder: Path, meta: dict | None, name: str) -> Path | None:
    """The export `name` of `folder` when meta.json lists it with the content it was
    written with (its sha256, remembered by stat: a file changed since is hashed again)."""
    entry = (meta or {}).get("files", {}).get(name)
    path = Path(folder) / name
    if not isinstance(entry, dict):
        return None
    try:
        for part, want in ((path, entry), (Path(f"{path}.data"), entry.get("data") or {})):
            if part.stat().st_size != want.get("bytes"):
                return None
            if file_digest(part, Path(folder).parent) != want.get("sha256"):
                return None
    except OSError:
        return None
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Temporary file in the same folder, flush, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def add_to_meta(folder: Path, name: str, info: dict, common: dict) -> None:
    """Record export `name` (already written) in meta.json, keeping the others."""
    meta = read_meta(folder) or {"format": FORMAT, "files": {}}
    meta.update(common)
    root = Path(folder).parent

    def stamp(path: Path) -> dict:
        return {"bytes": path.stat().st_size, "sha256": file_digest(path, root)}

    path = Path(folder) / name
    meta["files"][name] = {**info, **stamp(path), "data": stamp(Path(f"{path}.data"))}
    write_atomic(Path(folder) / META_FILE, json.dumps(meta, indent=1).encode())


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
