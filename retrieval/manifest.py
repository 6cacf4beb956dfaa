"""manifest.json: what an index is (encoder, shapes, policy), checked before it is trusted.

The file is written atomically (storage.atomic_write) and a copy is kept in the database's
meta table, so a damaged file (truncated, `{}`, `[1, 2]`, binary bytes) is restored from
the copy; the file wins whenever it is sound, being the last thing a writer writes.
"""

from __future__ import annotations

import json
from pathlib import Path

from xmr.retrieval.errors import ManifestDamaged

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
