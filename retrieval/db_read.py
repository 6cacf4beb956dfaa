"""Reading the metadata database with plain sqlite3: every query a search needs.

A search opens the index read-only and only reads, so it needs neither an ORM nor
migrations, and a cold `xmr search` does not pay for importing SQLAlchemy (a quarter of a
second here). The writer (db.py, SQLAlchemy) inherits these queries and runs the same SQL
through its own connection pool: there is one definition of each read, whoever opens the
file.

The reader opens the file read-only (`mode=ro`; on read-only media, where SQLite cannot
create the WAL index, `immutable=1`) and never migrates or writes. Rows listed in
`damaged` have stored records that were lost (a truncated store): they are left out of
`ids()`, so no search returns them, until they are re-encoded.

Rows come back as frozen records with the columns' names (`ImageRecord`, `TextRecord`);
paths are unescaped (db_file.py) and DATETIME columns parsed as naive UTC datetimes, as
SQLAlchemy stores them (`YYYY-MM-DD HH:MM:SS.ffffff`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from xmr.retrieval.db_file import (
    CHUNK,
    DB_FILE,
    check_schema_version,
    escape_path,
    opening,
    unescape_path,
)
from xmr.retrieval.errors import DatabaseDamaged, XmrError

Table = Literal["images", "texts"]
Statement = tuple[str, Sequence[Any]]

_NS_LIMIT = 2**63 - 1  # file times are signed 64-bit nanoseconds in the database


@dataclass(frozen=True, slots=True)
class ImageRecord:
    id: int
    path: str  # absolute, resolved
    size: int
    mtime_ns: int
    content_hash: str | None
    width: int | None
    height: int | None
    format: str | None
    taken_at: datetime | None  # EXIF date, else None
    added_at: datetime | None
    updated_at: datetime | None
    state: str  # indexed | skipped
    error: str | None  # why a skipped file was skipped


@dataclass(frozen=True, slots=True)
class TextRecord:
    id: int
    text: str
    text_hash: str
    source: str  # the corpus file it came from first
    record: str  # line number / record id in that file
    meta_json: str | None  # the record's other fields, as JSON
    n_tokens: int  # valid rows in the token store
    added_at: datetime | None


_IMAGE_COLUMNS = (
    "id, path, size, mtime_ns, content_hash, width, height, format, taken_at, added_at, "
    "updated_at, state, error"
)
_TEXT_COLUMNS = "id, text, text_hash, source, record, meta_json, n_tokens, added_at"


def sql_datetime(moment: datetime) -> str:
    """A datetime as a DATETIME column holds it (so strings compare as times)."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def _datetime(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _image_record(row: tuple) -> ImageRecord:
    (id_, path, size, mtime, digest, width, height, fmt, taken, added, updated, state, err) = row
    return ImageRecord(
        id_, unescape_path(path), size, mtime, digest, width, height, fmt,
        _datetime(taken), _datetime(added), _datetime(updated), state, err,
    )  # fmt: skip


def _text_record(row: tuple) -> TextRecord:
    id_, text, digest, source, record, meta, n_tokens, added = row
    return TextRecord(
        id_, text, digest, unescape_path(source), record, meta, n_tokens, _datetime(added)
    )


