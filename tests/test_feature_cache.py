"""The re-ranker's image features kept by the index (retrieval/feature_cache.py): written for
every image, read by text searches with that re-ranker only, and never left with a row
missing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import make_images, random_reranker, run_xmr

QUERIES = ("a red square", "green circles on blue", "two small shapes")


def _reranker_for(encoder, seed):
    """A random conv-stem re-ranker that reads the tiny encoder's tokens."""
    return random_reranker(
        dim=encoder.dim,
        text_len=encoder.context_length,
        image_tokens=encoder.image_token_shape[0],
        seed=seed,
        image_stem="conv",
        token_alignment=True,
    )


def _index(index_dir, encoder, folder, reranker):
    """index_folders with `reranker` loaded on demand (None: keep no features)."""
    from xmr.indexer.images import IndexOptions, index_folders
    from xmr.retrieval.library import Library

    with Library.open_or_create(index_dir, encoder) as library:
        return index_folders(
            library, encoder, [folder], IndexOptions(workers=0), reranker=lambda: reranker
        )


def _live_ids(library):
    return np.asarray(library.db.ids("images"), dtype=np.int64)


def _ranked(library, encoder, reranker, use_features: bool):
    """(ids, final scores) of all 12 stage-1 candidates of each query, best first."""
    from xmr.retrieval.searcher import Searcher

    kept = library.images.features
    library.images.features = kept if use_features else None
    try:
        searcher = Searcher(library, encoder, reranker)
        out = []
        for text in QUERIES:
            hits = searcher.search(searcher.text_query(text), "images", k=12, candidates=12)
            out.append(([h.id for h in hits], np.array([h.score for h in hits])))
        return out
    finally:
        library.images.features = kept


def test_kept_features_are_the_stem_of_every_image_and_rank_as_recomputing_would(tmp_path, encoder):
    from xmr.retrieval.library import Library

    make_images(tmp_path / "imgs", 30)
    reranker = _reranker_for(encoder, seed=3)
    _index(tmp_path / "idx", encoder, tmp_path / "imgs", reranker)
    with Library.open(tmp_path / "idx") as library:
        features = library.images.features
        assert features is not None and features.serves(reranker)
        ids = _live_ids(library)
        assert len(ids) == 30
        expected = reranker.image_features(library.images.tokens.read(ids))  # (30, 16, 32)
        np.testing.assert_allclose(features.read(ids), expected, atol=2e-3)
        cached = _ranked(library, encoder, reranker, use_features=True)
        recomputed = _ranked(library, encoder, reranker, use_features=False)
        for (ids_a, scores_a), (ids_b, scores_b) in zip(cached, recomputed, strict=True):
            assert ids_a == ids_b
            np.testing.assert_allclose(scores_a, scores_b, rtol=1e-3, atol=1e-3)
        top = cached[0][0][0]
    # The search really reads the kept rows: change the top hit's, and only its score moves.
    with Library.open(tmp_path / "idx", writable=True) as library:
        library.images.features.store.write(np.array([top]), np.zeros((1, 16, 32), np.float16))
    with Library.open(tmp_path / "idx") as library:
        ids_c, scores_c = _ranked(library, encoder, reranker, use_features=True)[0]
    before = dict(zip(*cached[0], strict=True))
    after = dict(zip(ids_c, scores_c, strict=True))
    assert after.get(top) != pytest.approx(before[top], abs=1e-3)
    assert all(after[i] == pytest.approx(before[i], abs=1e-3) for i in after if i != top)


def test_another_reranker_recomputes_instead_of_reading_the_kept_features(tmp_path, encoder):
    from xmr.retrieval.library import Library

    make_images(tmp_path / "imgs", 20)
    _index(tmp_path / "idx", encoder, tmp_path / "imgs", _reranker_for(encoder, seed=3))
    other = _reranker_for(encoder, seed=4)
    with Library.open(tmp_path / "idx") as library:
        assert not library.images.features.serves(other)
        as_searched = _ranked(library, encoder, other, use_features=True)
        recomputed = _ranked(library, encoder, other, use_features=False)
    for (ids_a, scores_a), (ids_b, scores_b) in zip(as_searched, recomputed, strict=True):
        assert ids_a == ids_b
        np.testing.assert_allclose(scores_a, scores_b, rtol=1e-6, atol=1e-6)


