"""Database's queries: the one place the engine, the indexer and the filters read and
write rows through (real SQLite in a temporary folder)."""

from __future__ import annotations

from datetime import datetime

from xmr.retrieval.db import CHUNK, Database, ImageRow, TextRow, TextSource


def _image(path: str, digest: str, state: str = "indexed", taken_at=None) -> ImageRow:
    return ImageRow(
        path=path, size=1, mtime_ns=0, content_hash=digest, state=state, taken_at=taken_at
    )


def test_rows_by_ids_reads_past_sqlites_parameter_cap(tmp_path):
    db = Database(tmp_path)
    count = CHUNK * 2 + 7
    with db.session() as session:
        session.add_all(_image(f"/p/{i}.jpg", f"h{i}") for i in range(count))
        session.commit()
    asked = [*range(1, count + 1), 10**9]  # one id that names no row
    rows = db.rows_by_ids("images", asked)
    assert sorted(rows) == list(range(1, count + 1))
    assert rows[CHUNK + 3].path == f"/p/{CHUNK + 2}.jpg"
    assert db.counts() == {"images": count, "skipped": 0, "texts": 0}
    db.close()


def test_rows_under_a_folder_leave_out_a_sibling_that_shares_its_prefix(tmp_path):
    db = Database(tmp_path)
    with db.session() as session:
        session.add_all(
            [
                _image("/photos/a.jpg", "h1"),
                _image("/photos/trip/b.jpg", "h2"),
                _image("/photos2/c.jpg", "h3"),
                _image("/photos_x%/d.jpg", "h4"),  # LIKE wildcards must be escaped
                _image("/photos/bad.jpg", "h5", state="skipped"),
            ]
        )
        session.commit()
        under = {row.path for row in Database.image_rows_under(session, ["/photos"])}
        assert under == {"/photos/a.jpg", "/photos/trip/b.jpg", "/photos/bad.jpg"}
        assert Database.image_rows_under(session, []) == []
        hashes = Database.indexed_hashes(session, leave_out={1})
    assert hashes == {"h2": 2, "h3": 3, "h4": 4}  # skipped rows and left-out ids are not twins
    assert db.image_ids_matching(under=("/photos",)) == [1, 2]
    assert db.image_ids_matching(exts=("jpg",), under=("/photos_x%",)) == [4]
    db.close()


def test_image_ids_matching_compares_exif_dates_else_mtimes(tmp_path):
    db = Database(tmp_path)
    january = datetime(2024, 1, 15)
    with db.session() as session:
        session.add_all([_image("/a.jpg", "h1", taken_at=january), _image("/b.jpg", "h2")])
        session.commit()
    assert db.image_ids_matching(after=datetime(2024, 1, 1), before=datetime(2024, 2, 1)) == [1]
    assert db.image_ids_matching(before=datetime(2000, 1, 1)) == [2]  # mtime 0: 1970
    db.close()


def test_unlinking_a_corpus_file_deletes_only_texts_no_other_file_holds(tmp_path):
    db = Database(tmp_path)
    with db.session() as session:
        shared = TextRow(text="shared", text_hash="s", source="/a.txt", record="1")
        alone = TextRow(text="alone", text_hash="o", source="/a.txt", record="2")
        session.add_all([shared, alone])
        session.flush()
        session.add_all(
            [
                TextSource(text_id=shared.id, source="/a.txt", record="1"),
                TextSource(text_id=alone.id, source="/a.txt", record="2"),
                TextSource(text_id=shared.id, source="/b.txt", record="9"),
            ]
        )
        Database.mark_damaged(session, "texts", [alone.id])
        session.commit()
        assert Database.text_ids_of_source(session, "/a.txt") == {shared.id, alone.id}
        orphans = Database.unlink_texts(session, "/a.txt", [shared.id, alone.id])
        session.commit()
        assert orphans == [alone.id]
        assert Database.text_ids_by_hash(session) == {"s": shared.id}
        assert Database.text_ids_of_source(session, "/a.txt") == set()
    assert db.damaged_ids("texts") == []  # the deleted text's damaged mark went with it
    assert db.text_ids_under(("/b.txt",)) == [shared.id]
    assert db.text_ids_under(("/a.txt",)) == [shared.id]  # its first source stays on the row
    db.close()
