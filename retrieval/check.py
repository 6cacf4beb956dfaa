"""`xmr check`: verify every file of an index and say what is wrong and what repair does.

It looks deeper than opening an index does (see library.py): SQLite's integrity_check,
the manifest's schema, each store's length against its ids, every live vector's norm
(vectors are unit length; a lost block reads back as zeros), all-zero token and feature
records, FAISS's ids against the database's, temporaries a killed writer left. It never
writes; `indexer/repair.py` acts on what it finds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xmr.retrieval.arraystore import ArrayStore
from xmr.retrieval.db_file import DB_FILE
from xmr.retrieval.db_read import DatabaseReader
from xmr.retrieval.errors import DatabaseDamaged, IndexNotFound, ManifestDamaged
from xmr.retrieval.feature_cache import FEATURES_FILE, MANIFEST_KEY
from xmr.retrieval.manifest import MANIFEST_FILE, manifest_problem, read_manifest_file
from xmr.retrieval.storage import TEMP_SUFFIX
from xmr.retrieval.vector_index import VectorIndex

CHUNK = 1024  # records read at a time
NORM_TOLERANCE = 1e-2


@dataclass
class Finding:
    file: str  # the file at fault, relative to the index folder
    kind: str  # temporary | database | manifest | records | features | faiss | waiting
    problem: str
    repair: str  # what `xmr check --repair` does about it
    collection: str | None = None
    ids: list[int] = field(default_factory=list)  # rows whose records must be re-encoded
    repaired: bool | None = None  # set by a repair: gone afterwards?

    def as_dict(self) -> dict:
        out: dict[str, object] = {"file": self.file, "kind": self.kind, "problem": self.problem}
        out["repair"] = self.repair
        if self.ids:
            out["items"] = len(self.ids)
        if self.repaired is not None:
            out["repaired"] = self.repaired
        return out


@dataclass
class CheckReport:
    directory: str
    findings: list[Finding] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # live rows per collection

    @property
    def ok(self) -> bool:
        return all(f.repaired for f in self.findings)

    def as_dict(self) -> dict:
        return {
            "directory": self.directory,
            "ok": self.ok,
            "counts": self.counts,
            "findings": [f.as_dict() for f in self.findings],
        }


def check_index(directory: Path) -> CheckReport:
    """Every problem of the index at `directory`, each with the repair that fixes it."""
    directory = Path(directory).expanduser()
    if not (directory / MANIFEST_FILE).exists() and not (directory / DB_FILE).exists():
        raise IndexNotFound(f"no xmr index at {directory}")
    report = CheckReport(str(directory))
    add = report.findings.append
    for tmp in sorted(directory.glob(f"*{TEMP_SUFFIX}")):
        add(Finding(tmp.name, "temporary", "left by a killed writer", "delete it"))
    try:
        db = DatabaseReader(directory)
    except DatabaseDamaged as exc:
        add(Finding(DB_FILE, "database", str(exc), _REBUILD))
        return report
    try:
        for problem in db.integrity_problems()[:1]:
            add(Finding(DB_FILE, "database", f"integrity_check: {problem}", _REBUILD))
        if report.findings and report.findings[-1].kind == "database":
            return report
        manifest = _check_manifest(directory, db, add)
        if manifest is not None:
            for name in ("images", "texts"):
                report.counts[name] = _check_collection(directory, db, manifest, name, add)
    finally:
        db.close()
    return report


_REBUILD = (
    "move it aside (kept, never deleted) and rebuild the index from its image folders "
    "and text corpora"
)


def _check_manifest(directory: Path, db: DatabaseReader, add) -> dict | None:
    try:
        return read_manifest_file(directory)
    except ManifestDamaged as exc:
        copy = db.stored_manifest()
        if copy is not None and manifest_problem(copy) is None:
            add(Finding(MANIFEST_FILE, "manifest", str(exc), "restore it from the database's copy"))
            return copy
        add(
            Finding(
                MANIFEST_FILE,
                "manifest",
                f"{exc}; the database holds no copy",
                "write a new one for the model it was built with and re-encode every item",
            )
        )
        return None


def _check_collection(directory, db, manifest, name, add) -> int:
    """Findings of one collection's stores and FAISS file; returns its live row count."""
    ids = np.asarray(db.ids(name), dtype=np.int64)
    waiting = db.damaged_ids(name)
    source = "their image files" if name == "images" else "the database's texts"
    if waiting:
        problem = f"{len(waiting)} {name} lost their stored records earlier"
        add(Finding(name, "waiting", problem, f"re-encode them from {source}", name, waiting))
    dim = int(manifest["dim"])
    stores = [ArrayStore(directory / f"{name}.vec", (dim,), "float32", writable=False)]
    shape = manifest.get(f"{name[:-1]}_tokens")
    if shape:
        stores.append(ArrayStore(directory / f"{name}.tok", tuple(shape), "float16", False))
    for store in stores:
        lost = ids[ids >= store.capacity]
        if len(lost):
            problem = f"shorter than its ids: the records of {len(lost)} {name} are lost"
            add(_records(store, problem, name, lost, source))
        bad = _bad_records(store, ids[ids < store.capacity], is_vector=store is stores[0])
        if len(bad):
            what = (
                "vectors are not unit length" if store is stores[0] else "token records are zeros"
            )
            problem = f"{len(bad)} {what} (lost blocks)"
            add(_records(store, problem, name, bad, source))
    entry = manifest.get(MANIFEST_KEY) if name == "images" else None
    if entry and (directory / FEATURES_FILE).exists():
        store = ArrayStore(directory / FEATURES_FILE, tuple(entry["shape"]), "float16", False)
        broken = len(ids[ids >= store.capacity]) + len(
            _bad_records(store, ids[ids < store.capacity], is_vector=False)
        )
        if broken:
            add(
                Finding(
                    FEATURES_FILE,
                    "features",
                    f"the kept re-ranker features of {broken} images are lost",
                    "drop them (searches recompute them; `xmr index` keeps them again)",
                    name,
                )
            )
    _check_faiss(directory, db, name, dim, ids, add)
    for store in stores:
        store.close()
    return len(ids)


