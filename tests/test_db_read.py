"""The plain-sqlite3 reader (what a search opens) against the SQLAlchemy writer (what
the indexer opens): the same answer to every read, on one real SQLite file holding the
awkward cases (names that are not UTF-8, LIKE wildcards, skipped and damaged rows, texts
held by two corpus files, EXIF dates and mtimes)."""

from __future__ import annotations

import threading
from datetime import datetime

import pytest
from sqlalchemy import text

from xmr.retrieval.db import CHUNK, Database, ImageRow, TextRow, TextSource
from xmr.retrieval.db_read import DatabaseReader, ImageRecord, TextRecord
from xmr.retrieval.errors import DatabaseDamaged, IndexCorrupt

ODD = "/photos/caf\udce9.jpg"  # a Latin-1 name: not UTF-8, kept with a surrogate escape
PATHS = [
    "/photos/a.jpg",
    "/photos/trip/b.JPEG",
    "/photos2/c.jpg",
    "/photos_x%/d.jpg",
    "/Photos/e.jpg",
    ODD,
    "/photos/del\x7fname.png",
]


def _filled(folder) -> Database:
    db = Database(folder)
    with db.session() as session:
        for i, path in enumerate(PATHS):
            session.add(
                ImageRow(
                    path=path,
                    size=10 + i,
                    mtime_ns=i * 10**18,  # 1970, 2001, 2033, ...
                    content_hash=f"h{i % 3}",
                    width=64,
                    height=48,
                    format="JPEG",
                    taken_at=datetime(2024, 1, 15, 9, 30) if i == 1 else None,
                )
            )
        session.add(ImageRow(path="/photos/bad.jpg", size=1, mtime_ns=0, state="skipped",
                             error="cannot decode"))  # fmt: skip
        texts = [
            TextRow(
                text=f"caption {i}",
                text_hash=f"t{i}",
                source="/c/a.txt",
                record=str(i),
                meta_json='{"k": 1}' if i == 0 else None,
                n_tokens=i,
            )  # fmt: skip
            for i in range(5)
        ]
        session.add_all(texts)
        session.flush()
        session.add_all(TextSource(text_id=t.id, source="/c/a.txt", record=t.record) for t in texts)
        session.add(TextSource(text_id=texts[2].id, source="/d/b\udcff.txt", record="9"))
        Database.mark_damaged(session, "images", [3])
        Database.mark_damaged(session, "texts", [5])
        Database.bump_generation(session)
        session.commit()
    db.store_manifest({"encoder": {"spec": "xmr-tiny"}, "dim": 128})
    return db


def _answers(db) -> dict:
    under_cases = [("/photos",), ("/photos/",), ("/photos_x%",), ("/",), ("/photos", "/Photos")]
    return {
        "generation": db.generation(),
        "manifest": db.stored_manifest(),
        "ids": [db.ids(t) for t in ("images", "texts")],
        "ids_range": db.ids("images", start=2, stop=6),
        "last": [db.last_id(t) for t in ("images", "texts")],
        "damaged": [db.damaged_ids(t) for t in ("images", "texts")],
        "holds": db.holds_rows(),
        "counts": db.counts(),
        "images": {i: _plain(r) for i, r in db.rows_by_ids("images", range(0, 20)).items()},
        "texts": {i: _plain(r) for i, r in db.rows_by_ids("texts", range(0, 20)).items()},
        "at_odd": _plain(db.indexed_image_at(ODD)),
        "at_skipped": db.indexed_image_at("/photos/bad.jpg"),
        "by_hash": _plain(db.indexed_image_with_hash("h1")),
        "indexed": db.indexed_images(),
        "sample": db.sample_texts(3, 100),
        "under": [db.image_ids_matching(under=u) for u in under_cases],
        "dates": [
            db.image_ids_matching(after=datetime(2024, 1, 1), before=datetime(2024, 2, 1)),
            db.image_ids_matching(before=datetime(2000, 1, 1)),
            db.image_ids_matching(after=datetime(2030, 1, 1)),
        ],
        "exts": [db.image_ids_matching(exts=e) for e in (("jpg",), ("jpeg", "png"))],
        "texts_under": [db.text_ids_under(u) for u in (("/c",), ("/d",), ("/d/b\udcff.txt",))],
    }


