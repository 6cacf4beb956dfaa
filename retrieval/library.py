"""An index directory: manifest + SQLite + per-modality vector/token stores + FAISS.

    DIR/manifest.json        encoder identity, dimension, token shapes
    DIR/xmr.sqlite3          metadata, the source of truth (see db.py)
    DIR/images.vec           (capacity, D) float32 vectors by id     (arraystore.py)
    DIR/images.tok           (capacity, N, D) float16 tokens by id   (optional; N is
                             pooled_count(patches, k) for `--token-pool k`)
    DIR/images.faiss(.json)  FAISS index over the vectors            (vector_index.py)
    DIR/images.rrf           (capacity, N', W) float16 re-ranker image features by id
                             (optional, see feature_cache.py)
    DIR/images.mvf, .mvk     a pretrained matcher's vision tokens by id, and whose they
                             are (optional, see matcher_features.py)
    DIR/matcher-cache/       vision tokens computed at search time (matcher_cache.py)
    DIR/texts.*              the same for the text corpus

Opening an index with a different encoder is refused: vectors of two models do not
share a space, and mixing them would give silently wrong results.

The manifest's "index" entry is the user's index policy (`--index-type`, `--max-memory`,
see index_choice.py). Each save applies it (`plan_upkeep`): a collection that outgrew
its type is rebuilt from the vector store, drifted knobs are re-tuned. `compact`
rebuilds every collection from the store and the database: no tombstones, the type the
policy picks for today's size, nothing re-encoded. A reader memory-maps IVF files.

Damage is repaired in the order of what can be re-derived (docs/reliability.md lists
each file and its repair): SQLite is the source of truth; FAISS files and kept re-ranker
features are derived and rebuilt; vectors and tokens are re-encoded from the files.
Opening finds what a cheap look can find (manifest schema, stores shorter than their ids,
unreadable FAISS files); a writer repairs it on the spot or marks rows for re-encoding
(db.Damaged), a reader works around it in memory and never writes: no lock file, no
FAISS save, no database write. What either did is told in `notices`. `check.py` looks
deeper (integrity_check, every vector's norm) for `xmr check`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType
from typing import TYPE_CHECKING

import numpy as np

from xmr.retrieval.arraystore import ArrayStore
from xmr.retrieval.db_file import DB_FILE
from xmr.retrieval.db_read import DatabaseReader, Table
from xmr.retrieval.errors import (
    EncoderMismatch,
    IndexNotFound,
    InputError,
    ManifestDamaged,
    XmrError,
)
from xmr.retrieval.feature_cache import FEATURES_FILE, MANIFEST_KEY, FeatureCache
from xmr.retrieval.index_choice import IndexPolicy, check_index_type, parse_size, plan_upkeep
from xmr.retrieval.locations import INDEX_ENV
from xmr.retrieval.manifest import (
    MANIFEST_FILE,
    describe_identity,
    load_manifest,
    manifest_problem,
    new_manifest,
    read_manifest_file,
    write_manifest,
)
from xmr.retrieval.matcher_features import MANIFEST_KEY as MATCHER_KEY
from xmr.retrieval.matcher_features import KeptFeatures
from xmr.retrieval.progress import Progress
from xmr.retrieval.recovery import (
    open_or_rebuild_database,
    raise_translated,
    remove_derived,
    translated_error,
)
from xmr.retrieval.reranker_compat import token_mismatch
from xmr.retrieval.reranker_files import TokenSource
from xmr.retrieval.storage import (
    move_aside,
    remove_temporaries,
)
from xmr.retrieval.vector_index import Ids, Sharding, StoredVectors, VectorIndex
from xmr.retrieval.write_lock import WriteLock

if TYPE_CHECKING:
    from xmr.retrieval.db import Database
    from xmr.retrieval.encoder import Encoder, LazyEncoder
    from xmr.retrieval.index_types import MapShards
    from xmr.retrieval.reranker import RerankerRuntime

COLLECTIONS = ("images", "texts")


def stored_model_spec(directory: Path) -> str | None:
    """The model an existing index at `directory` was built with, from its manifest or the
    database's copy of it; None where no index is. Raises ManifestDamaged when an index is
    there but neither says (the caller must be told the model)."""
    directory = Path(directory).expanduser()
    try:
        return read_manifest_file(directory)["encoder"]["spec"]
    except ManifestDamaged as exc:
        damaged = exc
    if not (directory / DB_FILE).exists():
        if not (directory / MANIFEST_FILE).exists():
            return None
    else:
        try:
            db = DatabaseReader(directory)
        except XmrError:
            db = None
        if db is not None:
            try:
                copy = db.stored_manifest()
            finally:
                db.close()
            if copy is not None and manifest_problem(copy) is None:
                return copy["encoder"]["spec"]
    raise ManifestDamaged(
        f"{damaged}, and the database holds no copy of it; give the model the index was built with",
        setting="model",
    )


@dataclass
class Collection:
    """One modality of an index: its table, vectors, tokens and FAISS index."""

    name: Table

    vectors: ArrayStore
    tokens: ArrayStore | None
    index: VectorIndex
    faiss_path: Path
    token_pool: int = 1  # images: patch tokens stored k x k average-pooled
    features: FeatureCache | None = None  # images: the re-ranker's image features
    # Called when images are written without the features' re-ranker: drops the cache.
    drop_features: Callable[[], None] | None = None
    # images: a pretrained matcher's vision tokens (matcher_features.py); rows may lag the
    # ids, so they are not among `stores()` (whose length vouches for an id's records)
    kept: KeptFeatures | None = None

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
                from xmr.retrieval.token_pooling import pool_token_array

                tokens = pool_token_array(tokens, self.token_pool)  # (B, N', D)
            self.tokens.write(ids, tokens)
            if self.features is not None and features is not None:
                self.features.store.write(ids, features)
            elif self.features is not None and self.features.featurize is None:
                assert self.drop_features is not None  # set wherever features are kept
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
        stores = [self.vectors, self.tokens, None if self.features is None else self.features.store]
        return [s for s in stores if s is not None]

    def flush(self) -> None:
        for store in self.stores():
            store.flush()


class Library:
    def __init__(
        self,
        directory: Path,
        manifest: dict,
        writable: bool,
        db: DatabaseReader | None = None,
        lock: WriteLock | None = None,
        notices: list[str] | None = None,
    ):
        self.directory = Path(directory)
        self.manifest = manifest
        self.writable = writable
        self.notices: list[str] = list(notices or [])  # what opening found and did
        self._lock = lock
        if writable and lock is None:
            self._lock = WriteLock.acquire(self.directory)
        self.db = db or open_database(self.directory, writable)
        self.policy = IndexPolicy.from_dict(manifest.get("index"))
        dim = int(manifest["dim"])
        generation = self.db.generation()
        self.images = self._collection("images", dim, manifest.get("image_tokens"), generation)
        self.images.token_pool = self.token_pool
        self.images.features = FeatureCache.from_manifest(
            self.directory, manifest.get(MANIFEST_KEY), writable
        )
        self.images.drop_features = self.drop_features_file
        self.images.kept = KeptFeatures.from_manifest(
            self.directory, manifest.get(MATCHER_KEY), writable
        )
        self.texts = self._collection("texts", dim, manifest.get("text_tokens"), generation)
        self._hidden: dict[str, np.ndarray] = {}  # a reader's lost records, by collection
        wal = self.directory / (DB_FILE + "-wal")
        if self.db.immutable and wal.exists() and wal.stat().st_size:
            self.notices.append(
                f"{wal} holds changes a read-only folder does not let SQLite read (a writer "
                "was killed); searching what was checkpointed before (open the index once "
                "where it can be written to bring them in)"
            )
        self._find_lost_records()
        self.sync()
        for collection in (self.images, self.texts):
            if not collection.faiss_path.exists() and collection.index.ntotal:
                self.notices.append(
                    f"{collection.faiss_path} is missing; "
                    + ("rebuilt it from the vector store" if self.writable else "searching an "
                       "index rebuilt in memory from the vector store")
                )  # fmt: skip

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, directory: Path, writable: bool = False) -> Library:
        """Open an existing index. A writer takes the lock first, restores a damaged
        manifest from the database's copy and marks lost records for re-encoding; a
        damaged database is reported (only open_or_create, which can re-index, rebuilds it)."""
        directory = Path(directory).expanduser()
        if not (directory / MANIFEST_FILE).exists() and not (directory / DB_FILE).exists():
            raise IndexNotFound(
                f"no xmr index at {directory}; build one there with `xmr index FOLDER`, "
                f"set {INDEX_ENV}, or point to another index folder",
                setting="index",
            )
        lock = WriteLock.acquire(directory) if writable else None
        db = None
        try:
            if writable:
                remove_temporaries(directory)
            db = open_database(directory, writable)
            manifest, notices = load_manifest(directory, db, writable)
            return cls(directory, manifest, writable, db, lock, notices)
        except BaseException as exc:
            if db is not None:
                db.close()
            if lock is not None:
                lock.release()
            raise_translated(exc, directory)

    @classmethod
    def open_or_create(
        cls,
        directory: Path,
        encoder: Encoder | LazyEncoder,
        keep_tokens: bool = True,
        index_type: str | None = None,
        max_memory: str | int | None = None,
        token_pool: int | None = None,
        token_source: TokenSource | str = "auto",
        verify: str = "quick",
    ) -> Library:
        """Open for writing with `encoder`, creating the index if it does not exist.

        Repairs what it can on the way (the module docstring); a database that fails
        SQLite's `verify` check ("quick" | "full") is moved aside and replaced by an empty
        one, for the caller to re-index.

        `index_type` / `max_memory` (None: keep the stored policy) change the index
        policy; the next save applies it. `token_pool` k stores image patch tokens k x k
        average-pooled (k^2 less disk; a re-ranker trained with `--image-pool k` reads them
        unchanged); fixed when the index is created, as is `token_source`, what each stored
        image token holds (reranker_files.TokenSource: its vision block, and whether its
        patch's pixels follow; "auto": what the model's own re-ranker reads); whatever
        writes image tokens passes `library.token_layer` and `library.token_pixels` on.
        """
        from xmr.retrieval.db import Database

        directory = Path(directory).expanduser()
        policy_change = _policy_change(index_type, max_memory)  # bad values fail first
        lock = WriteLock.acquire(directory)  # first: a second writer waits for no model
        db = None
        try:
            remove_temporaries(directory)
            existed = (directory / MANIFEST_FILE).exists() or (directory / DB_FILE).exists()
            notices: list[str] = []
            manifest = None
            if existed:
                db = open_or_rebuild_database(directory, verify, notices)
                try:
                    manifest, found = load_manifest(directory, db, writable=True)
                    notices += found
                except ManifestDamaged as exc:
                    if db.holds_rows():
                        # No copy to restore: describe the index anew with this encoder. The
                        # stored records may be another model's: they go, every row is
                        # re-encoded.
                        notices.append(
                            f"{exc}; wrote a new one for model {encoder.spec.canonical} and "
                            "re-encoding every item"
                        )
                    remove_derived(directory)
                    if (directory / MANIFEST_FILE).exists():
                        move_aside(directory / MANIFEST_FILE)
            if manifest is None:  # the model loads here, with the lock already held
                manifest = new_manifest(directory, encoder, keep_tokens, token_pool, token_source)
                db = db or Database(directory)
                write_manifest(directory, db, manifest)
            elif (
                db is not None
                and db.created
                and (
                    (manifest.pop(MANIFEST_KEY, None), manifest.pop(MATCHER_KEY, None))
                    != (None, None)
                )
            ):
                write_manifest(directory, db, manifest)  # its features files went with the rest
            library = cls(directory, manifest, True, db, lock, notices)
        except BaseException as exc:
            if db is not None:
                db.close()
            lock.release()
            raise_translated(exc, directory)
        try:
            library.check_encoder(encoder.spec.identity())  # no model load needed
            if token_pool not in (None, library.token_pool):
                raise InputError(
                    f"index {directory} stores image tokens pooled {library.token_pool}x"
                    f"{library.token_pool}; a token pool of {token_pool} needs a new index "
                    "folder; here, leave the token pool unset",
                    setting="token_pool",
                )
            library.set_policy(**policy_change)
        except BaseException:
            library.writable = False  # refused: change nothing on the way out
            library.close()
            raise
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
    def token_pixels(self) -> int:
        """p when each stored image token also carries its p x p patch's input pixels,
        3 p^2 values after the encoder's (for a re-ranker's pixel stem); 0 when it does
        not (indexes before it: 0)."""
        return int(self.manifest.get("image_token_pixels") or 0)

    @property
    def encoder_spec(self) -> str:
        return self.manifest["encoder"]["spec"]

    def check_encoder(self, identity: dict) -> None:
        stored = self.manifest["encoder"]["identity"]
        comparable = {k: v for k, v in identity.items() if k != "dim"}
        if {k: v for k, v in stored.items() if k != "dim"} != comparable:
            raise EncoderMismatch(
                f"index {self.directory} was built with model '{self.encoder_spec}', not "
                f"'{describe_identity(identity)}'; use another index folder, or the model "
                f"{self.encoder_spec}",
                setting="model",
            )

    def _collection(self, name: Table, dim, token_shape, generation: int) -> Collection:
        writable = self.writable
        vectors = ArrayStore(self.directory / f"{name}.vec", (dim,), "float32", writable)
        tokens = None
        if token_shape:
            path = self.directory / f"{name}.tok"
            tokens = ArrayStore(path, tuple(token_shape), "float16", writable)
        faiss_path = self.directory / f"{name}.faiss"
        # A reader memory-maps an up-to-date IVF file; a writer reads it into memory.
        mmap_generation = None if writable else generation
        try:
            index = VectorIndex.load(faiss_path, dim, vectors.read, mmap_generation)
        except RuntimeError as exc:  # a truncated FAISS file: derived data, rebuilt from the store
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
            self.notices.append(
                f"{faiss_path} is damaged ({reason[:120]}); "
                + ("rebuilt it from the vector store" if writable else "searching an index "
                   "rebuilt in memory from the vector store (`xmr check --repair` rewrites it)")
            )  # fmt: skip
            index = VectorIndex.empty(dim, vectors.read)
        return Collection(name, vectors, tokens, index, faiss_path)

    def _find_lost_records(self) -> None:
        """Rows whose vector or tokens lie past the end of their store (a truncated or
        deleted file): a writer marks them for re-encoding (hidden from searches until
        then), a reader hides them in memory. Kept features short of an id are dropped."""
        for collection in (self.images, self.texts):
            # The last committed id first, the store sizes after: a writer grows a store
            # before it commits, so a concurrent commit can never look like a loss.
            last = self.db.last_id(collection.name)
            stores = [collection.vectors] + ([collection.tokens] if collection.tokens else [])
            capacity = min(store.capacity for store in stores)
            lost = np.asarray(
                self.db.ids(collection.name, start=capacity, stop=last + 1), dtype=np.int64
            )
            features = collection.features
            if features is not None and features.store.capacity <= last:
                name = features.store.path.name
                if self.writable:
                    self.drop_features_file()
                    self.notices.append(
                        f"{name} is shorter than its ids: dropped the kept re-ranker "
                        "features (`xmr index` fills them again)"
                    )
                else:
                    collection.features = None
                    self.notices.append(
                        f"{name} is shorter than its ids: searches recompute those features"
                    )
            if len(lost):
                short = [s.path.name for s in stores if s.capacity <= int(lost.max())]
                what = f"{' and '.join(short)} lost the records of {len(lost)} {collection.name}"
                if self.writable:
                    db = self.writer_db
                    with db.session() as session:  # sync() follows in __init__
                        db.mark_damaged(session, collection.name, lost.tolist())
                        db.bump_generation(session)
                        session.commit()
                else:
                    self._hidden[collection.name] = lost
                    collection.index.hide(lost)
                    self.notices.append(
                        f"{what}: they are left out of searches; `xmr check --repair` "
                        "re-encodes them"
                    )
            if self.writable:
                waiting = len(self.db.damaged_ids(collection.name))
                if waiting:
                    self.notices.append(
                        f"{waiting} {collection.name} lost their stored records; they are "
                        "hidden from searches until re-encoded"
                    )

    def records_intact(self, collection: Collection, item_id: int) -> bool:
        """False for an id whose stored records were lost (hidden, marked damaged, or past
        the end of a store): its vector must not be read, nor reused as a query."""
        if item_id in self._hidden.get(collection.name, ()):
            return False
        if any(item_id >= store.capacity for store in collection.stores()):
            return False
        return item_id not in self.db.damaged_ids(collection.name)

    # -- the re-ranker's image features (feature_cache.py) -------------------------------
    def keep_reranker_features(
        self, reranker: RerankerRuntime | None, reporter: Progress | None = None
    ) -> None:
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
                self.drop_features_file()
            return
        if images.features is not None and images.features.serves(reranker):
            images.features.featurize = reranker.image_features
            return
        if images.features is not None:
            self.drop_features_file()
        path = self.directory / FEATURES_FILE
        path.unlink(missing_ok=True)  # a fill killed half-way left rows for no manifest
        cache = FeatureCache(
            ArrayStore(path, reranker.feature_shape, "float16"),
            reranker.fingerprint,
            reranker.name,
            reranker.image_features,
        )
        ids = np.asarray(self.db.ids("images"), dtype=np.int64)
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
        self._write_manifest()

    def features_stale(self, fingerprint: str | None) -> bool:
        """True when the index keeps tokens but not the image features of the re-ranker
        with `fingerprint` (missing, or another re-ranker's); None: no re-ranker known."""
        if fingerprint is None or self.images.tokens is None:
            return False
        features = self.images.features
        return features is None or features.fingerprint != fingerprint

    def set_kept_matcher(self, kept: KeptFeatures | None) -> None:
        """Record which matcher's vision tokens the index keeps (None: none; the files go)."""
        from xmr.retrieval.matcher_features import remove_files

        self._require_writable()
        if kept is None:
            self.manifest.pop(MATCHER_KEY, None)
        else:
            self.manifest[MATCHER_KEY] = kept.manifest_entry()
        self._write_manifest()  # readers first
        old = self.images.kept
        if old is not None and old is not kept:
            old.close()
            if kept is None:
                remove_files(self.directory)
        self.images.kept = kept

    def drop_features_file(self) -> None:
        self._require_writable()
        self.manifest.pop(MANIFEST_KEY, None)
        self._write_manifest()  # readers first
        if self.images.features is not None:
            self.images.features.store.close()
        self.images.features = None
        (self.directory / FEATURES_FILE).unlink(missing_ok=True)

    # -- index policy --------------------------------------------------------------------
    def set_policy(
        self, index_type: str | None = None, max_memory: int | None | EllipsisType = ...
    ) -> None:
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
        self._write_manifest()

    def record_sources(self, key: str, paths: list[str]) -> None:
        """Remember the folders (`image_roots`) or corpus files (`text_sources`) this index
        was built from, so `xmr check --repair` can rebuild it after losing its database."""
        known = list(self.manifest.get(key) or [])
        added = [p for p in paths if p not in known]
        if added:
            self.manifest[key] = known + added
            self._write_manifest()

    def _write_manifest(self) -> None:
        self._require_writable()
        write_manifest(self.directory, self.writer_db, self.manifest)

    @property
    def writer_db(self) -> Database:
        """The database of a library opened for writing (ORM sessions)."""
        from xmr.retrieval.db import Database

        self._require_writable()
        assert isinstance(self.db, Database)
        return self.db

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
            ids = np.asarray(self.db.ids(collection.name), dtype=np.int64)
            hidden = self._hidden.get(collection.name)
            if hidden is not None:
                ids = np.setdiff1d(ids, hidden)
            added, removed = collection.index.sync(ids, collection.vectors.read)
            if self.writable and (added or removed or collection.index.generation != generation):
                collection.index.save(collection.faiss_path, generation)

    def save(self, reporter: Progress | None = None) -> None:
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
        ids = np.asarray(self.db.ids(collection.name), dtype=np.int64)
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
        reporter: Progress | None = None,
        shards: int = 1,
        map_shards: MapShards | None = None,
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
        dim = int(self.manifest["dim"])
        report: dict[str, dict] = {}
        for collection in (self.images, self.texts):
            started = time.monotonic()
            before = collection.index.describe()
            ids, reason = self.rebuild_index(
                collection,
                reporter,
                Sharding(shards, map_shards, StoredVectors(str(collection.vectors.path), dim)),
            )
            report[collection.name] = {
                "before": before,
                "after": collection.index.describe(),
                "reason": reason,
                "store_bytes_freed": sum(store.release(ids) for store in collection.stores())
                + (collection.kept.release(ids) if collection.kept is not None else 0),
                "seconds": round(time.monotonic() - started, 2),
            }
        return report

    def rebuild_index(
        self,
        collection: Collection,
        reporter: Progress | None = None,
        sharding: Sharding | None = None,
    ) -> tuple[np.ndarray, str]:
        """Build `collection`'s FAISS index afresh from the vector store and the database,
        of the type the policy picks (IVF types filled as `sharding` says), and save it;
        returns (its ids, why that type)."""
        self._require_writable()
        generation = self.db.generation()
        dim = int(self.manifest["dim"])
        ids = np.asarray(self.db.ids(collection.name), dtype=np.int64)
        choice = self.policy.choose(len(ids), dim)
        collection.flush()
        collection.index = VectorIndex.build(
            choice, dim, ids, collection.vectors.read, reporter=reporter, sharding=sharding
        )
        collection.index.save(collection.faiss_path, generation)
        return ids, choice.reason

    def mark_damaged(self, collection: Collection, ids: Ids) -> None:
        """Record that `ids` lost their stored records: hidden from searches (and dropped
        from FAISS) until re-encoded."""
        self._require_writable()
        db = self.writer_db
        with db.session() as session:
            db.mark_damaged(session, collection.name, [int(i) for i in ids])
            db.bump_generation(session)
            session.commit()
        self.sync()

    def close(self) -> None:
        try:
            if self.writable:
                self.save()
        finally:
            for collection in (self.images, self.texts):
                for store in collection.stores():
                    store.close()
                if collection.kept is not None:
                    collection.kept.close()
            self.db.close()
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def __enter__(self) -> Library:
        return self

    def __exit__(self, exc_type, exc, _tb) -> None:
        if exc is not None and self.writable:
            # FAISS may hold vectors whose rows were rolled back: leave the old file, whose
            # generation is behind, so the next open re-syncs from the database.
            self.writable = False
        try:
            self.close()
        except BaseException as close_error:
            if exc is None:
                raise_translated(close_error, self.directory)
            # else: the first error is the one to report
        if exc is not None and translated_error(exc, self.directory) is not exc:
            raise_translated(exc, self.directory)

    # -- reporting -----------------------------------------------------------------------
    def disk_usage(self) -> dict[str, int]:
        return {
            p.name: p.stat().st_size
            for p in sorted(self.directory.iterdir())
            if p.is_file() and not p.name.endswith((".lock", ".tmp"))
        }


def open_database(directory: Path, writable: bool) -> DatabaseReader:
    """A writer's database (SQLAlchemy, migrated) or a reader's (plain sqlite3)."""
    if not writable:
        return DatabaseReader(directory)
    from xmr.retrieval.db import Database

    return Database(directory)


def _policy_change(index_type: str | None, max_memory: str | int | None) -> dict:
    """set_policy() arguments for CLI-style values (validated here, before any work)."""
    change: dict = {}
    if index_type is not None:
        change["index_type"] = check_index_type(index_type)
    if max_memory is not None:
        none = isinstance(max_memory, str) and max_memory.strip().lower() in ("none", "0", "")
        change["max_memory"] = None if none else parse_size(max_memory)
    return change
