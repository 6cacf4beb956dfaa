"""A pretrained matcher's vision tokens, kept per image at index time (`xmr index
--reranker blip-itm-base-coco`), so a query re-ranks K images without K vision passes.

    DIR/images.mvf   (capacity, *record) by id: the vision tokens in one of two forms
    DIR/images.mvk   (capacity, 2) int64 by id: [id + 1, content key] once the row is whole

Forms (`--feature-form`), for base at 384 px (577 tokens x 768):
    fp32  (N, V) float32: exactly what the vision tower gave  1.77 MB an image
    fp16  (N, V) float16                                      886 KB an image
    int8  (N, V + 4) int8: each token scaled by its own max   445 KB an image
          |x| / 127, the scale kept as float32 in the last four bytes

Unlike the native re-ranker's features (feature_cache.py), these come from the image file,
not from the stored encoder tokens, so they are filled by a pass of their own after the
encoder's and may lag it. Each row therefore says whom it belongs to: the key row is
written (and flushed) only after its features are, and names the id and the file's
content hash. A row whose key does not match (never written, a kill mid-pass, punched out
by compact, a store cut short) is simply missing: the search computes that image's tokens
on demand (matcher_cache.py) and the next `xmr index` fills it. Ids are never reused for
new content (a changed file gets a new id), so a matching key is never stale.

The manifest's "matcher_features" entry names the matcher by fingerprint; another
matcher ignores the rows, and keeping another's replaces them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xmr.retrieval.arraystore import ArrayStore

if TYPE_CHECKING:
    from xmr.retrieval.matching import Matcher

FEATURES_FILE = "images.mvf"
KEYS_FILE = "images.mvk"
MANIFEST_KEY = "matcher_features"
FORMS = ("fp16", "int8", "fp32")


def content_key(content_hash: str | None) -> int:
    """A file's content hash as a non-zero 63-bit integer (0 means "no row")."""
    if not content_hash:
        return 1
    return (int(content_hash[:16], 16) & ((1 << 63) - 1)) or 1


def record_layout(form: str, shape: tuple[int, int]) -> tuple[tuple[int, int], str]:
    """(record shape, dtype) of one image's tokens (N, V) in `form`."""
    n, v = shape
    if form in ("fp16", "fp32"):
        return (n, v), "float16" if form == "fp16" else "float32"
    if form == "int8":
        return (n, v + 4), "int8"
    raise ValueError(f"feature form must be one of {FORMS}, not {form!r}")


def encode(form: str, features: np.ndarray) -> np.ndarray:
    """(B, N, V) float32 -> records of `form`."""
    if form in ("fp16", "fp32"):
        return features.astype(np.float16 if form == "fp16" else np.float32)
    scale = np.abs(features).max(axis=-1, keepdims=True).astype(np.float32) / 127.0
    scale = np.maximum(scale, np.finfo(np.float32).tiny)  # (B, N, 1), never 0
    q = np.clip(np.rint(features / scale), -127, 127).astype(np.int8)
    return np.concatenate([q, scale.view(np.int8)], axis=-1)  # (B, N, V + 4)


def decode(form: str, records: np.ndarray) -> np.ndarray:
    """Records of `form` -> (B, N, V) float32."""
    if form in ("fp16", "fp32"):
        return records.astype(np.float32)
    scale = np.ascontiguousarray(records[..., -4:]).view(np.float32)  # (B, N, 1)
    return records[..., :-4].astype(np.float32) * scale


@dataclass
class KeptFeatures:
    directory: Path
    fingerprint: str
    matcher: str  # the matcher's name, for people reading the manifest
    source: dict  # MatcherSource.as_dict(): what `auto` loads for an index that keeps these
    form: str
    shape: tuple[int, int]  # (N, V)
    writable: bool = False

    def __post_init__(self):
        record, dtype = record_layout(self.form, self.shape)
        self.features = ArrayStore(self.directory / FEATURES_FILE, record, dtype, self.writable)
        self.keys = ArrayStore(self.directory / KEYS_FILE, (2,), "int64", self.writable)

    @classmethod
    def from_manifest(cls, directory: Path, entry: dict | None, writable: bool = False):
        if not entry or not (Path(directory) / FEATURES_FILE).exists():
            return None
        rows, width = (int(s) for s in entry["shape"])
        shape = (rows, width)
        return cls(Path(directory), entry["fingerprint"], entry.get("matcher", ""),
                   entry.get("source") or {}, entry["form"], shape, writable)  # fmt: skip

    def manifest_entry(self) -> dict:
        return {
            "matcher": self.matcher,
            "fingerprint": self.fingerprint,
            "source": self.source,
            "form": self.form,
            "shape": list(self.shape),
        }

    def serves(self, matcher: Matcher | None) -> bool:
        return matcher is not None and matcher.fingerprint == self.fingerprint

    def present(self, ids: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """(K,) bool: the rows of `ids` that are whole and belong to the content `keys`."""
        ids = np.asarray(ids, dtype=np.int64)
        found = np.zeros(len(ids), dtype=bool)
        inside = ids < min(self.keys.capacity, self.features.capacity)
        if inside.any():
            stored = self.keys.read(ids[inside])  # (k, 2)
            found[inside] = (stored[:, 0] == ids[inside] + 1) & (stored[:, 1] == keys[inside])
        return found

    def read(self, ids: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(K,) ids and content keys -> (features (K, N, V) float32, found (K,) bool); the
        rows not found are zeros."""
        found = self.present(ids, keys)
        out = np.zeros((len(ids), *self.shape), dtype=np.float32)
        if found.any():
            out[found] = decode(self.form, self.features.read(np.asarray(ids)[found]))
        return out, found

    def write(self, ids: np.ndarray, keys: np.ndarray, features: np.ndarray) -> None:
        """Rows first, made durable, then the keys that vouch for them."""
        ids = np.asarray(ids, dtype=np.int64)
        self.features.write(ids, encode(self.form, features))
        self.features.flush()
        self.keys.write(ids, np.stack([ids + 1, np.asarray(keys, dtype=np.int64)], axis=1))
        self.keys.flush()

    def release(self, live_ids: np.ndarray) -> int:
        """Give back dead ids' blocks (compact); their keys read back as zeros: missing."""
        return self.features.release(live_ids) + self.keys.release(live_ids)

    def allocated_bytes(self) -> int:
        total = 0
        for store in (self.features, self.keys):
            try:
                total += store.allocated_bytes()
            except FileNotFoundError:
                pass
        return total

    def close(self) -> None:
        self.features.close()
        self.keys.close()


def remove_files(directory: Path) -> None:
    for name in (FEATURES_FILE, KEYS_FILE):
        (Path(directory) / name).unlink(missing_ok=True)