def _records(store: ArrayStore, problem: str, name: str, ids, source: str) -> Finding:
    repair = f"re-encode them from {source}"
    return Finding(store.path.name, "records", problem, repair, name, ids.tolist())


def _bad_records(store: ArrayStore, ids: np.ndarray, is_vector: bool) -> np.ndarray:
    """Ids whose record is not what was written: a vector off unit length, or an all-zero
    token / feature record (a hole or a zeroed block)."""
    bad = []
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        records = store.read(chunk).reshape(len(chunk), -1).astype(np.float32)
        if is_vector:
            wrong = np.abs(np.linalg.norm(records, axis=1) - 1) > NORM_TOLERANCE
        else:
            wrong = ~np.any(records, axis=1)
        wrong |= ~np.isfinite(records).all(axis=1)
        bad.append(chunk[wrong])
    return np.concatenate(bad) if bad else np.zeros(0, np.int64)


def _check_faiss(directory: Path, db: DatabaseReader, name: str, dim: int, ids, add) -> None:
    path = directory / f"{name}.faiss"
    repair = "rebuild it from the vector store"
    if not path.exists():
        if len(ids):
            add(Finding(path.name, "faiss", "missing", repair, name))
        return
    try:
        index = VectorIndex.load(path, dim)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1][:120] if str(exc).strip() else "unreadable"
        add(Finding(path.name, "faiss", f"unreadable ({reason})", repair, name))
        return
    if index.dim != dim:
        add(Finding(path.name, "faiss", f"holds {index.dim}-d vectors, not {dim}", repair, name))
        return
    if index.generation != db.generation():
        return  # behind the database (a killed writer): every open catches it up
    have = index.ids()
    missing, extra = np.setdiff1d(ids, have), np.setdiff1d(have, ids)
    if len(missing) or len(extra):
        problem = (
            f"holds {len(have)} ids where the database has {len(ids)} "
            f"({len(missing)} missing, {len(extra)} extra)"
        )
        add(Finding(path.name, "faiss", problem, repair, name))