class DatabaseReader:
    """The database of one index, opened read-only."""

    writable = False

    def __init__(self, directory: Path):
        self.path = Path(directory) / DB_FILE
        self.immutable = False  # opened with immutable=1 (read-only media)
        self._lock = threading.Lock()  # one statement (or read transaction) at a time
        if not self.path.exists():
            raise DatabaseDamaged(
                f"{self.path} is missing; `xmr check --repair` (or `xmr index FOLDERS`) "
                "rebuilds the index from the image files"
            )
        self._connection: sqlite3.Connection | None = None
        with opening(self.path, self.close):
            self._connection = self._open()
            self._check_version()
            self.has_damaged_table = self._has_table("damaged")

    def _open(self) -> sqlite3.Connection:
        try:  # SQLite needs to create DB-shm next to a WAL file to read it: not on ro media
            connection = self._connect("ro")
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError:
            connection = self._connect("ro&immutable=1")
            self.immutable = True
        return connection

    def _connect(self, mode: str) -> sqlite3.Connection:
        uri = f"file:{quote(os.fsencode(self.path))}?mode={mode}"
        # isolation_level=None: no implicit transactions; _read begins one where a read
        # spans several statements. One connection serves every thread, under _lock.
        connection = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        connection.execute("PRAGMA busy_timeout=10000")
        connection.execute("PRAGMA query_only=ON")
        return connection

    def _read(self, *statements: Statement) -> list[list[tuple]]:
        """Each statement's rows; several statements read one snapshot (one transaction)."""
        if self._connection is None:
            raise XmrError(f"{self.path} is closed")
        with self._lock:
            connection = self._connection
            if len(statements) == 1:
                sql, params = statements[0]
                return [connection.execute(sql, params).fetchall()]
            connection.execute("BEGIN")
            try:
                return [connection.execute(sql, params).fetchall() for sql, params in statements]
            finally:
                connection.execute("COMMIT")

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self._read((sql, params))[0]

    def _column(self, sql: str, params: Sequence[Any] = ()) -> list:
        return [row[0] for row in self._rows(sql, params)]

    def _has_table(self, name: str) -> bool:
        found = self._rows("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        return bool(found)

    def _meta(self, key: str) -> str | None:
        found = self._column("SELECT value FROM meta WHERE key = ?", (key,))
        return found[0] if found else None

    def _check_version(self) -> None:
        value = self._meta("schema_version")
        check_schema_version(self.path, None if value is None else int(value))

    # -- state ---------------------------------------------------------------------------
    def integrity_problems(self, quick: bool = False) -> list[str]:
        """SQLite's own verdict on every page ([] when sound); quick: O(N), no index checks."""
        pragma = "quick_check" if quick else "integrity_check"
        try:
            rows = self._column(f"PRAGMA {pragma}")
        except sqlite3.DatabaseError as exc:
            return [str(getattr(exc, "orig", None) or exc)]
        return [] if rows == ["ok"] else [str(r) for r in rows]

    def generation(self) -> int:
        """A counter bumped by every commit that changes which vectors exist."""
        value = self._meta("generation")
        if value is None:
            raise DatabaseDamaged(f"{self.path} has no generation; it is not an xmr index")
        return int(value)

    def stored_manifest(self) -> dict | None:
        """The copy of manifest.json kept here (restores a damaged file), or None."""
        value = self._meta("manifest")
        if value is None:
            return None
        try:
            data = json.loads(value)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    # -- ids -----------------------------------------------------------------------------
    def _live(self, table: Table) -> tuple[str, list[Any]]:
        """The WHERE clause of rows that have a vector: images in state 'indexed', neither
        kind listed as damaged."""
        clauses, params = ["1"], []
        if table == "images":
            clauses.append("state = 'indexed'")
        if self.has_damaged_table:
            clauses.append("id NOT IN (SELECT id FROM damaged WHERE collection = ?)")
            params.append(table)
        return " AND ".join(clauses), params

    def ids(self, table: Table, start: int = 0, stop: int | None = None) -> list[int]:
        """Ids in [start, stop) of the rows that have a vector, ascending."""
        where, params = self._live(table)
        if start:
            where, params = f"{where} AND id >= ?", [*params, int(start)]
        if stop is not None:
            where, params = f"{where} AND id < ?", [*params, int(stop)]
        return self._column(f"SELECT id FROM {_table(table)} WHERE {where} ORDER BY id", params)

    def last_id(self, table: Table) -> int:
        """The highest of `ids(table)`; -1 when there is none."""
        where, params = self._live(table)
        found = self._column(f"SELECT max(id) FROM {_table(table)} WHERE {where}", params)[0]
        return -1 if found is None else int(found)

    def damaged_ids(self, collection: Table) -> list[int]:
        """Ids of `collection` whose records wait to be re-encoded (rows that still exist)."""
        if not self.has_damaged_table:
            return []
        return self._column(
            f"SELECT id FROM damaged WHERE collection = ? AND id IN "
            f"(SELECT id FROM {_table(collection)}) ORDER BY id",
            (collection,),
        )

    def holds_rows(self) -> bool:
        """True when any image or text row exists."""
        images, texts = self._read(
            ("SELECT 1 FROM images LIMIT 1", ()), ("SELECT 1 FROM texts LIMIT 1", ())
        )
        return bool(images or texts)

    def counts(self) -> dict[str, int]:
        """{"images": indexed, "skipped": images skipped, "texts": texts}."""
        indexed, skipped, texts = self._read(
            ("SELECT count(*) FROM images WHERE state = 'indexed'", ()),
            ("SELECT count(*) FROM images WHERE state = 'skipped'", ()),
            ("SELECT count(*) FROM texts", ()),
        )
        return {"images": indexed[0][0], "skipped": skipped[0][0], "texts": texts[0][0]}

    # -- rows ----------------------------------------------------------------------------
    def rows_by_ids(self, table: Table, ids: Iterable[int]) -> dict[int, Any]:
        """id -> ImageRecord | TextRecord of `table` for each of `ids` that exists."""
        ids = [int(i) for i in ids]
        columns, record = (
            (_IMAGE_COLUMNS, _image_record) if table == "images" else (_TEXT_COLUMNS, _text_record)
        )
        chunks = [ids[start : start + CHUNK] for start in range(0, len(ids), CHUNK)]
        statements = [
            (
                f"SELECT {columns} FROM {_table(table)} WHERE id IN "
                f"({', '.join('?' * len(chunk))})",
                chunk,
            )
            for chunk in chunks
        ]
        if not statements:
            return {}
        return {row[0]: record(row) for rows in self._read(*statements) for row in rows}

    def image_row(self, image_id: int) -> ImageRecord | None:
        return self.rows_by_ids("images", [image_id]).get(int(image_id))

    def indexed_image_at(self, path: str) -> ImageRecord | None:
        """The indexed image whose file is `path`, if any."""
        return self._first_image("path = ?", escape_path(path))

    def indexed_image_with_hash(self, digest: str) -> ImageRecord | None:
        """The first indexed image (lowest id) whose content hashes to `digest`."""
        return self._first_image("content_hash = ?", digest)

    def _first_image(self, condition: str, value: str) -> ImageRecord | None:
        rows = self._rows(
            f"SELECT {_IMAGE_COLUMNS} FROM images WHERE state = 'indexed' AND {condition} "
            "ORDER BY id LIMIT 1",
            (value,),
        )
        return _image_record(rows[0]) if rows else None

    def indexed_images(self) -> list[tuple[int, str, str | None]]:
        """(id, path, content hash) of every indexed image, by id."""
        rows = self._rows(
            "SELECT id, path, content_hash FROM images WHERE state = 'indexed' ORDER BY id"
        )
        return [(int(i), unescape_path(p), h) for i, p, h in rows]

    def sample_texts(self, n: int, max_chars: int) -> list[str]:
        """Up to `n` texts of at most `max_chars`, spread over the corpus where it can."""
        texts = self._column("SELECT count(*) FROM texts")[0]
        step = max(1, texts // max(n, 1))
        short = "SELECT text FROM texts WHERE length(text) <= ?"
        picked = self._column(f"{short} AND id % ? = 0 LIMIT ?", (max_chars, step, n))
        if len(picked) < n:  # too few short ones at the spaced ids: take any short ones
            picked = self._column(f"{short} LIMIT ?", (max_chars, n))
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
        mtime, local time) on or after `after` and before `before`, with one of `exts`
        (the extension compared without regard to ASCII case)."""
        clauses, params = ["state = 'indexed'"], list[Any]()
        if under:
            clauses.append(_any_at_or_below("path", under, params))
        for op, moment in ((">=", after), ("<", before)):
            if moment is not None:
                clauses.append(
                    f"((taken_at IS NOT NULL AND taken_at {op} ?) "
                    f"OR (taken_at IS NULL AND mtime_ns {op} ?))"
                )
                params += [sql_datetime(moment), local_ns(moment)]
        if exts:
            endings = []
            for ext in exts:
                ending = "." + ext.lower()
                endings.append("lower(substr(path, ?)) = ?")
                params += [-len(ending), ending]
            clauses.append(f"({' OR '.join(endings)})")
        return self._column(
            f"SELECT id FROM images WHERE {' AND '.join(clauses)} ORDER BY id", params
        )

    def text_ids_under(self, under: tuple[str, ...]) -> list[int]:
        """Sorted ids of texts that a corpus file at or below any of `under` holds."""
        params: list[Any] = []
        own = _any_at_or_below("texts.source", under, params)
        held = _any_at_or_below("s.source", under, params)
        return self._column(
            f"SELECT id FROM texts WHERE {own} OR EXISTS (SELECT 1 FROM text_sources s "
            f"WHERE s.text_id = texts.id AND {held}) ORDER BY id",
            params,
        )

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


def _table(name: str) -> str:
    if name not in ("images", "texts"):
        raise ValueError(f"no table {name!r}")
    return name


def _any_at_or_below(column: str, paths: Iterable[str], params: list[Any]) -> str:
    """SQL true when `column` is one of `paths` or lies below one (a binary-collated range,
    so it is exact, case-sensitive and uses the column's index); appends the parameters."""
    clauses = []
    for path in paths:
        base = escape_path(path.rstrip(os.sep))
        clauses.append(f"({column} = ? OR ({column} >= ? AND {column} < ?))")
        # Every path below `base` starts with base + "/"; "0" is the character after "/".
        params += [escape_path(path), base + os.sep, base + chr(ord(os.sep) + 1)]
    return f"({' OR '.join(clauses)})" if clauses else "0"


def local_ns(moment: datetime) -> int:
    """A naive local time as nanoseconds since the epoch (how mtimes are kept), clamped to
    the range the database holds: year 1 and year 9999 sit past every file time."""
    try:
        ns = int(moment.timestamp() * 1_000_000_000)
    except (OverflowError, ValueError, OSError):  # before the platform's first local time
        return -_NS_LIMIT if moment.year < 1970 else _NS_LIMIT
    return max(-_NS_LIMIT, min(_NS_LIMIT, ns))
