"""Pages (`offset=`), date order (`order=`) and the page's defaults (`/api/config`):
in the engine with a real re-ranker, and over HTTP against a real `xmr serve`."""

from __future__ import annotations

import io
import os
from datetime import datetime
from pathlib import Path
from urllib.parse import urlencode

import pytest
from conftest import Served, index_with, make_images, random_reranker
from PIL import Image

from xmr.engine.engine import Engine
from xmr.engine.request import DUPLICATE_THRESHOLD, PAGE_K, BadField, SearchRequest

N_IMAGES = 90
BASE = datetime(2021, 3, 1, 12, 0, 0).timestamp()


def _dated_images(folder: Path, n: int) -> dict[str, float]:
    """n distinct images whose modification times are hours apart, in an order unrelated
    to their names: path -> mtime."""
    paths = make_images(folder, n)
    times = {}
    for i, path in enumerate(paths):
        when = BASE + ((i * 37) % n) * 3600
        os.utime(path, (when, when))
        times[str(path)] = when
    return times


@pytest.fixture(scope="module")
def dated_index(tmp_path_factory, encoder):
    root = tmp_path_factory.mktemp("paging")
    times = _dated_images(root / "photos", N_IMAGES)
    index_with(root / "index", encoder, [root / "photos"])
    return root / "index", times


@pytest.fixture(scope="module")
def served(dated_index):
    server = Served(dated_index[0])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def reranked_engine(dated_index, encoder, tmp_path_factory):
    from xmr.retrieval.reranker import save_reranker

    n_tokens, dim = encoder.image_token_shape
    runtime = random_reranker(dim, encoder.context_length, n_tokens, seed=5)
    folder = tmp_path_factory.mktemp("rr")
    save_reranker(runtime.model, folder)
    return Engine(dated_index[0], reranker=str(folder))


def _ids(answer) -> list[int]:
    return [h.id for h in answer.hits]


# -- the engine -----------------------------------------------------------------------
def test_a_re_ranked_page_is_the_same_slice_of_one_bigger_request(reranked_engine):
    """Page 2 of 10 is results 11-20 of one k=20 request: same ids, scores and ranks,
    re-ranked the same way; and within the re-ranking depth every page slices the same
    ranking, so pages put side by side are one k=30 request."""
    engine = reranked_engine
    whole = engine.search("a red square", k=30, candidates=32)
    assert whole.reranked and len(whole.hits) == 30
    pages = [engine.search("a red square", k=10, offset=o, candidates=32) for o in (0, 10, 20)]
    assert [i for p in pages for i in _ids(p)] == _ids(whole)
    two = engine.search("a red square", k=20, candidates=32)
    assert _ids(pages[1]) == _ids(two)[10:20]
    assert [h.rank for h in pages[1].hits] == list(range(11, 21))
    assert [h.score for h in pages[1].hits] == [h.score for h in two.hits[10:20]]
    assert pages[1].page["rerank_depth"] == 32  # the candidates the re-ranker read
    assert pages[1].page["reranked_results"] == 20  # of the 20 ranked for this page
    assert all(h.reranker is not None for h in pages[1].hits)


def test_a_page_past_the_re_ranking_depth_says_how_deep_it_re_ranked(reranked_engine):
    engine = reranked_engine
    page = engine.search("a red square", k=10, offset=40, candidates=32)
    whole = engine.search("a red square", k=50, candidates=32)
    assert _ids(page) == _ids(whole)[40:50]
    assert page.page["rerank_depth"] == 50  # offset + k: deeper than the first pages
    assert page.as_dict()["page"]["more"] is True


def test_date_order_sorts_the_most_relevant_by_the_files_dates(dated_index, reranked_engine):
    _, times = dated_index
    engine = reranked_engine
    newest = engine.search("a red square", k=10, order="newest", candidates=32)
    relevant = engine.search("a red square", k=32, candidates=32)
    pool = {h.id: h.path for h in relevant.hits}
    assert newest.page["pool"] == 32
    dates = [times[h.path] for h in newest.hits]
    assert dates == sorted(dates, reverse=True)
    assert {h.id for h in newest.hits} <= set(pool)  # among the most relevant
    # the ten newest of the pool, by the files' own dates
    expected = sorted(pool.values(), key=lambda p: times[p], reverse=True)[:10]
    assert [h.path for h in newest.hits] == expected
    answer = newest.as_dict()
    for hit in answer["results"]:
        assert hit["date_from"] == "modified"
        assert datetime.fromisoformat(hit["date"]).timestamp() == times[hit["path"]]
    oldest = [
        engine.search("a red square", k=8, order="oldest", offset=o, candidates=32) for o in (0, 8)
    ]
    paths = [h.path for p in oldest for h in p.hits]
    assert paths == sorted(pool.values(), key=lambda p: times[p])[:16]  # pages of one order


