"""The re-ranker's image features, kept beside an index's image tokens.

Re-ranking K images for a text query runs the re-ranker's image stem over K x N' patch
tokens, and for xmr-tiny's convolutional stem that is most of stage 2's time (about
100 of 200 ms at K = 128 on two cores). The stem depends on the image alone, so `xmr index`
runs it once per image and keeps its output here:

    DIR/images.rrf    (capacity, N', W) float16 by id   (Reranker.image_features)

and the manifest's "reranker_features" entry names the re-ranker it belongs to by
fingerprint (a hash of its files: weights and config, less the stage-1 weight that
calibration changes). A search with that re-ranker reads these rows instead of recomputing
them; any other re-ranker recomputes from the tokens, as before. `xmr index` compares the
fingerprint with its re-ranker's files before loading anything, so the first run after a
re-ranker changes (a new version shipped) refills the rows even when no image is new.

The rows must exist for every live image, or a search would read zeros. So the cache is
only ever extended by the writer that holds its re-ranker (`Collection.write` calls
`featurize`), is filled for every existing image when it is created, and is deleted the
moment images are written without that re-ranker (`xmr index --reranker none`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xmr.retrieval.arraystore import ArrayStore

if TYPE_CHECKING:
    from xmr.retrieval.reranker import RerankerRuntime


FEATURES_FILE = "images.rrf"
MANIFEST_KEY = "reranker_features"


@dataclass
class FeatureCache:
    store: ArrayStore
    fingerprint: str
    reranker: str  # the re-ranker's name, for people reading the manifest
    # tokens (B, N', D) -> features (B, N', W); None in a reader or a writer without it
    featurize: Callable[[np.ndarray], np.ndarray] | None = None

    @classmethod
    def from_manifest(
        cls, directory: Path, entry: dict | None, writable: bool = True
    ) -> FeatureCache | None:
        if not entry or not (Path(directory) / FEATURES_FILE).exists():
            return None
        path = Path(directory) / FEATURES_FILE
        store = ArrayStore(path, tuple(entry["shape"]), "float16", writable)
        return cls(store, entry["fingerprint"], entry.get("reranker", ""))

    def manifest_entry(self) -> dict:
        return {
            "reranker": self.reranker,
            "fingerprint": self.fingerprint,
            "shape": list(self.store.record_shape),
        }

    def serves(self, reranker: RerankerRuntime | None) -> bool:
        """True when `reranker`'s image features are the ones kept here."""
        return reranker is not None and reranker.fingerprint == self.fingerprint

    def write(self, ids: np.ndarray, tokens: np.ndarray) -> None:
        """tokens (B, N', D) as stored -> their features, by id."""
        if self.featurize is None:
            raise RuntimeError("FeatureCache.write without the re-ranker it belongs to")
        self.store.write(ids, self.featurize(tokens))

    def read(self, ids: np.ndarray) -> np.ndarray:
        return self.store.read(ids)  # (K, N', W) float16
