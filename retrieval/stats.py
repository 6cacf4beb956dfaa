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
        "text_tokens": manifest.get("text_tokens"),
        # {"reranker", "fingerprint", "shape"} of the kept image features (feature_cache.py)
        "reranker_features": manifest.get(MANIFEST_KEY),
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