def test_an_exif_date_comes_before_the_modification_time(tmp_path, encoder):
    folder = tmp_path / "photos"
    make_images(folder, 3)
    Image.open(folder / "img0000.png").convert("RGB").save(
        folder / "dated.jpg", exif=_exif_with_date("2001:02:03 04:05:06")
    )
    for path in folder.iterdir():
        os.utime(path, (BASE, BASE))
    index_with(tmp_path / "index", encoder, [folder])
    answer = Engine(tmp_path / "index").search("x", k=4, order="oldest").as_dict()
    first = answer["results"][0]
    assert first["path"].endswith("dated.jpg")
    assert (first["date"], first["date_from"]) == ("2001-02-03T04:05:06", "taken")


def _exif_with_date(text: str) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = text  # DateTimeOriginal, in the Exif IFD
    return exif.tobytes()


def test_offset_and_order_are_checked_at_the_edge():
    with pytest.raises(BadField, match="order"):
        SearchRequest(query="x", order="random")
    with pytest.raises(BadField, match="texts have no date"):
        SearchRequest(query="x", target="texts", order="newest")
    with pytest.raises(BadField, match="offset"):
        SearchRequest(query="x", offset=-1)
    with pytest.raises(BadField, match="offset"):
        SearchRequest(query="x", k=10, offset=9_991)  # offset + k past MAX_K


# -- over HTTP ------------------------------------------------------------------------
def _search(served, **fields) -> tuple[int, dict]:
    return served.json("/api/search?" + urlencode(fields))


def test_page_two_of_40_is_results_41_to_80_of_k_80(served):
    status, whole = _search(served, q="a blue circle", k=80)
    assert status == 200 and len(whole["results"]) == 80
    status, page = _search(served, q="a blue circle", k=40, offset=40)
    assert status == 200
    assert page["results"] == whole["results"][40:80]  # ids, ranks, scores, dates
    assert page["page"]["offset"] == 40 and page["page"]["more"] is True
    status, last = _search(served, q="a blue circle", k=40, offset=80)
    assert len(last["results"]) == N_IMAGES - 80 and last["page"]["more"] is False


def test_order_over_http_matches_the_files_dates(served, dated_index):
    _, times = dated_index
    status, answer = _search(served, q="a blue circle", k=20, order="newest")
    assert status == 200 and answer["page"]["order"] == "newest"
    got = [times[h["path"]] for h in answer["results"]]
    assert got == sorted(got, reverse=True)
    for name, value in (("order", "sideways"), ("offset", "-3"), ("offset", "x")):
        status, error = _search(served, q="a", **{name: value})
        assert status == 422 and error["error"].startswith(f"{name}:")
    status, error = _search(served, q="a", target="texts", order="oldest")
    assert status == 422 and "texts have no date" in error["error"]


def test_config_gives_the_page_its_defaults_from_one_place(served):
    status, config = served.json("/api/config")
    assert status == 200
    assert config["k"] == PAGE_K
    assert config["duplicate_threshold"] == DUPLICATE_THRESHOLD
    assert config["orders"] == ["relevance", "newest", "oldest"]
    assert config["images"] == N_IMAGES and len(config["examples"]) > 0
    status, examples = served.json("/api/examples")
    assert config["examples"] == examples["examples"]


def test_duplicates_items_carry_a_date(tmp_path, encoder):
    folder = tmp_path / "photos"
    make_images(folder, 4)
    (folder / "copy.png").write_bytes((folder / "img0001.png").read_bytes())
    for path in folder.iterdir():
        os.utime(path, (BASE, BASE))
    index_with(tmp_path / "index", encoder, [folder])
    groups = Engine(tmp_path / "index").duplicates()
    assert len(groups) == 1
    for item in groups[0]["items"]:
        assert datetime.fromisoformat(item["date"]).timestamp() == BASE


def test_a_thumbnail_is_never_larger_than_its_picture(served):
    status, answer = _search(served, q="a blue circle", k=3)
    for hit in answer["results"]:
        status, _, body = served.request(f"/api/images/{hit['id']}/thumbnail?size=384")
        assert status == 200
        with Image.open(io.BytesIO(body)) as thumb:
            assert thumb.size == (48, 40)  # the pictures' own size, never scaled up to 384
