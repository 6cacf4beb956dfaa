"""The metadata database (SQLite through SQLAlchemy 2.x): schema, version, migrations.

The database is the source of truth of an index: a row id is the item's id in FAISS and
in the array stores. Rows use AUTOINCREMENT so an id is never handed out twice, which
keeps "id -> vector" immutable (see `arraystore`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from retrieval.errors import IndexCorrupt

SCHEMA_VERSION = 2
DB_FILE = "xmr.sqlite3"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


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
    path: Mapped[str] = mapped_column(Text, unique=True)  # absolute, resolved
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
    source: Mapped[str] = mapped_column(Text, index=True)  # the corpus file it came from first
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
    source: Mapped[str] = mapped_column(Text, primary_key=True)
    record: Mapped[str] = mapped_column(String)


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


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL survives a kill at any point and lets readers search while an indexer writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    def __init__(self, directory: Path):
        self.path = Path(directory) / DB_FILE
        self.engine: Engine = create_engine(f"sqlite:///{self.path}")
        event.listen(self.engine, "connect", _sqlite_pragmas)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._migrate()

    def _migrate(self) -> None:
        Base.metadata.create_all(self.engine)
        with self.sessions.begin() as session:
            row = session.get(Meta, "schema_version")
            if row is None:
                session.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
                session.add(Meta(key="generation", value="0"))
                return
            version = int(row.value)
            if version > SCHEMA_VERSION:
                raise IndexCorrupt(
                    f"{self.path} has schema version {version}, newer than this xmr "
                    f"({SCHEMA_VERSION}); upgrade xmr to open it"
                )
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](session)
                version += 1
            row.value = str(version)

    def session(self) -> Session:
        return self.sessions()

    def generation(self, session: Session | None = None) -> int:
        """A counter bumped by every commit that changes which vectors exist."""
        if session is None:
            with self.session() as s:
                return self.generation(s)
        return int(session.get(Meta, "generation").value)

    @staticmethod
    def bump_generation(session: Session) -> None:
        session.execute(
            text("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
        )

    def ids(self, table: type[Base], session: Session | None = None) -> list[int]:
        """Ids of the rows that have a vector (images: state 'indexed')."""
        query = select(table.id)
        if table is ImageRow:
            query = query.where(ImageRow.state == "indexed")
        if session is None:
            with self.session() as s:
                return list(s.scalars(query))
        return list(session.scalars(query))

    def close(self) -> None:
        self.engine.dispose()
