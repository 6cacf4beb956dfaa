"""Indexing image folders through the library: first run, incremental re-runs, bad files,
scanning rules. Real tiny open_clip model, real FAISS and SQLite, real image files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    MAX_PIXELS,
    bump_mtime,
    db_rows,
    faiss_ids,
    index_with,
    indexed_paths,
    make_bad_files,
    make_image,
    make_images,
    stored_vectors,
)
from PIL import Image

from xmr.retrieval.library import Library


def _consistent(index_dir: Path) -> dict[str, int]:
    """Assert DB, FAISS and vector store agree; return path -> id of indexed images."""
    paths = indexed_paths(index_dir)
    assert faiss_ids(index_dir) == set(paths.values())
    assert len(set(paths.values())) == len(paths)
    if paths:
        vectors = stored_vectors(index_dir, paths.values())
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    return paths


# -- first run ---------------------------------------------------------------------------
def test_first_run_indexes_every_image(encoder, image_folder, tmp_path):
    index_dir = tmp_path / "index"
    summary = index_with(index_dir, encoder, [image_folder])
    files = sorted(str(p) for p in image_folder.rglob("*") if p.is_file())
    assert (summary.new, summary.encoded, summary.unchanged) == (12, 12, 0)
    assert summary.skipped == []
    paths = _consistent(index_dir)
    assert sorted(paths) == files
    rows = {r["path"]: r for r in db_rows(index_dir)}
    sample = rows[str(image_folder / "img0000.png")]
    assert (sample["width"], sample["height"], sample["format"]) == (48, 40, "PNG")
    assert rows[str(image_folder / "trip" / "img0000.jpg")]["format"] == "JPEG"
    # The stored vector is the encoder's vector for that file, as searching would compute it.
    from xmr.retrieval.imageio import decode_image

    pixels, *_ = decode_image(str(image_folder / "img0003.png"), encoder.preprocess)
    want = encoder.encode_images(pixels[None]).vectors[0]
    got = stored_vectors(index_dir, [paths[str(image_folder / "img0003.png")]])[0]
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_every_image_is_its_own_nearest_neighbour(encoder, image_folder, tmp_path):
    from xmr.retrieval.searcher import Query, Searcher

    index_dir = tmp_path / "index"
    index_with(index_dir, encoder, [image_folder])
    paths = indexed_paths(index_dir)
    with Library.open(index_dir) as library:
        ids = np.array(sorted(paths.values()))
        vectors = library.images.vectors.read(ids)
        scores, top = library.images.index.search(vectors, 3)
        assert top[:, 0].tolist() == ids.tolist()
        np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
        assert (scores[:, 1] < scores[:, 0] - 1e-6).all()  # no two images are the same
        searcher = Searcher(library, encoder)
        for item_id, vector in zip(ids, vectors, strict=True):
            hits = searcher.search(Query(vector, None, None, "image"), "images", k=2)
            assert hits[0].id == item_id and hits[0].path in paths
            assert paths[hits[0].path] == item_id


def test_parallel_decoding_gives_the_same_index(encoder, tmp_path):
    """Worker processes (more files than a batch) must give the same vectors and skips."""
    folder = tmp_path / "photos"
    make_images(folder, 14)
    (folder / "empty.png").write_bytes(b"")
    serial = index_with(tmp_path / "serial", encoder, [folder], batch_size=4, workers=0)
    parallel = index_with(tmp_path / "parallel", encoder, [folder], batch_size=4, workers=2)
    assert (parallel.new, parallel.encoded, len(parallel.skipped)) == (14, 14, 1)
    assert parallel.skipped == serial.skipped
    a, b = indexed_paths(tmp_path / "serial"), indexed_paths(tmp_path / "parallel")
    assert sorted(a) == sorted(b)
    keys = sorted(a)
    np.testing.assert_allclose(
        stored_vectors(tmp_path / "serial", [a[k] for k in keys]),
        stored_vectors(tmp_path / "parallel", [b[k] for k in keys]),
        atol=1e-6,
    )


# -- incremental re-runs -----------------------------------------------------------------
@pytest.fixture
def indexed(encoder, image_folder, tmp_path):
    index_dir = tmp_path / "index"
    index_with(index_dir, encoder, [image_folder])
    return image_folder, index_dir


def test_unchanged_rerun_does_no_work_and_never_loads_the_model(indexed, tiny_spec):
    from xmr.indexer.images import IndexOptions, index_folders
    from xmr.retrieval.encoder import LazyEncoder

    folder, index_dir = indexed
    before = _consistent(index_dir)
    lazy = LazyEncoder(tiny_spec, "cpu")
    with Library.open_or_create(index_dir, lazy) as library:
        summary = index_folders(library, lazy, [folder], IndexOptions(workers=0))
    assert not lazy.loaded
    assert (summary.encoded, summary.new, summary.unchanged) == (0, 0, 12)
    assert (summary.touched, summary.moved, summary.removed, summary.updated) == (0, 0, 0, 0)
    assert _consistent(index_dir) == before


def test_moved_file_keeps_its_id_and_vector(indexed, encoder):
    folder, index_dir = indexed
    before = indexed_paths(index_dir)
    old = folder / "img0002.png"
    new = folder / "trip" / "renamed.png"
    old_id = before[str(old)]
    old_vector = stored_vectors(index_dir, [old_id])[0]
    old.rename(new)

    summary = index_with(index_dir, encoder, [folder])
    assert (summary.moved, summary.encoded, summary.new, summary.removed) == (1, 0, 0, 0)
    assert summary.unchanged == 11
    after = _consistent(index_dir)
    assert str(old) not in after
    assert after[str(new)] == old_id
    np.testing.assert_array_equal(stored_vectors(index_dir, [old_id])[0], old_vector)
    assert len(after) == 12


def test_duplicate_file_reuses_the_vector(indexed, encoder):
    folder, index_dir = indexed
    original = folder / "img0005.png"
    copy = folder / "copy-of-5.png"
    shutil.copy2(original, copy)

    summary = index_with(index_dir, encoder, [folder])
    assert (summary.duplicates, summary.encoded, summary.new, summary.moved) == (1, 0, 0, 0)
    paths = _consistent(index_dir)
    assert len(paths) == 13 and paths[str(copy)] != paths[str(original)]
    a, b = stored_vectors(index_dir, [paths[str(original)], paths[str(copy)]])
    np.testing.assert_array_equal(a, b)


def test_duplicates_within_one_run_are_encoded_once(encoder, tmp_path):
    folder = tmp_path / "photos"
    make_images(folder, 3)
    for name in ("a.png", "b.png"):
        shutil.copy(folder / "img0001.png", folder / name)
    summary = index_with(tmp_path / "index", encoder, [folder])
    assert (summary.new, summary.duplicates, summary.encoded) == (3, 2, 3)
    paths = _consistent(tmp_path / "index")
    vectors = stored_vectors(
        tmp_path / "index", [paths[str(folder / n)] for n in ("a.png", "b.png")]
    )
    want = stored_vectors(tmp_path / "index", [paths[str(folder / "img0001.png")]])
    np.testing.assert_array_equal(vectors, np.repeat(want, 2, axis=0))


def test_modified_file_is_re_embedded_and_its_old_vector_is_gone(indexed, encoder):
    from xmr.retrieval.searcher import Query, Searcher

    folder, index_dir = indexed
    target = folder / "img0007.png"
    old_id = indexed_paths(index_dir)[str(target)]
    old_vector = stored_vectors(index_dir, [old_id])[0]
    make_image(target, seed=9999)  # new content, same path
    bump_mtime(target)

    summary = index_with(index_dir, encoder, [folder])
    assert (summary.updated, summary.encoded, summary.new, summary.unchanged) == (1, 1, 0, 11)
    paths = _consistent(index_dir)
    new_id = paths[str(target)]
    assert new_id != old_id and old_id not in faiss_ids(index_dir)
    assert old_id not in {r["id"] for r in db_rows(index_dir)}
    new_vector = stored_vectors(index_dir, [new_id])[0]
    assert float(new_vector @ old_vector) < 0.9999
    with Library.open(index_dir) as library:
        hits = Searcher(library, encoder).search(Query(old_vector, None, None, "image"), "images")
    assert old_id not in [h.id for h in hits]
    assert all(h.score < 0.9999 for h in hits)  # nothing answers with the old vector


def test_touched_file_needs_no_encoder(indexed, encoder):
    folder, index_dir = indexed
    target = folder / "trip" / "img0001.jpg"
    before = indexed_paths(index_dir)
    bump_mtime(target)
    summary = index_with(index_dir, encoder, [folder])
    assert (summary.touched, summary.encoded, summary.updated, summary.unchanged) == (1, 0, 0, 11)
    assert indexed_paths(index_dir) == before
    row = next(r for r in db_rows(index_dir) if r["path"] == str(target))
    assert row["mtime_ns"] == target.stat().st_mtime_ns
    # And the stat is stored: the next run sees the file as unchanged.
    again = index_with(index_dir, encoder, [folder])
    assert (again.touched, again.unchanged) == (0, 12)


def test_deleted_files_leave_db_faiss_and_results(indexed, encoder):
    from xmr.retrieval.searcher import Query, Searcher
    from xmr.retrieval.stats import index_info

    folder, index_dir = indexed
    before = indexed_paths(index_dir)
    targets = [Path(p) for p in sorted(before)[3:6]]  # removed in one bulk pass
    gone_ids = [before[str(t)] for t in targets]
    gone_vector = stored_vectors(index_dir, gone_ids[:1])[0]
    for target in targets:
        target.unlink()

    summary = index_with(index_dir, encoder, [folder])
    assert (summary.removed, summary.encoded, summary.unchanged) == (3, 0, 9)
    paths = _consistent(index_dir)
    assert not {str(t) for t in targets} & set(paths)
    assert not set(gone_ids) & set(paths.values())
    assert not {str(t) for t in targets} & {r["path"] for r in db_rows(index_dir)}
    with Library.open(index_dir) as library:
        info = index_info(library)
        hits = Searcher(library, encoder).search(
            Query(gone_vector, None, None, "image"), "images", k=20
        )
    assert (info["images"], info["faiss"]["images"]) == (9, 9)
    assert len(hits) == 9 and not {str(t) for t in targets} & {h.path for h in hits}


def test_compact_frees_deleted_records_and_keeps_live_ones(indexed, encoder, cli):
    import json

    folder, index_dir = indexed
    before = indexed_paths(index_dir)
    doomed = sorted(before)[:6]
    live_ids = [before[p] for p in sorted(before)[6:]]
    with Library.open(index_dir) as library:
        live_tokens = library.images.tokens.read(np.asarray(live_ids))
        token_record = library.images.tokens.record_bytes
    live_vectors = stored_vectors(index_dir, live_ids)
    for path in doomed:
        Path(path).unlink()
    index_with(index_dir, encoder, [folder])

    result = cli("compact", "--index", index_dir, "--json")
    assert result.exit_code == 0, result.output
    freed = json.loads(result.stdout)["images"]["store_bytes_freed"]
    if _can_punch_holes(index_dir):
        # Whole 4 KiB blocks only: six dead 1 KiB token records hold at least one.
        assert 4096 <= freed <= 6 * (token_record + 4096)
    else:
        assert freed == 0
    with Library.open(index_dir) as library:  # live records are exactly what was written
        np.testing.assert_array_equal(library.images.tokens.read(np.asarray(live_ids)), live_tokens)
    np.testing.assert_array_equal(stored_vectors(index_dir, live_ids), live_vectors)
    assert _consistent(index_dir) == {p: before[p] for p in sorted(before)[6:]}
    shutil.copy(sorted(before)[6], folder / "copy_after_compact.png")  # writes still work
    summary = index_with(index_dir, encoder, [folder])
    assert summary.duplicates == 1 and len(_consistent(index_dir)) == 7


def _can_punch_holes(folder: Path) -> bool:
    from xmr.retrieval.arraystore import ArrayStore

    probe = ArrayStore(folder / "probe.bin", (4096,), "uint8")
    probe.write(np.arange(4), np.ones((4, 4096), np.uint8))
    freed = probe.release(np.array([0]))
    probe.path.unlink()
    return freed > 0


def test_indexing_one_folder_leaves_other_folders_alone(encoder, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_images(a, 3)
    make_images(b, 2, start_seed=50)
    index_dir = tmp_path / "index"
    index_with(index_dir, encoder, [a, b])
    (b / "img0001.png").unlink()
    summary = index_with(index_dir, encoder, [a])  # b is not looked at: nothing removed there
    assert (summary.unchanged, summary.removed) == (3, 0)
    assert len(_consistent(index_dir)) == 5
    summary = index_with(index_dir, encoder, [b])
    assert (summary.unchanged, summary.removed) == (1, 1)
    assert len(_consistent(index_dir)) == 4


# -- bad files ---------------------------------------------------------------------------
def test_bad_files_are_skipped_with_reasons(encoder, tmp_path):
    folder = tmp_path / "photos"
    good = make_images(folder, 5)
    expected = make_bad_files(folder)
    index_dir = tmp_path / "index"

    summary = index_with(index_dir, encoder, [folder], max_pixels=MAX_PIXELS)
    reasons = {Path(p).name: r for p, r in summary.skipped}
    assert set(reasons) == set(expected)
    for name, fragment in expected.items():
        assert fragment in reasons[name], (name, reasons[name])
    assert (summary.new, summary.encoded) == (5, 5)
    assert sorted(_consistent(index_dir)) == sorted(str(p) for p in good)
    skipped_rows = {Path(r["path"]).name: r for r in db_rows(index_dir) if r["state"] == "skipped"}
    assert set(skipped_rows) == set(expected)
    assert all(expected[n] in skipped_rows[n]["error"] for n in expected)

    # A re-run does not report them again as new skips.
    again = index_with(index_dir, encoder, [folder], max_pixels=MAX_PIXELS)
    assert again.skipped == [] and again.skipped_before == len(expected)
    assert (again.unchanged, again.encoded) == (5, 0)


def test_identical_bad_files_are_each_reported(encoder, tmp_path):
    """Two zero-byte files share a content hash; both must be skipped with a reason."""
    folder = tmp_path / "photos"
    make_images(folder, 2)
    for name in ("a.jpg", "b.jpg", "c.png"):
        (folder / name).write_bytes(b"")
    index_dir = tmp_path / "index"
    summary = index_with(index_dir, encoder, [folder])
    assert sorted(Path(p).name for p, _ in summary.skipped) == ["a.jpg", "b.jpg", "c.png"]
    assert all("empty file" in r for _, r in summary.skipped)
    again = index_with(index_dir, encoder, [folder])
    assert again.skipped == [] and again.skipped_before == 3


def test_a_fixed_bad_file_is_indexed_on_the_next_run(encoder, tmp_path):
    folder = tmp_path / "photos"
    make_images(folder, 2)
    broken = folder / "later.png"
    broken.write_bytes(b"")
    index_dir = tmp_path / "index"
    assert len(index_with(index_dir, encoder, [folder]).skipped) == 1
    make_image(broken, seed=500)
    summary = index_with(index_dir, encoder, [folder])
    assert summary.encoded == 1 and summary.skipped == []
    assert str(broken) in _consistent(index_dir)
    assert [r["state"] for r in db_rows(index_dir) if r["path"] == str(broken)] == ["indexed"]


@pytest.mark.skipif(
    os.geteuid() == 0, reason="running as root: chmod 000 does not stop root from reading"
)
def test_unreadable_file_is_skipped(encoder, tmp_path):
    folder = tmp_path / "photos"
    make_images(folder, 2)
    locked = make_image(folder / "locked.png", seed=80)
    locked.chmod(0)
    try:
        summary = index_with(tmp_path / "index", encoder, [folder])
    finally:
        locked.chmod(0o644)
    assert [(Path(p).name, r) for p, r in summary.skipped] == [("locked.png", "cannot read file")]
    assert summary.new == 2


def test_dangling_symlink_and_image_named_folder_do_not_break_a_run(encoder, tmp_path):
    """Unreadable entries that root cannot read either: a broken link, a folder called x.jpg."""
    folder = tmp_path / "photos"
    good = make_images(folder, 3)
    (folder / "broken.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (folder / "album.jpg").mkdir()
    make_image(folder / "album.jpg" / "inside.png", seed=81)
    summary = index_with(tmp_path / "index", encoder, [folder])
    paths = _consistent(tmp_path / "index")
    assert sorted(paths) == sorted([*map(str, good), str(folder / "album.jpg" / "inside.png")])
    assert summary.new == 4
    assert str(folder / "broken.jpg") not in {r["path"] for r in db_rows(tmp_path / "index")}


# -- scanning rules ----------------------------------------------------------------------
def test_exif_orientation_is_applied(encoder, tmp_path):
    """A camera file stored sideways with orientation 6 is embedded as a viewer shows it."""
    folder = tmp_path / "photos"
    raw = make_image(folder / "raw.png", seed=90, size=(48, 32))
    sideways = Image.open(raw)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    sideways.save(folder / "tagged.png", exif=exif)
    sideways.transpose(Image.Transpose.ROTATE_270).save(folder / "upright.png")
    with Image.open(folder / "tagged.png") as check:
        assert check.getexif().get(0x0112) == 6

    index_with(tmp_path / "index", encoder, [folder])
    paths = indexed_paths(tmp_path / "index")
    raw_v, tagged_v, upright_v = stored_vectors(
        tmp_path / "index",
        [paths[str(folder / n)] for n in ("raw.png", "tagged.png", "upright.png")],
    )
    np.testing.assert_allclose(tagged_v, upright_v, atol=1e-5)
    assert float(tagged_v @ raw_v) < 0.9999  # the rotation matters to this model


def test_hidden_files_and_folders_need_the_hidden_flag(encoder, tmp_path):
    folder = tmp_path / "photos"
    visible = make_images(folder, 2)
    make_image(folder / ".secret.png", seed=91)
    make_image(folder / ".cache" / "thumb.png", seed=92)
    summary = index_with(tmp_path / "index", encoder, [folder])
    assert summary.new == 2
    assert sorted(indexed_paths(tmp_path / "index")) == sorted(map(str, visible))

    summary = index_with(tmp_path / "index", encoder, [folder], include_hidden=True)
    assert (summary.new, summary.unchanged) == (2, 2)
    assert str(folder / ".cache" / "thumb.png") in indexed_paths(tmp_path / "index")
    # Leaving --hidden off again removes what only --hidden found.
    summary = index_with(tmp_path / "index", encoder, [folder])
    assert summary.removed == 2 and len(indexed_paths(tmp_path / "index")) == 2


def test_exclude_globs(encoder, tmp_path):
    folder = tmp_path / "photos"
    keep = make_images(folder, 2)
    keep += make_images(folder / "trips", 1, start_seed=10)
    make_image(folder / "thumbs" / "t.png", seed=93)
    make_image(folder / "trips" / "raw" / "r.png", seed=94)
    make_image(folder / "draft-1.png", seed=95)
    make_image(folder / "trips" / "scan.gif", seed=96)
    summary = index_with(
        tmp_path / "index",
        encoder,
        [folder],
        exclude=("thumbs", "trips/raw/*", "draft-*", "*.gif"),
    )
    assert summary.new == 3
    assert sorted(indexed_paths(tmp_path / "index")) == sorted(map(str, keep))


@pytest.mark.timeout(120)
def test_symlink_loops_neither_hang_nor_duplicate(encoder, tmp_path):
    folder = tmp_path / "photos"
    images = make_images(folder / "sub", 3)
    (folder / "sub" / "loop").symlink_to(folder)  # photos/sub/loop -> photos
    (folder / "self").symlink_to(".")  # photos/self -> photos
    (folder / "link.png").symlink_to(images[0])  # a second name for one file
    summary = index_with(tmp_path / "index", encoder, [folder], follow_links=True)
    paths = _consistent(tmp_path / "index")
    assert summary.new == 3 and len(paths) == 3
    real = sorted(os.path.realpath(p) for p in paths)
    assert real == sorted(str(p) for p in images)


def test_symlinked_folders_are_entered_only_when_asked(encoder, tmp_path):
    folder = tmp_path / "photos"
    own = make_images(folder, 2)
    elsewhere = make_images(tmp_path / "elsewhere", 3, start_seed=7)
    (folder / "album").symlink_to(tmp_path / "elsewhere")
    summary = index_with(tmp_path / "index", encoder, [folder])
    assert sorted(_consistent(tmp_path / "index")) == sorted(map(str, own))
    assert summary.links_not_followed == 1 and summary.new == 2

    summary = index_with(tmp_path / "index", encoder, [folder], follow_links=True)
    assert summary.new == 3 and summary.links_not_followed == 0
    linked = sorted(str(folder / "album" / p.name) for p in elsewhere)
    assert sorted(_consistent(tmp_path / "index")) == sorted([*map(str, own), *linked])


def test_pseudo_file_systems_are_never_entered(encoder, tmp_path):
    from xmr.indexer.scan import scan_folders
    from xmr.retrieval.errors import InputError

    with pytest.raises(InputError, match="proc pseudo file system"):
        list(scan_folders([Path("/proc")]))
    folder = tmp_path / "photos"
    own = make_images(folder, 2)
    (folder / "proc").symlink_to("/proc/self")  # cwd, root and fd lead back everywhere
    (folder / "sys").symlink_to("/sys")
    summary = index_with(tmp_path / "index", encoder, [folder], follow_links=True)
    assert sorted(_consistent(tmp_path / "index")) == sorted(map(str, own))
    entered = [n for n in summary.notices if "pseudo file system" in n]
    assert sorted(entered) == sorted(
        f"{folder / name}: a pseudo file system, not entered" for name in ("proc", "sys")
    )
