"""The metadata database, written through SQLAlchemy 2.x: schema, version, migrations.

The database is the source of truth of an index: a row id is the item's id in FAISS and
in the array stores. Rows use AUTOINCREMENT so an id is never handed out twice, which
keeps "id -> vector" immutable (see `arraystore`).

A writer creates and migrates the file and changes rows inside ORM sessions. Its plain
reads are the reader's (db_read.py), run through this class's connection pool, so a
search and an indexer read the same SQL; a search opens the file with the reader alone.
Paths are stored escaped (db_file.py); `FsPath` applies that to ORM columns.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    create_engine,
    delete,
    event,
    inspect,
    or_,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import QueuePool

from xmr.retrieval.db_file import (
    CHUNK,
    DB_FILE,
    SCHEMA_VERSION,
    database_error,
    escape_path,
    newer_schema,
    opening,
    unescape_path,
)
from xmr.retrieval.db_read import DatabaseReader, Table
from xmr.retrieval.errors import DatabaseDamaged, IndexCorrupt

__all__ = ["CHUNK", "DB_FILE", "SCHEMA_VERSION", "Database", "database_error", "escape_path"]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


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


class Database(DatabaseReader):
    """The database of one index for a writer: ORM sessions for changes, the reader's
    queries for plain reads. (A reader opens DatabaseReader alone.)"""

    writable = True
    immutable = False

    def __init__(self, directory: Path, verify: str | None = None):
        """Open (creating and migrating) the database of the index at `directory`.
        `verify` ("quick" | "full"): run SQLite's quick_check / integrity_check first and
        raise DatabaseDamaged on any finding, before a writer touches the file."""
        self.path = Path(directory) / DB_FILE
        self.created = False  # a writer found no xmr schema and made one (new or emptied)
        with opening(self.path, self.close):
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
            self._migrate()
            self.has_damaged_table = "damaged" in inspect(self.engine).get_table_names()

    def _engine(self) -> Engine:
        engine = create_engine(
            "sqlite://",
            creator=lambda: sqlite3.connect(os.fsencode(self.path), check_same_thread=False),
            poolclass=QueuePool,
        )
        event.listen(engine, "connect", _writer_pragmas)
        return engine

    def _read(self, *statements: tuple[str, Sequence[Any]]) -> list[list[tuple]]:
        """The reader's statements through the pool, in one transaction; SQLite's own
        error comes out unwrapped, as from the reader."""
        try:
            with self.engine.connect() as connection:
                return [
                    list(connection.exec_driver_sql(sql, tuple(params)).fetchall())
                    for sql, params in statements
                ]
        except DBAPIError as exc:
            if isinstance(exc.orig, sqlite3.DatabaseError):
                raise exc.orig from exc
            raise

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
                raise IndexCorrupt(newer_schema(self.path, version))
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](session)
                version += 1
            row.value = str(version)

    def session(self) -> Session:
        return self.sessions()

    @staticmethod
    def bump_generation(session: Session) -> None:
        session.execute(
            text("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
        )

    # -- reads inside a writer's session (they see its own uncommitted changes) ---------
    def rows_in(self, session: Session, table: Table, ids: Iterable[int]) -> dict[int, Any]:
        """id -> ORM row (ImageRow | TextRow) for each of `ids` that exists, in chunks."""
        orm = _orm(table)
        ids = [int(i) for i in ids]
        found: dict[int, Any] = {}
        for start in range(0, len(ids), CHUNK):
            rows: Iterable[Any] = session.scalars(
                select(orm).where(orm.id.in_(ids[start : start + CHUNK]))
            )
            found.update((row.id, row) for row in rows)
        return found

    def damaged_in(self, session: Session, collection: Table) -> list[int]:
        """`damaged_ids` as `session` sees them."""
        if not self.has_damaged_table:
            return []
        orm = _orm(collection)
        query = (
            select(Damaged.id)
            .where(Damaged.collection == collection, Damaged.id.in_(select(orm.id)))
            .order_by(Damaged.id)
        )
        return list(session.scalars(query))

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


def _orm(table: Table) -> ItemTable:
    return ImageRow if table == "images" else TextRow
