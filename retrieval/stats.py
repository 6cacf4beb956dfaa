"""What an index holds, as a plain dict (for `xmr info` and the HTTP server)."""

from __future__ import annotations

from xmr.retrieval.feature_cache import MANIFEST_KEY
from xmr.retrieval.library import Library


def index_info(library: Library) -> dict:
    counts = library.db.counts()
    files = library.disk_usage()
    manifest = library.manifest
    return {
        "directory": str(library.directory),
        "model": library.encoder_spec,
        "dim": manifest["dim"],
        "images": counts["images"],
        "images_skipped": counts["skipped"],
        "texts": counts["texts"],
        "image_tokens": manifest.get("image_tokens"),
        "image_token_pool": library.token_pool,
        "image_token_layer": library.token_layer,  # vision block (None: the last)
        "image_token_pixels": library.token_pixels,  # p: each token also has its p x p pixels
        "text_tokens": manifest.get("text_tokens"),
        # {"reranker", "fingerprint", "shape"} of the kept image features (feature_cache.py)
        "reranker_features": manifest.get(MANIFEST_KEY),
        # a pretrained matcher's kept vision tokens and its search-time cache (bytes on disk)
        "matcher_features": _matcher_features(library),
        "faiss": {
            "images": library.images.index.live_count,
            "texts": library.texts.index.live_count,
        },
        "index": {
            "policy": library.policy.as_dict(),
            "images": library.images.index.describe(),
            "texts": library.texts.index.describe(),
        },
        "files": files,
        "bytes_total": sum(files.values()),
        "notices": list(library.notices),  # what opening found (damage worked around)
    }


def _matcher_features(library: Library) -> dict | None:
    from xmr.retrieval.matcher_cache import CACHE_DIR
    from xmr.retrieval.matcher_features import MANIFEST_KEY as MATCHER_KEY

    entry = library.manifest.get(MATCHER_KEY)
    cache = library.directory / CACHE_DIR
    cached = sum(p.stat().st_size for p in cache.glob("*/*.npy")) if cache.is_dir() else 0
    if entry is None and not cached:
        return None
    kept = library.images.kept
    return {
        "matcher": entry and entry.get("matcher"),
        "form": entry and entry.get("form"),
        "shape": entry and entry.get("shape"),
        "kept_bytes": kept.allocated_bytes() if kept is not None else 0,
        "cache_bytes": cached,
    }
