"""The database carries a schema version and upgrades older indexes forward."""

from __future__ import annotations

import sqlite3

import pytest

from xmr.retrieval.db import DB_FILE, SCHEMA_VERSION, Database, TextRow, TextSource
from xmr.retrieval.errors import IndexCorrupt


def _version(path) -> int:
    with sqlite3.connect(path) as con:
        return int(con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])


def test_a_v1_database_is_migrated_and_keeps_its_texts(tmp_path):
    db = Database(tmp_path)
    with db.session() as session:
        session.add_all(
            [
                TextRow(text="a red circle", text_hash="h1", source="/c/a.txt", record="line 1"),
                TextRow(text="a blue star", text_hash="h2", source="/c/b.txt", record="line 4"),
            ]
        )
        session.commit()
    db.close()
    # Turn it into what xmr 0.1 wrote: no text_sources table, schema version 1.
    with sqlite3.connect(tmp_path / DB_FILE) as con:
        con.execute("DROP TABLE text_sources")
        con.execute("UPDATE meta SET value='1' WHERE key='schema_version'")

    db = Database(tmp_path)
    assert _version(tmp_path / DB_FILE) == SCHEMA_VERSION == 2
    with db.session() as session:
        links = {(s.text_id, s.source, s.record) for s in session.query(TextSource)}
    assert links == {(1, "/c/a.txt", "line 1"), (2, "/c/b.txt", "line 4")}
    db.close()


def test_a_newer_database_is_refused(tmp_path):
    Database(tmp_path).close()
    with sqlite3.connect(tmp_path / DB_FILE) as con:
        con.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(IndexCorrupt, match="newer than this xmr"):
        Database(tmp_path)
