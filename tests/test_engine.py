"""The engine facade: loads only what a query needs, follows writers, and says (in
notices, never prints) what a person should know about an answer."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import (
    besides_random_weights,
    index_with,
    indexed_paths,
    make_images,
    random_reranker,
)

from xmr.engine.engine import Engine
from xmr.engine.query_input import QueryInput
from xmr.retrieval.errors import InputError, ItemNotFound


@pytest.fixture
def photo_index(encoder, tmp_path):
    folder = tmp_path / "photos"
    make_images(folder, 12)
    index_dir = tmp_path / "index"
    index_with(index_dir, encoder, [folder])
    return folder, index_dir


def test_a_text_query_loads_the_text_tower_only(tmp_path, monkeypatch):
    """xmr-tiny on the PyTorch path: a text query builds the text tower (and the
    re-ranker); the first image query loads both towers, which then serve text queries as
    well. (The ONNX path's loading: tests/test_onnx_query.py.)"""
    from xmr.retrieval.encoder import load_encoder
    from xmr.training.corpus import make_corpus

    monkeypatch.setenv("XMR_ONNX", "0")

    corpus = make_corpus(tmp_path / "scenes", 12, seed=99)
    index_dir = tmp_path / "index"
    index_with(index_dir, load_encoder("xmr-tiny", "cpu"), [corpus.images_dir])
    engine = Engine(index_dir)
    engine.info()
    assert engine.models.loaded == []  # info needs no model at all
    text = "A big orange star is on the left of a little blue square."
    answer = engine.search(text, k=3)
    assert answer.reranked and len(answer.hits) == 3
    assert engine.models.loaded == ["text tower", "xmr-tiny/reranker"]
    first = [h.id for h in answer.hits]
    indexed = sorted(corpus.images_dir.iterdir())[4]
    engine.search(QueryInput(image_path=indexed), k=3)  # its stored vector: no image tower
    assert engine.models.loaded[0] == "text tower"
    new = make_corpus(tmp_path / "other", 1, seed=98).images_dir
    engine.search(QueryInput(image_path=next(new.iterdir())), k=3)
    assert engine.models.loaded[0] == "both towers"
    assert [h.id for h in engine.search(text, k=3).hits] == first  # same answer either way


def test_the_engine_follows_writers_without_reopening_by_hand(encoder, photo_index, tmp_path):
    folder, index_dir = photo_index
    engine = Engine(index_dir)

    def paths():
        return {h.path for h in engine.search("anything", k=100).hits}

    assert paths() == set(indexed_paths(index_dir))
    added = make_images(folder / "more", 3, start_seed=400)
    index_with(index_dir, encoder, [folder])  # another writer, same process
    assert paths() == set(indexed_paths(index_dir)) and {str(p) for p in added} <= paths()
    gone = folder / "img0002.png"
    gone_id = indexed_paths(index_dir)[str(gone)]
    gone.unlink()
    index_with(index_dir, encoder, [folder])
    assert str(gone) not in paths() and len(paths()) == 14
    with pytest.raises(ItemNotFound):
        engine.search(QueryInput(like=(gone_id,)))
    before = [h.id for h in engine.search("a query", k=5).hits]
    engine.compact(index_type="hnsw")  # a new FAISS file of another type: read again
    assert engine.info()["index"]["images"]["type"] == "hnsw"
    assert [h.id for h in engine.search("a query", k=5).hits] == before


def test_notices_say_what_an_answer_cannot_show(encoder, tmp_path, photo_index):
    empty = tmp_path / "empty"
    (tmp_path / "nothing").mkdir()
    index_with(empty, encoder, [tmp_path / "nothing"])
    answer = Engine(empty).search("a dog")
    assert answer.hits == []
    assert besides_random_weights(answer.notices) == ["the index holds no images yet"]
    folder, index_dir = photo_index
    engine = Engine(index_dir)
    answer = engine.search("a dog", ext="gif")
    assert answer.hits == []
    assert besides_random_weights(answer.notices) == ["no images match the filter"]
    answer = engine.search("a dog", target="texts")
    assert besides_random_weights(answer.notices) == ["the index holds no texts yet"]
    notices = engine.search("a dog").notices
    assert notices == [
        f"{engine.models.spec.canonical} has random weights; its results mean nothing (use it "
        "for tests and speed measurements only)"
    ]


def test_rerank_depth_is_capped_with_a_notice(encoder, photo_index, tmp_path, monkeypatch):
    """A query for more results than stage 2 may read re-ranks the head only: those come
    first in the re-ranker's order, the rest follow in stage-1 order with stage-1 scores."""
    from xmr.retrieval import searcher
    from xmr.retrieval.reranker import save_reranker

    folder, index_dir = photo_index
    n_tokens, dim = encoder.image_token_shape
    runtime = random_reranker(dim, encoder.context_length, n_tokens, seed=3)
    save_reranker(runtime.model, tmp_path / "rr")
    monkeypatch.setattr(searcher, "MAX_RERANK_DEPTH", 4)
    engine = Engine(index_dir, reranker=str(tmp_path / "rr"))
    answer = engine.search("a red square", k=9)
    assert answer.reranked and len(answer.hits) == 9
    assert besides_random_weights(answer.notices) == [
        "re-ranked the top 4 of 12 candidates; results past rank 4 are in stage-1 order"
    ]
    head, tail = answer.hits[:4], answer.hits[4:]
    plain = Engine(index_dir, reranker="none").search("a red square", k=12).hits
    assert {h.id for h in head} == {h.id for h in plain[:4]}  # re-ordered, never added to
    assert [h.score for h in head] == sorted((h.score for h in head), reverse=True)
    assert [h.id for h in tail] == [h.id for h in plain[4:9]]
    assert all(h.score == h.stage1_score for h in tail)


def test_a_query_is_required(photo_index):
    _, index_dir = photo_index
    engine = Engine(index_dir)
    with pytest.raises(InputError, match="give a query"):
        engine.search(QueryInput())
    with pytest.raises(InputError, match="unknown target"):
        engine.search("a", target="videos")


def test_an_upload_is_answered_as_its_file_would_be(photo_index, tmp_path):
    """Bytes of an indexed image are that image (stored vector, itself left out); a path
    hint names which copy is the query; new bytes are decoded and encoded."""
    folder, index_dir = photo_index
    shutil.copy(folder / "img0004.png", tmp_path / "elsewhere.png")
    engine = Engine(index_dir)
    for path in (folder / "img0004.png", folder / "img0007.png", tmp_path / "elsewhere.png"):
        by_file = engine.search(QueryInput(image_path=path), k=5)
        hint = str(path.resolve())
        by_bytes = engine.search(QueryInput(image_bytes=path.read_bytes(), path_hint=hint), k=5)
        assert [h.id for h in by_bytes.hits] == [h.id for h in by_file.hits]
        np.testing.assert_allclose(
            [h.score for h in by_bytes.hits], [h.score for h in by_file.hits], atol=1e-5
        )
    # Without a hint (a browser upload), an indexed image's bytes are that image.
    anonymous = engine.search(QueryInput(image_bytes=(folder / "img0007.png").read_bytes()))
    assert str(folder / "img0007.png") not in {h.path for h in anonymous.hits}
