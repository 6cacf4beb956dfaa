"""manifest.json: what an index is (encoder, shapes, policy), checked before it is trusted.

The file is written atomically (storage.atomic_write) and a copy is kept in the database's
meta table, so a damaged file (truncated, `{}`, `[1, 2]`, binary bytes) is restored from
the copy; the file wins whenever it is sound, being the last thing a writer writes.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from xmr.retrieval.errors import ManifestDamaged
from xmr.retrieval.index_choice import IndexPolicy
from xmr.retrieval.reranker_files import TokenSource, folder_token_source, reranker_folder
from xmr.retrieval.storage import atomic_write_bytes, move_aside

if TYPE_CHECKING:
    from xmr.retrieval.db import Database
    from xmr.retrieval.db_read import DatabaseReader
    from xmr.retrieval.encoder import Encoder, LazyEncoder

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1


def manifest_problem(data: object) -> str | None:
    """What is wrong with a parsed manifest, or None when it has the shape xmr needs."""
    if not isinstance(data, dict):
        return f"it holds a JSON {type(data).__name__}, not an object"
    encoder = data.get("encoder")
    checks = [
        (_is_int(data.get("format")), "'format' is not a number"),
        (
            isinstance(encoder, dict)
            and isinstance(encoder.get("spec"), str)
            and isinstance(encoder.get("identity"), dict),
            "'encoder' lacks its spec and identity",
        ),
        (_is_int(data.get("dim")) and data.get("dim", 0) > 0, "'dim' is not a positive number"),
        (_optional_shape(data.get("image_tokens")), "'image_tokens' is not [count, dim]"),
        (_optional_shape(data.get("text_tokens")), "'text_tokens' is not [count, dim]"),
        (
            data.get("image_token_pool") is None or _is_int(data["image_token_pool"]),
            "'image_token_pool' is not a number",
        ),
        (
            data.get("image_token_layer") is None or _is_int(data["image_token_layer"]),
            "'image_token_layer' is not a number",
        ),
        (
            data.get("image_token_pixels") is None or _is_int(data["image_token_pixels"]),
            "'image_token_pixels' is not a number",
        ),
        (data.get("index") is None or isinstance(data["index"], dict), "'index' is not an object"),
        (_optional_features(data.get("reranker_features")), "'reranker_features' is malformed"),
        (_optional_strings(data.get("image_roots")), "'image_roots' is not a list of paths"),
        (_optional_strings(data.get("text_sources")), "'text_sources' is not a list of paths"),
    ]
    for ok, problem in checks:
        if not ok:
            return problem
    return None


def read_manifest_file(directory: Path) -> dict:
    """The manifest in `directory`; raises ManifestDamaged saying what is wrong with it."""
    path = Path(directory) / MANIFEST_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise ManifestDamaged(f"{path} is missing") from exc
    except OSError as exc:
        raise ManifestDamaged(f"{path} cannot be read ({exc.strerror})") from exc
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ManifestDamaged(f"{path} is damaged (binary bytes, not JSON text)") from exc
    except ValueError as exc:
        raise ManifestDamaged(f"{path} is damaged (not valid JSON: {exc})") from exc
    problem = manifest_problem(data)
    if problem is not None:
        raise ManifestDamaged(f"{path} is damaged ({problem})")
    return data


def manifest_bytes(manifest: dict) -> bytes:
    return json.dumps(manifest, indent=2).encode()


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_shape(value) -> bool:
    return value is None or (
        isinstance(value, list) and len(value) == 2 and all(_is_int(v) and v > 0 for v in value)
    )


def _optional_strings(value) -> bool:
    return value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value))


def _optional_features(value) -> bool:
    return value is None or (
        isinstance(value, dict)
        and isinstance(value.get("fingerprint"), str)
        and isinstance(value.get("shape"), list)
        and all(_is_int(v) and v > 0 for v in value["shape"])
    )


# -- the manifest of an index: made, written with its database copy, read with fallback --
def describe_identity(identity: dict) -> str:
    name = str(identity.get("name"))
    pretrained = identity.get("pretrained")
    return name if pretrained is None else f"{name}:{pretrained}"


def _shape(shape) -> list[int] | None:
    return None if shape is None else [int(s) for s in shape]


def write_manifest(directory: Path, db: Database, manifest: dict) -> None:
    """The file first (what readers trust), then the database's copy of it."""
    atomic_write_bytes(directory / MANIFEST_FILE, manifest_bytes(manifest))
    db.store_manifest(manifest)


def new_manifest(
    directory: Path,
    encoder: Encoder | LazyEncoder,
    keep_tokens: bool,
    token_pool: int | None,
    token_source: TokenSource | str,
) -> dict:
    """The manifest of a new index; `token_source` "auto" keeps the image tokens the
    model's own re-ranker reads."""
    token_pool = token_pool or 1
    if not isinstance(token_source, TokenSource):  # "auto"
        token_source = folder_token_source(reranker_folder("auto", encoder))
    image_tokens = encoder.image_token_shape if keep_tokens else None
    # Pooled tokens have no patch of their own to carry, and a pixel stem reads every patch.
    keeps_pixels = image_tokens is not None and token_source.pixels and token_pool == 1
    pixel_patch = _pixel_patch(encoder) if keeps_pixels else 0
    if image_tokens is not None and token_pool > 1:
        from xmr.retrieval.token_pooling import pooled_count

        image_tokens = (pooled_count(image_tokens[0], token_pool), image_tokens[1])
    if image_tokens is not None and pixel_patch:
        image_tokens = (image_tokens[0], image_tokens[1] + 3 * pixel_patch**2)
    return {
        "format": FORMAT_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "encoder": {"spec": encoder.spec.canonical, "identity": encoder.identity()},
        "dim": encoder.dim,
        "image_tokens": _shape(image_tokens),
        "image_token_pool": token_pool,
        "image_token_layer": token_source.layer,
        "image_token_pixels": pixel_patch,
        "text_tokens": _shape(encoder.text_token_shape) if keep_tokens else None,
        "index": IndexPolicy().as_dict(),
    }


def _pixel_patch(encoder: Encoder | LazyEncoder) -> int:
    """p of the p x p pixel patch under each image token: the input side over the side of
    the token grid (patch_pixels.with_patch_pixels)."""
    shape = encoder.image_token_shape
    if shape is None:  # no patch grid: no patch pixels either
        return 0
    return encoder.image_size[0] // math.isqrt(shape[0])


def load_manifest(directory: Path, db: DatabaseReader, writable: bool) -> tuple[dict, list[str]]:
    """(manifest, notices): the file when sound, else the database's copy of it (a writer
    also puts the copy back in place of the damaged file, which it keeps aside)."""
    try:
        manifest = read_manifest_file(directory)
    except ManifestDamaged as exc:
        copy = db.stored_manifest()
        if copy is None or manifest_problem(copy) is not None:
            raise ManifestDamaged(
                f"{exc}, and the database holds no copy of it; rebuild it with `xmr index "
                "FOLDERS` and the model the index was built with",
                setting="model",
            ) from exc
        if not writable:
            return copy, [f"{exc}; using the database's copy (`xmr check --repair` restores it)"]
        path = directory / MANIFEST_FILE
        kept = f"; the damaged file is kept as {move_aside(path).name}" if path.exists() else ""
        atomic_write_bytes(path, manifest_bytes(copy))
        return copy, [f"{exc}; restored it from the database's copy{kept}"]
    if writable:  # indexes from before the copy existed get one now
        from xmr.retrieval.db import Database

        assert isinstance(db, Database)
        db.store_manifest(manifest)
    return manifest, []
