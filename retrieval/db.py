"""The metadata database (SQLite through SQLAlchemy 2.x): schema, version, migrations.

The database is the source of truth of an index: a row id is the item's id in FAISS and
in the array stores. Rows use AUTOINCREMENT so an id is never handed out twice, which
keeps "id -> vector" immutable (see `arraystore`).

A reader opens the file read-only (`mode=ro`; on read-only media, where SQLite cannot
create the WAL index, `immutable=1`) and never migrates or writes. A writer creates and
migrates. Rows listed in `damaged` have stored records that were lost (a truncated store):
they are left out of `ids()`, so no search returns them, until they are re-encoded.

File paths are kept losslessly: a name that is not UTF-8 reaches Python as a str with
surrogate escapes (PEP 383), which SQLite cannot store; `FsPath` stores such a character
as DEL + two hex digits (and a DEL in a name as two DELs), a one-to-one, prefix-keeping
mapping, so equality and prefix queries work unchanged on every path.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    and_,
    create_engine,
    delete,
    event,
    exists,
    func,
    inspect,
    or_,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import QueuePool

from xmr.retrieval.errors import DatabaseDamaged, DiskFull, IndexCorrupt, ReadOnlyIndex, XmrError

SCHEMA_VERSION = 2
DB_FILE = "xmr.sqlite3"
CHUNK = 500  # ids per statement: SQLite caps the bound parameters of one statement


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


_ESCAPE = "\x7f"  # DEL: the escape character of FsPath
_SURROGATE = re.compile("[\udc80-\udcff\x7f]")
_ESCAPED = re.compile("\x7f(\x7f|[0-9a-f]{2})")


def escape_path(path: str) -> str:
    """A str path (surrogate escapes allowed) -> a storable str; see the module docstring."""
    if not _SURROGATE.search(path):
        return path
    return _SURROGATE.sub(
        lambda m: (
            _ESCAPE * 2 if m.group() == _ESCAPE else f"{_ESCAPE}{ord(m.group()) - 0xDC00:02x}"
        ),
        path,
    )


def unescape_path(stored: str) -> str:
    if _ESCAPE not in stored:
        return stored
    return _ESCAPED.sub(
        lambda m: _ESCAPE if m.group(1) == _ESCAPE else chr(0xDC00 + int(m.group(1), 16)), stored
    )


class FsPath(TypeDecorator):
    """A file path column that round-trips names that are not UTF-8."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: object) -> str | None:
        return None if value is None else escape_path(value)

    def process_result_value(self, value: str | None, dialect: object) -> str | None:
        return None if value is None else unescape_path(value)


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(String)


class ImageRow(Base):
    __tablename__ = "images"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(FsPath, unique=True)  # absolute, resolved
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    content_hash: Mapped[str | None] = mapped_column(String(32), index=True)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    format: Mapped[str | None] = mapped_column(String(16))
    taken_at: Mapped[datetime | None] = mapped_column(DateTime)  # EXIF date, else None
    added_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    state: Mapped[str] = mapped_column(String(16), default="indexed")  # indexed | skipped
    error: Mapped[str | None] = mapped_column(Text)  # why a skipped file was skipped


class TextRow(Base):
    __tablename__ = "texts"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    text_hash: Mapped[str] = mapped_column(String(32), unique=True)
    source: Mapped[str] = mapped_column(FsPath, index=True)  # the corpus file it came from first
    record: Mapped[str] = mapped_column(String)  # line number / record id in that file
    meta_json: Mapped[str | None] = mapped_column(Text)  # the record's other fields, as JSON
    n_tokens: Mapped[int] = mapped_column(Integer, default=0)  # valid rows in the token store
    added_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class TextSource(Base):
    """Which corpus files hold a text: a text shared by two files lives while either does."""

    __tablename__ = "text_sources"

    text_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("texts.id", ondelete="CASCADE"), primary_key=True
    )
    source: Mapped[str] = mapped_column(FsPath, primary_key=True)
    record: Mapped[str] = mapped_column(String)


ItemTable = type[ImageRow] | type[TextRow]
Row = TypeVar("Row", ImageRow, TextRow)


class Damaged(Base):
    """Rows whose stored vector or tokens were lost; re-encoded by the next writer that can
    (`xmr index`, `xmr add-texts`, `xmr check --repair`), hidden from searches until then."""

    __tablename__ = "damaged"

    collection: Mapped[str] = mapped_column(String(16), primary_key=True)  # images | texts
    id: Mapped[int] = mapped_column(Integer, primary_key=True)


