"""Searching: text->image and image->image order against brute force, the query image's
exclusion, duplicates, query files outside the index, and k."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import bump_mtime, index_with, indexed_paths, make_image, make_images, stored_vectors
from PIL import Image

from xmr.retrieval.errors import InputError
from xmr.retrieval.library import Library
from xmr.retrieval.searcher import Searcher


@pytest.fixture
def library_with_twin(encoder, tmp_path):
    """Ten images, one of which (img0003.png) has an exact copy (twin.png)."""
    folder = tmp_path / "photos"
    make_images(folder, 10)
    shutil.copy(folder / "img0003.png", folder / "twin.png")
    index_dir = tmp_path / "index"
    index_with(index_dir, encoder, [folder])
    return folder, index_dir


def _brute_force(index_dir, query: np.ndarray) -> list[tuple[str, float]]:
    """Every indexed image by exact inner product with the query, best first."""
    paths = indexed_paths(index_dir)
    names = sorted(paths)
    scores = stored_vectors(index_dir, [paths[n] for n in names]) @ query
    order = np.argsort(-scores, kind="stable")
    return [(names[i], float(scores[i])) for i in order]


def test_text_to_image_order_matches_brute_force(encoder, library_with_twin):
    _, index_dir = library_with_twin
    with Library.open(index_dir) as library:
        searcher = Searcher(library, encoder)
        query = searcher.text_query("a red square")
        hits = searcher.search(query, "images", k=5)
    np.testing.assert_allclose(query.vector, encoder.encode_texts(["a red square"]).vectors[0])
    expected = _brute_force(index_dir, query.vector)[:5]
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([h.stage1_score for h in hits], [s for _, s in expected], atol=1e-5)
    # Paths agree except where two images tie exactly (the twin and its original).
    for hit, (path, score) in zip(hits, expected, strict=True):
        assert hit.path == path or abs(hit.stage1_score - score) < 1e-6
    assert all(h.kind == "image" and h.text is None for h in hits)


def test_image_query_excludes_itself_and_finds_its_twin_first(encoder, library_with_twin):
    folder, index_dir = library_with_twin
    query_path = folder / "img0003.png"
    with Library.open(index_dir) as library:
        searcher = Searcher(library, encoder)
        query = searcher.image_query(query_path)
        hits = searcher.search(query, "images", k=20)
    paths = [h.path for h in hits]
    assert str(query_path) not in paths
    assert len(hits) == 10  # everything but the query itself
    assert paths[0] == str(folder / "twin.png")
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[1].score < 0.9999
    # The query reused the stored vector (no re-encoding of an unchanged indexed file).
    stored = stored_vectors(index_dir, [indexed_paths(index_dir)[str(query_path)]])[0]
    np.testing.assert_array_equal(query.vector, stored)


def test_image_query_from_outside_the_index_is_encoded(encoder, library_with_twin, tmp_path):
    folder, index_dir = library_with_twin
    outside = tmp_path / "elsewhere" / "same-as-5.png"
    outside.parent.mkdir()
    # The same pixels in other bytes: an exact copy would count as the indexed image
    # itself (left out, as an upload of it is); this one is decoded and encoded.
    Image.open(folder / "img0005.png").save(outside, compress_level=0)
    assert outside.read_bytes() != (folder / "img0005.png").read_bytes()
    new_picture = make_image(tmp_path / "elsewhere" / "new.png", seed=4242)
    with Library.open(index_dir) as library:
        searcher = Searcher(library, encoder)
        hits = searcher.search(searcher.image_query(outside), "images", k=3)
        assert hits[0].path == str(folder / "img0005.png")  # decoded the same way as indexing
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        query = searcher.image_query(new_picture)
        assert query.exclude_ids == ()
        hits = searcher.search(query, "images", k=11)
    assert len(hits) == 11  # nothing excluded
    expected = _brute_force(index_dir, query.vector)
    np.testing.assert_allclose([h.stage1_score for h in hits], [s for _, s in expected], atol=1e-5)


def test_modified_but_not_reindexed_query_image_is_re_encoded(encoder, library_with_twin):
    folder, index_dir = library_with_twin
    target = folder / "img0008.png"
    old_id = indexed_paths(index_dir)[str(target)]
    make_image(target, seed=777)
    bump_mtime(target)
    with Library.open(index_dir) as library:
        searcher = Searcher(library, encoder)
        query = searcher.image_query(target)
        hits = searcher.search(query, "images", k=20)
    old_vector = stored_vectors(index_dir, [old_id])[0]
    assert float(query.vector @ old_vector) < 0.9999  # the file's new pixels, not the old vector
    assert old_id not in [h.id for h in hits]  # its own (stale) entry is still left out


def test_k_and_small_indexes(encoder, library_with_twin, tmp_path):
    _, index_dir = library_with_twin
    with Library.open(index_dir) as library:
        searcher = Searcher(library, encoder)
        query = searcher.text_query("anything")
        for k in (1, 3, 11, 50):
            hits = searcher.search(query, "images", k=k)
            assert len(hits) == min(k, 11)
            assert len({h.id for h in hits}) == len(hits)
        assert searcher.search(query, "texts", k=5) == []  # no corpus yet
        with pytest.raises(InputError, match="does not exist"):
            searcher.image_query(tmp_path / "missing.png")
        not_image = tmp_path / "notes.png"
        not_image.write_text("hello")
        with pytest.raises(InputError, match="cannot use .* as a query: not an image"):
            searcher.image_query(not_image)


def test_search_allowed_ids_filter_inside_faiss(encoder, library_with_twin):
    _, index_dir = library_with_twin
    paths = indexed_paths(index_dir)
    allowed = sorted(paths.values())[::3]
    with Library.open(index_dir) as library:
        searcher = Searcher(library, encoder)
        hits = searcher.search(searcher.text_query("x"), "images", k=3, allowed_ids=allowed)
    assert len(hits) == 3 and {h.id for h in hits} <= set(allowed)