def test_features_are_dropped_by_a_run_without_the_reranker_and_refilled_by_one_with_it(
    tmp_path, encoder
):
    from xmr.retrieval.feature_cache import FEATURES_FILE, MANIFEST_KEY
    from xmr.retrieval.library import Library

    folder, index_dir = tmp_path / "imgs", tmp_path / "idx"
    make_images(folder, 10)
    reranker = _reranker_for(encoder, seed=3)
    _index(index_dir, encoder, folder, reranker)
    assert MANIFEST_KEY in json.loads((index_dir / "manifest.json").read_text())

    # New images without the re-ranker: their rows would be missing, so the cache goes.
    make_images(folder / "more", 3, start_seed=50)
    _index(index_dir, encoder, folder, None)
    assert MANIFEST_KEY not in json.loads((index_dir / "manifest.json").read_text())
    assert not (index_dir / FEATURES_FILE).exists()
    with Library.open(index_dir) as library:
        assert library.images.features is None

    # With it again (and a duplicate file): every image's row, old ones included.
    make_images(folder / "later", 2, start_seed=80)
    shutil.copy(folder / "img0001.png", folder / "copy_of_1.png")
    _index(index_dir, encoder, folder, reranker)
    # A duplicate alone needs no encoder, and so no re-ranker either: its twin's row is copied.
    shutil.copy(folder / "img0002.png", folder / "copy_of_2.png")

    def must_not_load():
        raise AssertionError("nothing to embed, yet the re-ranker was loaded")

    from xmr.indexer.images import IndexOptions, index_folders

    with Library.open_or_create(index_dir, encoder) as library:
        summary = index_folders(
            library, encoder, [folder], IndexOptions(workers=0), reranker=must_not_load
        )
    assert summary.duplicates == 1
    with Library.open(index_dir) as library:
        ids = _live_ids(library)
        assert len(ids) == 10 + 3 + 2 + 2
        expected = reranker.image_features(library.images.tokens.read(ids))
        np.testing.assert_allclose(library.images.features.read(ids), expected, atol=2e-3)


def test_a_run_with_nothing_to_embed_refreshes_features_only_when_the_reranker_changed(
    tmp_path, encoder
):
    from xmr.indexer.images import IndexOptions, index_folders
    from xmr.retrieval.library import Library

    folder, index_dir = tmp_path / "imgs", tmp_path / "idx"
    make_images(folder, 8)
    old, new = _reranker_for(encoder, seed=3), _reranker_for(encoder, seed=4)
    _index(index_dir, encoder, folder, old)
    loads = []

    def load(reranker):
        def loader():
            loads.append(reranker.name)
            return reranker

        return loader

    def run(reranker):
        with Library.open_or_create(index_dir, encoder) as library:
            return index_folders(
                library,
                encoder,
                [folder],
                IndexOptions(workers=0),
                reranker=load(reranker),
                reranker_fingerprint=reranker.fingerprint,
            )

    assert run(old).unchanged == 8 and loads == []  # the kept features are old's: no load
    summary = run(new)  # the re-ranker changed (a new version shipped): refill, no embedding
    assert (summary.new, summary.unchanged, len(loads)) == (0, 8, 1)
    with Library.open(index_dir) as library:
        assert library.images.features.serves(new) and not library.images.features.serves(old)
        ids = _live_ids(library)
        expected = new.image_features(library.images.tokens.read(ids))
        np.testing.assert_allclose(library.images.features.read(ids), expected, atol=2e-3)
    run(new)
    assert len(loads) == 1  # now current: the next run loads nothing


def test_a_saved_rerankers_fingerprint_comes_from_its_files_and_ignores_calibration(tmp_path):
    import torch

    from xmr.retrieval.reranker import load_reranker, save_reranker
    from xmr.retrieval.reranker_files import CONFIG_FILE, folder_fingerprint

    model = random_reranker(image_stem="conv").model
    save_reranker(model, tmp_path / "a")
    loaded = load_reranker(tmp_path / "a")
    assert loaded.fingerprint == folder_fingerprint(tmp_path / "a")
    config = json.loads((tmp_path / "a" / CONFIG_FILE).read_text())
    config["stage1_weight"] = 42.0  # recalibrated: the image features are the same
    (tmp_path / "a" / CONFIG_FILE).write_text(json.dumps(config))
    assert folder_fingerprint(tmp_path / "a") == loaded.fingerprint
    with torch.no_grad():
        model.image_blocks[0].conv.weight[0, 0, 0, 0] += 1e-3  # one stem weight moves
    save_reranker(model, tmp_path / "b")
    assert folder_fingerprint(tmp_path / "b") != loaded.fingerprint


def test_xmr_index_keeps_the_models_own_reranker_features_unless_told_none(tmp_path):
    from xmr.retrieval.encoder import load_encoder
    from xmr.retrieval.reranker import resolve_reranker

    folder, index_dir = tmp_path / "imgs", tmp_path / "idx"
    make_images(folder, 6)
    result = run_xmr("index", folder, "--model", "xmr-tiny", "--index", index_dir, "-q")
    assert result.returncode == 0, result.stderr
    info = run_xmr("info", "--index", index_dir, "--json")
    entry = json.loads(info.stdout)["reranker_features"]
    shipped = resolve_reranker("auto", load_encoder("xmr-tiny", "cpu"), "cpu")
    assert entry["fingerprint"] == shipped.fingerprint
    assert entry["shape"] == [64, shipped.config.width]

    # A missing re-ranker folder is refused by name before anything changes.
    make_images(folder / "more", 1, start_seed=40)
    result = run_xmr("index", folder, "--index", index_dir, "--reranker", tmp_path / "nope")
    assert result.returncode != 0
    assert "nope does not exist" in result.stderr and "Traceback" not in result.stderr
    result = run_xmr("index", folder, "--index", index_dir, "--reranker", "none", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["new"] == 1
    assert "reranker_features" not in json.loads((index_dir / "manifest.json").read_text())
    result = run_xmr("search", "a red square", "--index", index_dir, "--json")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == 7
    # The next plain run has nothing to embed, yet fills the features back for all 7.
    result = run_xmr("index", folder, "--index", index_dir, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["new"] == 0
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert manifest["reranker_features"]["fingerprint"] == shipped.fingerprint