def _v1_to_v2(session: Session) -> None:
    """v2 adds text_sources; every v1 text belonged to exactly its one `source`."""
    session.execute(
        text(
            "INSERT OR IGNORE INTO text_sources (text_id, source, record) "
            "SELECT id, source, record FROM texts"
        )
    )


# Forward migrations: MIGRATIONS[v] upgrades a database at version v to v + 1.
# (New tables are created by create_all before these run; they move the data.)
MIGRATIONS: dict[int, Callable[[Session], None]] = {1: _v1_to_v2}


def _writer_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL survives a kill at any point and lets readers search while an indexer writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _reader_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA query_only=ON")
    cursor.close()


def database_error(exc: BaseException, path: Path) -> XmrError | None:
    """The one-line error for an SQLite failure on `path`; None for anything else."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if not isinstance(orig, sqlite3.DatabaseError):
        return None
    message = str(orig)
    if "disk I/O error" in message and _nearly_full(path.parent):
        message = "disk is full"  # SQLite cannot grow its shared-memory file: no space
    if "disk I/O error" in message:
        return XmrError(f"cannot read or write {path}: disk I/O error; check the disk")
    if "disk is full" in message:
        return DiskFull(
            f"no space left on device writing {path}; free space and re-run: "
            "nothing committed is lost"
        )
    if "readonly" in message or "read-only" in message:
        return ReadOnlyIndex(
            f"cannot write {path} ({message}): the index folder is read-only; "
            "searching works, indexing needs a writable folder"
        )
    # SQLITE_CORRUPT and SQLITE_NOTADB arrive as a bare DatabaseError; a schema without
    # xmr's tables (an emptied file) as "no such table". Locks and busy files are not damage.
    if type(orig) is sqlite3.DatabaseError or "no such table" in message:
        return DatabaseDamaged(
            f"{path} is damaged ({message}); `xmr check --repair` (or `xmr index FOLDERS`) "
            "moves it aside and rebuilds the index from the image files"
        )
    return None


def _nearly_full(folder: Path) -> bool:
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < 1 << 20


class Database:
    def __init__(self, directory: Path, writable: bool = True, verify: str | None = None):
        """`verify` ("quick" | "full"): run SQLite's quick_check / integrity_check first and
        raise DatabaseDamaged on any finding, before a writer touches the file."""
        self.path = Path(directory) / DB_FILE
        self.writable = writable
        self.immutable = False  # opened with immutable=1 (read-only media)
        self.created = False  # a writer found no xmr schema and made one (new or emptied)
        if not writable and not self.path.exists():
            raise DatabaseDamaged(
                f"{self.path} is missing; `xmr check --repair` (or `xmr index FOLDERS`) "
                "rebuilds the index from the image files"
            )
        try:
            self.engine = self._engine()
            self.sessions = sessionmaker(self.engine, expire_on_commit=False)
            problems = self.integrity_problems(quick=verify == "quick") if verify else []
            if problems:
                pragma = "quick_check" if verify == "quick" else "integrity_check"
                raise DatabaseDamaged(
                    f"{self.path} is damaged ({pragma}: {problems[0]}); `xmr check --repair` "
                    "(or `xmr index FOLDERS`) moves it aside and rebuilds the index from the "
                    "image files"
                )
            if writable:
                self._migrate()
            else:
                self._check_version()
            self.has_damaged_table = "damaged" in inspect(self.engine).get_table_names()
        except (DBAPIError, sqlite3.DatabaseError) as exc:
            self.close()
            error = database_error(exc, self.path)
            if error is None:
                raise
            raise error from exc
        except XmrError:
            self.close()
            raise

    def _engine(self) -> Engine:
        if self.writable:
            engine = create_engine(
                "sqlite://", creator=lambda: self._connect(""), poolclass=QueuePool
            )
            event.listen(engine, "connect", _writer_pragmas)
            return engine
        mode = "ro"
        try:  # SQLite needs to create DB-shm next to a WAL file to read it: not on ro media
            probe = self._connect(mode)
            try:
                probe.execute("SELECT count(*) FROM sqlite_master").fetchone()
            finally:
                probe.close()
        except sqlite3.OperationalError:
            mode, self.immutable = "ro&immutable=1", True
        engine = create_engine(
            "sqlite://", creator=lambda: self._connect(mode), poolclass=QueuePool
        )
        event.listen(engine, "connect", _reader_pragmas)
        return engine

    def _connect(self, mode: str) -> sqlite3.Connection:
        if not mode:
            return sqlite3.connect(os.fsencode(self.path), check_same_thread=False)
        uri = f"file:{quote(os.fsencode(self.path))}?mode={mode}"
        return sqlite3.connect(uri, uri=True, check_same_thread=False)

    def _check_version(self) -> None:
        with self.session() as session:
            row = session.get(Meta, "schema_version")
            version = None if row is None else int(row.value)
        if version is None:
            raise DatabaseDamaged(f"{self.path} has no schema version; it is not an xmr index")
        if version > SCHEMA_VERSION:
            raise IndexCorrupt(_newer(self.path, version))
        if version < SCHEMA_VERSION:
            raise IndexCorrupt(
                f"{self.path} was written by an older xmr (schema {version}); run a writing "
                "command once (`xmr index` or `xmr check --repair`) to upgrade it"
            )

    def _migrate(self) -> None:
        Base.metadata.create_all(self.engine)
        with self.sessions.begin() as session:
            row = session.get(Meta, "schema_version")
            if row is None:
                session.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
                session.add(Meta(key="generation", value="0"))
                self.created = True
                return
            version = int(row.value)
            if version > SCHEMA_VERSION:
                raise IndexCorrupt(_newer(self.path, version))
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](session)
                version += 1
            row.value = str(version)

    def integrity_problems(self, quick: bool = False) -> list[str]:
        """SQLite's own verdict on every page ([] when sound); quick: O(N), no index checks."""
        pragma = "quick_check" if quick else "integrity_check"
        try:
            with self.engine.connect() as conn:
                rows = [r[0] for r in conn.exec_driver_sql(f"PRAGMA {pragma}")]
        except DBAPIError as exc:
            return [str(exc.orig)]
        return [] if rows == ["ok"] else rows

    def session(self) -> Session:
        return self.sessions()

    def generation(self, session: Session | None = None) -> int:
        """A counter bumped by every commit that changes which vectors exist."""
        if session is None:
            with self.session() as s:
                return self.generation(s)
        row = session.get(Meta, "generation")
        if row is None:
            raise DatabaseDamaged(f"{self.path} has no generation; it is not an xmr index")
        return int(row.value)

    @staticmethod
    def bump_generation(session: Session) -> None:
        session.execute(
            text("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
        )

    def ids(
        self,
        table: ItemTable,
        session: Session | None = None,
        start: int = 0,
        stop: int | None = None,
    ) -> list[int]:
        """Ids in [start, stop) of the rows that have a vector: images in state 'indexed',
        neither kind listed as damaged."""
        query = self._live(select(table.id), table).order_by(table.id)
        if start:
            query = query.where(table.id >= start)
        if stop is not None:
            query = query.where(table.id < stop)
        if session is None:
            with self.session() as s:
                return list(s.scalars(query))
        return list(session.scalars(query))

    def last_id(self, table: ItemTable) -> int:
        """The highest of `ids(table)`; -1 when there is none."""
        with self.session() as session:
            found = session.scalar(self._live(select(func.max(table.id)), table))
        return -1 if found is None else int(found)

    def _live(self, query, table: ItemTable):
        if table is ImageRow:
            query = query.where(ImageRow.state == "indexed")
        if self.has_damaged_table:
            lost = select(Damaged.id).where(Damaged.collection == table.__tablename__)
            query = query.where(table.id.not_in(lost))
        return query

    def holds_rows(self) -> bool:
        """True when any image or text row exists."""
        with self.session() as session:
            return any(
                session.scalar(select(table.id).limit(1)) is not None
                for table in (ImageRow, TextRow)
            )

    # -- rows by key ---------------------------------------------------------------------
    def rows_by_ids(
        self, table: type[Row], ids: Iterable[int], session: Session | None = None
    ) -> dict[int, Row]:
        """id -> row of `table` for each of `ids` that exists, read in chunks."""
        ids = [int(i) for i in ids]
        queries = [
            select(table).where(table.id.in_(ids[start : start + CHUNK]))
            for start in range(0, len(ids), CHUNK)
        ]
        if session is None:
            with self.session() as s:
                return {row.id: row for query in queries for row in s.scalars(query)}
        return {row.id: row for query in queries for row in session.scalars(query)}

    def image_row(self, image_id: int) -> ImageRow | None:
        with self.session() as session:
            return session.get(ImageRow, int(image_id))

    def indexed_image_at(self, path: str) -> ImageRow | None:
        """The indexed image whose file is `path`, if any."""
        query = select(ImageRow).where(ImageRow.state == "indexed", ImageRow.path == path)
        with self.session() as session:
            return session.scalars(query).first()

    def indexed_image_with_hash(self, digest: str) -> ImageRow | None:
        """The first indexed image (lowest id) whose content hashes to `digest`."""
        query = (
            select(ImageRow)
            .where(ImageRow.state == "indexed", ImageRow.content_hash == digest)
            .order_by(ImageRow.id)
        )
        with self.session() as session:
            return session.scalars(query).first()

    def indexed_images(self) -> list[tuple[int, str, str | None]]:
        """(id, path, content hash) of every indexed image, by id."""
        query = select(ImageRow.id, ImageRow.path, ImageRow.content_hash).where(
            ImageRow.state == "indexed"
        )
        with self.session() as session:
            return [(int(i), p, h) for i, p, h in session.execute(query.order_by(ImageRow.id))]

    @staticmethod
    def image_rows_under(session: Session, roots: Iterable[Path | str]) -> list[ImageRow]:
        """Rows of the files at or below any of `roots` (absolute, resolved paths)."""
        conditions = []
        for root in roots:
            conditions.append(ImageRow.path == str(root))
            conditions.append(ImageRow.path.startswith(str(root) + os.sep, autoescape=True))
        if not conditions:
            return []
        return list(session.scalars(select(ImageRow).where(or_(*conditions))))

    @staticmethod
    def indexed_hashes(session: Session, leave_out: Iterable[int] = ()) -> dict[str, int]:
        """content hash -> id of one indexed image with that content (not in `leave_out`)."""
        leave_out = set(leave_out)
        query = select(ImageRow.content_hash, ImageRow.id).where(ImageRow.state == "indexed")
        return {
            digest: i
            for digest, i in session.execute(query)
            if digest is not None and i not in leave_out
        }

    @staticmethod
    def delete_rows(session: Session, table: ItemTable, ids: Iterable[int]) -> None:
        """Delete rows by id (and their damaged marks), in chunks."""
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), CHUNK):
            session.execute(delete(table).where(table.id.in_(ids[start : start + CHUNK])))
        Database.clear_damaged(session, table.__tablename__, ids)

    def counts(self) -> dict[str, int]:
        """{"images": indexed, "skipped": images skipped, "texts": texts}."""
        with self.session() as session:
            count = select(func.count())
            return {
                "images": session.scalar(count.where(ImageRow.state == "indexed")) or 0,
                "skipped": session.scalar(count.where(ImageRow.state == "skipped")) or 0,
                "texts": session.scalar(count.select_from(TextRow)) or 0,
            }

    def sample_texts(self, n: int, max_chars: int) -> list[str]:
        """Up to `n` texts of at most `max_chars`, spread over the corpus where it can."""
        with self.session() as session:
            texts = session.scalar(select(func.count()).select_from(TextRow)) or 0
            short = select(TextRow.text).where(func.length(TextRow.text) <= max_chars)
            step = max(1, texts // max(n, 1))
            picked = list(session.scalars(short.where(TextRow.id % step == 0).limit(n)))
            if len(picked) < n:  # too few short ones at the spaced ids: take any short ones
                picked = list(session.scalars(short.limit(n)))
        return picked

    # -- search filters (retrieval/filters.py) -------------------------------------------
    def image_ids_matching(
        self,
        under: tuple[str, ...] = (),
        after: datetime | None = None,
        before: datetime | None = None,
        exts: tuple[str, ...] = (),
    ) -> list[int]:
        """Sorted ids of indexed images at or below any of `under`, taken (EXIF date, else
        mtime, local time) on or after `after` and before `before`, with one of `exts`."""
        conditions = [ImageRow.state == "indexed"]
        if under:
            conditions.append(or_(*(_at_or_below(ImageRow.path, p) for p in under)))
        if after is not None:
            conditions.append(_when(">=", after))
        if before is not None:
            conditions.append(_when("<", before))
        if exts:
            lower = func.lower(ImageRow.path)
            conditions.append(or_(*(lower.endswith("." + e, autoescape=True) for e in exts)))
        query = select(ImageRow.id).where(and_(*conditions)).order_by(ImageRow.id)
        with self.session() as session:
            return list(session.scalars(query))

    def text_ids_under(self, under: tuple[str, ...]) -> list[int]:
        """Sorted ids of texts that a corpus file at or below any of `under` holds."""
        held = exists().where(
            TextSource.text_id == TextRow.id,
            or_(*(_at_or_below(TextSource.source, p) for p in under)),
        )
        own = or_(*(_at_or_below(TextRow.source, p) for p in under))
        query = select(TextRow.id).where(or_(own, held)).order_by(TextRow.id)
        with self.session() as session:
            return list(session.scalars(query))

    # -- texts and the corpus files that hold them ---------------------------------------
    @staticmethod
    def text_ids_by_hash(session: Session) -> dict[str, int]:
        return {h: i for h, i in session.execute(select(TextRow.text_hash, TextRow.id))}

    @staticmethod
    def text_ids_of_source(session: Session, source: str) -> set[int]:
        return set(session.scalars(select(TextSource.text_id).where(TextSource.source == source)))

    @staticmethod
    def unlink_texts(session: Session, source: str, text_ids: Iterable[int]) -> list[int]:
        """Unlink `text_ids` from corpus file `source`; delete and return those that no
        other file holds."""
        ids = [int(i) for i in text_ids]
        held = set()
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            session.execute(
                delete(TextSource).where(TextSource.source == source, TextSource.text_id.in_(chunk))
            )
            held |= set(
                session.scalars(select(TextSource.text_id).where(TextSource.text_id.in_(chunk)))
            )
        orphans = [i for i in ids if i not in held]
        Database.delete_rows(session, TextRow, orphans)
        return orphans

    # -- damaged rows --------------------------------------------------------------------
    def damaged_ids(self, collection: str, session: Session | None = None) -> list[int]:
        """Ids of `collection` whose records wait to be re-encoded (rows that still exist)."""
        if not self.has_damaged_table:
            return []
        table = ImageRow if collection == "images" else TextRow
        query = (
            select(Damaged.id)
            .where(Damaged.collection == collection, Damaged.id.in_(select(table.id)))
            .order_by(Damaged.id)
        )
        if session is None:
            with self.session() as s:
                return list(s.scalars(query))
        return list(session.scalars(query))

    @staticmethod
    def mark_damaged(session: Session, collection: str, ids: Iterable[int]) -> None:
        known = set(session.scalars(select(Damaged.id).where(Damaged.collection == collection)))
        session.add_all(Damaged(collection=collection, id=int(i)) for i in ids if i not in known)

    @staticmethod
    def clear_damaged(session: Session, collection: str, ids: Iterable[int]) -> None:
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            session.execute(
                delete(Damaged).where(Damaged.collection == collection, Damaged.id.in_(chunk))
            )

    # -- a copy of the manifest ----------------------------------------------------------
    def stored_manifest(self) -> dict | None:
        """The copy of manifest.json kept here (restores a damaged file), or None."""
        with self.session() as session:
            row = session.get(Meta, "manifest")
        if row is None:
            return None
        try:
            data = json.loads(row.value)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def store_manifest(self, manifest: dict) -> None:
        value = json.dumps(manifest, sort_keys=True)
        with self.sessions.begin() as session:
            row = session.get(Meta, "manifest")
            if row is None:
                session.add(Meta(key="manifest", value=value))
            elif row.value != value:
                row.value = value

    def close(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.dispose()


_NS_LIMIT = 2**63 - 1  # file times are signed 64-bit nanoseconds in the database


def _at_or_below(column, path: str):
    return or_(column == path, column.startswith(path.rstrip(os.sep) + os.sep, autoescape=True))


def _when(op: str, moment: datetime):
    """EXIF date if the image has one, else its mtime, compared with `moment`."""
    ns = _local_ns(moment)
    if op == ">=":
        return or_(
            and_(ImageRow.taken_at.is_not(None), ImageRow.taken_at >= moment),
            and_(ImageRow.taken_at.is_(None), ImageRow.mtime_ns >= ns),
        )
    return or_(
        and_(ImageRow.taken_at.is_not(None), ImageRow.taken_at < moment),
        and_(ImageRow.taken_at.is_(None), ImageRow.mtime_ns < ns),
    )


def _local_ns(moment: datetime) -> int:
    """A naive local time as nanoseconds since the epoch (how mtimes are kept), clamped to
    the range the database holds: year 1 and year 9999 sit past every file time."""
    try:
        ns = int(moment.timestamp() * 1_000_000_000)
    except (OverflowError, ValueError, OSError):  # before the platform's first local time
        return -_NS_LIMIT if moment.year < 1970 else _NS_LIMIT
    return max(-_NS_LIMIT, min(_NS_LIMIT, ns))


def _newer(path: Path, version: int) -> str:
    return (
        f"{path} has schema version {version}, newer than this xmr "
        f"({SCHEMA_VERSION}); upgrade xmr to open it"
    )