def _plain(row) -> dict | None:
    if row is None:
        return None
    names = (
        ImageRecord.__dataclass_fields__
        if isinstance(row, ImageRow | ImageRecord)
        else TextRecord.__dataclass_fields__
    )
    return {name: getattr(row, name) for name in names}


def test_the_reader_answers_every_read_as_the_writer_does(tmp_path):
    writer = _filled(tmp_path)
    reader = DatabaseReader(tmp_path)
    try:
        got, want = _answers(reader), _answers(writer)
    finally:
        reader.close()
        writer.close()
    assert got == want
    # ... and the answers are the right ones, not merely the same ones.
    assert got["under"][0] == [1, 2, 6, 7]  # damaged 3 is there: filters name files
    assert got["under"][2] == [4] and got["under"][4] == [1, 2, 5, 6, 7]
    assert got["ids"] == [[1, 2, 4, 5, 6, 7], [1, 2, 3, 4]]  # no damaged, no skipped
    assert got["at_odd"]["path"] == ODD and got["images"][7]["path"] == PATHS[6]
    assert got["dates"] == [[2], [1], [3, 4, 5, 6, 7]]  # EXIF date first, else the mtime
    assert got["exts"] == [[1, 3, 4, 5, 6], [2, 7]]
    assert got["texts_under"] == [[1, 2, 3, 4, 5], [3], [3]]
    assert got["counts"] == {"images": 7, "skipped": 1, "texts": 5}
    assert got["images"][2]["taken_at"] == datetime(2024, 1, 15, 9, 30)
    assert got["texts"][1]["meta_json"] == '{"k": 1}'


def test_prefixes_are_exact_folders(tmp_path):
    """`under` matches a folder and what lies below it: not a sibling sharing its prefix,
    not another case, not a LIKE wildcard."""
    _filled(tmp_path).close()
    reader = DatabaseReader(tmp_path)
    try:
        assert reader.image_ids_matching(under=("/photos",)) == [1, 2, 6, 7]
        assert reader.image_ids_matching(under=("/Photos",)) == [5]
        assert reader.image_ids_matching(under=("/photos_x%",)) == [4]
        assert reader.image_ids_matching(under=("/photos_",)) == []
        assert reader.image_ids_matching(under=("/photos/trip/b.JPEG",)) == [2]
    finally:
        reader.close()


def test_rows_by_ids_reads_past_sqlites_parameter_cap_in_one_snapshot(tmp_path):
    db = Database(tmp_path)
    count = CHUNK * 2 + 7
    with db.session() as session:
        session.add_all(
            ImageRow(path=f"/p/{i}.jpg", size=1, mtime_ns=0, content_hash=f"h{i}")
            for i in range(count)
        )
        session.commit()
    db.close()
    reader = DatabaseReader(tmp_path)
    rows = reader.rows_by_ids("images", [*range(1, count + 1), 10**9])
    assert sorted(rows) == list(range(1, count + 1))
    assert rows[CHUNK + 3].path == f"/p/{CHUNK + 2}.jpg"
    with pytest.raises(AttributeError):  # records are read-only
        rows[1].path = "/elsewhere"  # type: ignore[misc]

    errors = []

    def read_many():
        try:
            for _ in range(30):
                assert len(reader.rows_by_ids("images", range(1, count + 1))) == count
                assert reader.counts()["images"] == count
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reader.close()
    assert errors == []


def test_the_reader_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(DatabaseDamaged, match="is missing"):
        DatabaseReader(tmp_path)
    (tmp_path / "xmr.sqlite3").write_bytes(b"not a database" * 100)
    with pytest.raises(DatabaseDamaged, match="is damaged"):
        DatabaseReader(tmp_path)
    (tmp_path / "xmr.sqlite3").unlink()
    db = Database(tmp_path)
    with db.session() as session:
        session.execute(text("UPDATE meta SET value = '99' WHERE key = 'schema_version'"))
        session.commit()
    db.close()
    with pytest.raises(IndexCorrupt, match="newer than this xmr"):
        DatabaseReader(tmp_path)
