"""An index directory: manifest + SQLite + per-modality vector/token stores + FAISS.

    DIR/manifest.json        encoder identity, dimension, token shapes
    DIR/xmr.sqlite3          metadata, the source of truth (see db.py)
    DIR/images.vec           (capacity, D) float32 vectors by id     (arraystore.py)
    DIR/images.tok           (capacity, N, D) float16 tokens by id   (optional; N is
                             pooled_count(patches, k) for `--token-pool k`)
    DIR/images.faiss(.json)  FAISS index over the vectors            (vector_index.py)
    DIR/images.rrf           (capacity, N', W) float16 re-ranker image features by id
                             (optional, see feature_cache.py)
    DIR/texts.*              the same for the text corpus

Opening an index with a different encoder is refused: vectors of two models do not
share a space, and mixing them would give silently wrong results.

The manifest's "index" entry is the user's index policy (`--index-type`, `--max-memory`,
see index_choice.py). Each save applies it (`plan_upkeep`): a collection that outgrew
its type is rebuilt from the vector store, drifted knobs are re-tuned. `compact`
rebuilds every collection from the store and the database: no tombstones, the type the
policy picks for today's size, nothing re-encoded. A reader memory-maps IVF files.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from retrieval.arraystore import ArrayStore
from retrieval.db import Database, ImageRow, TextRow
from retrieval.errors import EncoderMismatch, IndexCorrupt, IndexNotFound, InputError, XmrError
from retrieval.feature_cache import FEATURES_FILE, MANIFEST_KEY, FeatureCache
from retrieval.index_choice import IndexPolicy, check_index_type, parse_size, plan_upkeep
from retrieval.locations import INDEX_ENV
from retrieval.vector_index import Sharding, StoredVectors, VectorIndex

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class Collection:
    """One modality of an index: its table, vectors, tokens and FAISS index."""

    name: str  # "images" | "texts"
    table: type
    vectors: ArrayStore
    tokens: ArrayStore | None
    index: VectorIndex
    faiss_path: Path
    token_pool: int = 1  # images: patch tokens stored k x k average-pooled
    features: FeatureCache | None = None  # images: the re-ranker's image features
    # Called when images are written without the features' re-ranker: drops the cache.
    drop_features: Callable[[], None] | None = None

    def write(
        self,
        ids: np.ndarray,
        vectors: np.ndarray,
        tokens: np.ndarray | None,
        features: np.ndarray | None = None,
    ) -> None:
        """Store new items' records (before the DB commit) and add them to FAISS.
        `features`: their re-ranker features when already known (a copy's)."""
        self.vectors.write(ids, vectors)
        if self.tokens is not None and tokens is not None:
            if tokens.shape[1:] != self.tokens.record_shape:  # the encoder's full patch grid
                from retrieval.token_pooling import pool_token_array

                tokens = pool_token_array(tokens, self.token_pool)  # (B, N', D)
            self.tokens.write(ids, tokens)
            if self.features is not None and features is not None:
                self.features.store.write(ids, features)
            elif self.features is not None and self.features.featurize is None:
                self.drop_features()  # a row left unwritten would be read as zeros
            elif self.features is not None:
                self.features.write(ids, tokens)
        self.index.add(ids, vectors)

    def copy(self, source_id: int, new_id: int) -> None:
        """A duplicate file reuses the vector (tokens, features) of its twin."""
        source = np.array([source_id])
        tokens = None if self.tokens is None else self.tokens.read(source)
        features = None if self.features is None else self.features.read(source)
        self.write(np.array([new_id]), self.vectors.read(source), tokens, features)

    def stores(self) -> list[ArrayStore]:
        """The id-addressed files of this collection."""
        stores = [self.vectors, self.tokens, self.features and self.features.store]
        return [s for s in stores if s is not None]

    def flush(self) -> None:
        for store in self.stores():
            store.flush()


class Library:
    def __init__(self, directory: Path, manifest: dict, writable: bool):
        self.directory = Path(directory)
        self.manifest = manifest
        self.writable = writable
        self._lock_file = None
        if writable:
            self._lock()
        self.db = Database(self.directory)
        self.policy = IndexPolicy.from_dict(manifest.get("index"))
        dim = int(manifest["dim"])
        generation = self.db.generation()
        self.images = self._collection(
            "images", ImageRow, dim, manifest.get("image_tokens"), generation
        )
        self.images.token_pool = self.token_pool
        self.images.features = FeatureCache.from_manifest(
            self.directory, manifest.get(MANIFEST_KEY)
        )
        self.images.drop_features = self._drop_features
        self.texts = self._collection(
            "texts", TextRow, dim, manifest.get("text_tokens"), generation
        )
        self.sync()

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, directory: Path, writable: bool = False) -> Library:
        directory = Path(directory).expanduser()
        manifest_path = directory / MANIFEST_FILE
        if not manifest_path.exists():
            raise IndexNotFound(
                f"no xmr index at {directory}; build one with `xmr index FOLDER --index "
                f"{directory}` (or set {INDEX_ENV})"
            )
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise IndexCorrupt(f"{manifest_path} is unreadable: {exc}") from exc
        return cls(directory, manifest, writable)

    @classmethod
    def open_or_create(
        cls,
        directory: Path,
        encoder,
        keep_tokens: bool = True,
        index_type: str | None = None,
        max_memory: str | int | None = None,
        token_pool: int | None = None,
        token_layer: int | None | str = "auto",
    ) -> Library:
        """Open for writing with `encoder`, creating the index if it does not exist.

        `index_type` / `max_memory` (None: keep the stored policy) change the index
        policy; the next save applies it. `token_pool` k stores image patch tokens k x k
        average-pooled (k^2 less disk; a re-ranker trained with `--image-pool k` reads them
        unchanged); fixed when the index is created, as is `token_layer`, the vision block
        the stored image tokens come from (None: the last; "auto": the block the model's own
        re-ranker reads); whatever writes image tokens passes `library.token_layer` on.
        """
        directory = Path(directory).expanduser()
        policy_change = _policy_change(index_type, max_memory)  # bad values fail first
        if (directory / MANIFEST_FILE).exists():
            library = cls.open(directory, writable=True)
            try:
                library.check_encoder(encoder.spec.identity())  # no model load needed
            except EncoderMismatch:
                library.close()
                raise
            if token_pool not in (None, library.token_pool):
                library.close()
                raise InputError(
                    f"index {directory} stores image tokens pooled {library.token_pool}x"
                    f"{library.token_pool}; --token-pool {token_pool} needs a new --index "
                    "(or leave the option out)"
                )
            library.set_policy(**policy_change)
            return library
        directory.mkdir(parents=True, exist_ok=True)
        token_pool = token_pool or 1
        if token_layer == "auto":
            from retrieval.reranker_files import folder_token_layer, reranker_folder

            token_layer = folder_token_layer(reranker_folder("auto", encoder))
        image_tokens = encoder.image_token_shape if keep_tokens else None
        if image_tokens is not None and token_pool > 1:
            from retrieval.token_pooling import pooled_count

            image_tokens = (pooled_count(image_tokens[0], token_pool), image_tokens[1])
        manifest = {
            "format": FORMAT_VERSION,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "encoder": {"spec": encoder.spec.canonical, "identity": encoder.identity()},
            "dim": encoder.dim,
            "image_tokens": _shape(image_tokens),
            "image_token_pool": token_pool,
            "image_token_layer": token_layer,
            "text_tokens": _shape(encoder.text_token_shape) if keep_tokens else None,
            "index": IndexPolicy().as_dict(),
        }
        _write_json_atomic(directory / MANIFEST_FILE, manifest)
        library = cls(directory, manifest, writable=True)
        library.set_policy(**policy_change)
        return library

    @property
    def token_pool(self) -> int:
        """k when image patch tokens are stored k x k pooled (indexes before it: 1)."""
        return int(self.manifest.get("image_token_pool") or 1)

    @property
    def token_layer(self) -> int | None:
        """The vision block the stored image tokens come from (None: the last)."""
        layer = self.manifest.get("image_token_layer")
        return None if layer is None else int(layer)

    @property
    def encoder_spec(self) -> str:
        return self.manifest["encoder"]["spec"]

    def check_encoder(self, identity: dict) -> None:
        stored = self.manifest["encoder"]["identity"]
        comparable = {k: v for k, v in identity.items() if k != "dim"}
        if {k: v for k, v in stored.items() if k != "dim"} != comparable:
            raise EncoderMismatch(
                f"index {self.directory} was built with model '{self.encoder_spec}', not "
                f"'{_describe(identity)}'; use --model {self.encoder_spec} or another --index"
            )

    def _collection(self, name, table, dim, token_shape, generation: int) -> Collection:
        vectors = ArrayStore(self.directory / f"{name}.vec", (dim,), "float32")
        tokens = None
        if token_shape:
            tokens = ArrayStore(self.directory / f"{name}.tok", tuple(token_shape), "float16")
        faiss_path = self.directory / f"{name}.faiss"
        # A reader memory-maps an up-to-date IVF file; a writer reads it into memory.
        mmap_generation = None if self.writable else generation
        try:
            index = VectorIndex.load(faiss_path, dim, vectors.read, mmap_generation)
        except RuntimeError as exc:  # a truncated FAISS file: it is derived data, rebuild it
            if not self.writable:
                raise IndexCorrupt(
                    f"{faiss_path} is unreadable ({exc}); run `xmr index` to rebuild it"
                ) from exc
            index = VectorIndex.empty(dim, vectors.read)
        return Collection(name, table, vectors, tokens, index, faiss_path)

    # -- the re-ranker's image features (feature_cache.py) -------------------------------
    def keep_reranker_features(self, reranker, reporter=None) -> None:
        """From now on keep `reranker`'s image features for every image (None: keep none).

        Fills them for the images already indexed when the index has none for this
        re-ranker (a new index, one made before this, or another re-ranker's), so a search
        never reads a row nobody wrote. Without a re-ranker that can read the stored tokens,
        any kept features are dropped instead: images written later would lack them.
        """
        self._require_writable()
        images = self.images
        if reranker is None or images.tokens is None or token_mismatch(self, reranker):
            if images.features is not None:
                self._drop_features()
            return
        if images.features is not None and images.features.serves(reranker):
            images.features.featurize = reranker.image_features
            return
        if images.features is not None:
            self._drop_features()
        path = self.directory / FEATURES_FILE
        path.unlink(missing_ok=True)  # a fill killed half-way left rows for no manifest
        cache = FeatureCache(
            ArrayStore(path, reranker.feature_shape, "float16"),
            reranker.fingerprint,
            reranker.name,
            reranker.image_features,
        )
        ids = np.asarray(self.db.ids(ImageRow), dtype=np.int64)
        if len(ids) and reporter is not None:
            reporter.stage("re-ranker features", len(ids))
        for start in range(0, len(ids), 1024):
            chunk = ids[start : start + 1024]
            cache.write(chunk, images.tokens.read(chunk))
            if reporter is not None:
                reporter.advance(len(chunk))
        if len(ids) and reporter is not None:
            reporter.done()
        cache.store.flush()  # every row on disk before the manifest points at them
        images.features = cache
        self.manifest[MANIFEST_KEY] = cache.manifest_entry()
        _write_json_atomic(self.directory / MANIFEST_FILE, self.manifest)

    def features_stale(self, fingerprint: str | None) -> bool:
        """True when the index keeps tokens but not the image features of the re-ranker
        with `fingerprint` (missing, or another re-ranker's); None: no re-ranker known."""
        if fingerprint is None or self.images.tokens is None:
            return False
        features = self.images.features
        return features is None or features.fingerprint != fingerprint

    def _drop_features(self) -> None:
        self._require_writable()
        self.manifest.pop(MANIFEST_KEY, None)
        _write_json_atomic(self.directory / MANIFEST_FILE, self.manifest)  # readers first
        if self.images.features is not None:
            self.images.features.store.close()
        self.images.features = None
        (self.directory / FEATURES_FILE).unlink(missing_ok=True)

    # -- index policy --------------------------------------------------------------------
    def set_policy(self, index_type: str | None = None, max_memory: int | None = ...) -> None:
        """Record a new index policy in the manifest (applied by the next save).

        `max_memory=...` keeps the stored budget; None removes it.
        """
        policy = IndexPolicy(
            self.policy.type if index_type is None else check_index_type(index_type),
            self.policy.max_memory if max_memory is ... else max_memory,
        )
        if policy == self.policy:
            return
        self._require_writable()
        self.policy = policy
        self.manifest["index"] = policy.as_dict()
        _write_json_atomic(self.directory / MANIFEST_FILE, self.manifest)

    def _require_writable(self) -> None:
        if not self.writable:
            raise XmrError(f"{self.directory} is open read-only")

    # -- consistency ---------------------------------------------------------------------
    def sync(self) -> None:
        """Catch FAISS up with the database after a killed run (cheap when up to date)."""
        generation = self.db.generation()
        for collection in (self.images, self.texts):
            if collection.index.generation == generation:
                continue
            ids = np.asarray(self.db.ids(collection.table), dtype=np.int64)
            added, removed = collection.index.sync(ids, collection.vectors.read)
            if self.writable and (added or removed or collection.index.generation != generation):
                collection.index.save(collection.faiss_path, generation)

    def save(self, reporter=None) -> None:
        """Flush stores, apply the index policy, and write FAISS files that reflect the
        current database generation. `reporter` hears of long rebuilds."""
        generation = self.db.generation()
        for collection in (self.images, self.texts):
            collection.flush()
            changed = self._upkeep(collection, reporter)
            if changed or collection.index.generation != generation:
                collection.index.save(collection.faiss_path, generation)

    def _upkeep(self, collection: Collection, reporter=None) -> bool:
        """Rebuild or re-tune `collection`'s index if the policy says so; True if it did."""
        index = collection.index
        action, choice = plan_upkeep(
            self.policy,
            int(self.manifest["dim"]),
            index.kind,
            index.live_count,
            index.built_n,
            len(index.tombstones),
            tuned=bool(index.search_params),
        )
        if action == "keep":
            return False
        ids = np.asarray(self.db.ids(collection.table), dtype=np.int64)
        if action == "retune":
            index.retune(ids)
        else:
            collection.index = VectorIndex.build(
                choice, int(self.manifest["dim"]), ids, collection.vectors.read, reporter=reporter
            )
        return True

    def compact(
        self,
        index_type: str | None = None,
        max_memory: str | int | None = None,
        reporter=None,
        shards: int = 1,
        map_shards=None,
    ) -> dict[str, dict]:
        """Rebuild both FAISS indexes from the vector store and the database.

        Drops tombstones, re-trains and re-tunes, and switches type when `index_type`
        (or the stored policy, for today's size) says so. Nothing is re-encoded.
        IVF types are filled in `shards` shards, run by `map_shards` (index_types.
        build_tuned; e.g. Ray tasks that read the vector store file themselves).
        Returns {collection: {"before": {...}, "after": {...}, "reason", "seconds"}}.
        """
        self._require_writable()
        self.set_policy(**_policy_change(index_type, max_memory))
        self.sync()
        generation = self.db.generation()
        dim = int(self.manifest["dim"])
        report = {}
        for collection in (self.images, self.texts):
            started = time.monotonic()
            before = collection.index.describe()
            ids = np.asarray(self.db.ids(collection.table), dtype=np.int64)
            choice = self.policy.choose(len(ids), dim)
            collection.flush()
            sharding = Sharding(
                shards, map_shards, StoredVectors(str(collection.vectors.path), dim)
            )
            collection.index = VectorIndex.build(
                choice, dim, ids, collection.vectors.read, reporter=reporter, sharding=sharding
            )
            collection.index.save(collection.faiss_path, generation)
            stores = collection.stores()
            report[collection.name] = {
                "before": before,
                "after": collection.index.describe(),
                "reason": choice.reason,
                "store_bytes_freed": sum(store.release(ids) for store in stores),
                "seconds": round(time.monotonic() - started, 2),
            }
        return report

    def close(self) -> None:
        if self.writable:
            self.save()
        for collection in (self.images, self.texts):
            for store in collection.stores():
                store.close()
        self.db.close()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> Library:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is not None and self.writable:
            # FAISS may hold vectors whose rows were rolled back: leave the old file, whose
            # generation is behind, so the next open re-syncs from the database.
            self.writable = False
        self.close()

    def _lock(self) -> None:
        self._lock_file = open(self.directory / "write.lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._lock_file.close()
            self._lock_file = None
            raise XmrError(
                f"another xmr process is writing to {self.directory}; wait for it to finish"
            ) from exc

    # -- reporting -----------------------------------------------------------------------
    def disk_usage(self) -> dict[str, int]:
        return {
            p.name: p.stat().st_size
            for p in sorted(self.directory.iterdir())
            if p.is_file() and not p.name.endswith(".lock")
        }


def token_mismatch(library: Library, reranker) -> str | None:
    """Why `reranker` cannot read the index's stored image tokens, with the fix, or None
    when it can (reranker_config_mismatch)."""
    if reranker is None:
        return None
    config = {k: getattr(reranker.config, k) for k in ("image_pool", "image_token_layer")}
    return reranker_config_mismatch(library, config, reranker.name)


def reranker_config_mismatch(library: Library, config: dict, name: str) -> str | None:
    """The same question from a re-ranker's config alone (no torch): the stored tokens are
    pooled k x k for another grid (its learned positions fit one grid only), or come from
    another vision block than the one it was trained on."""
    if library.images.tokens is None:
        return None
    pool, layer = library.token_pool, library.token_layer
    wanted_pool = int(config.get("image_pool") or 1)
    wanted_layer = config.get("image_token_layer")
    if pool > 1 and wanted_pool != pool:
        return (
            f"index {library.directory} stores image tokens pooled {pool}x{pool}, but "
            f"re-ranker {name} reads them pooled {wanted_pool}x{wanted_pool}; use one trained "
            f"with --image-pool {pool}, or re-index without --token-pool"
        )
    if wanted_layer != layer:
        return (
            f"index {library.directory} stores image tokens of {_block(layer)}, but re-ranker "
            f"{name} reads {_block(wanted_layer)}; re-index into a new --index with this "
            "re-ranker (xmr index --reranker)"
        )
    return None


def _block(layer: int | None) -> str:
    return "the last vision block" if layer is None else f"vision block {layer}"


def _policy_change(index_type: str | None, max_memory: str | int | None) -> dict:
    """set_policy() arguments for CLI-style values (validated here, before any work)."""
    change: dict = {}
    if index_type is not None:
        change["index_type"] = check_index_type(index_type)
    if max_memory is not None:
        none = isinstance(max_memory, str) and max_memory.strip().lower() in ("none", "0", "")
        change["max_memory"] = None if none else parse_size(max_memory)
    return change


def _shape(shape) -> list[int] | None:
    return None if shape is None else [int(s) for s in shape]


def _describe(identity: dict) -> str:
    name = identity.get("name")
    pretrained = identity.get("pretrained")
    return name if pretrained is None else f"{name}:{pretrained}"


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
