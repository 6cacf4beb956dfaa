"""Filtered search (--under, --after, --before, --ext): exactly the matching items, k of
them whenever k match, through a real index of real images (tiny encoder), by the
exact shortcut and forced through the graph; bad values are one-line errors."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import index_with, indexed_paths, make_image, make_images
from PIL import Image

from xmr.retrieval.errors import InputError
from xmr.retrieval.filters import SearchFilter
from xmr.retrieval.library import Library
from xmr.retrieval.searcher import Searcher


def _set_mtime(path: Path, day: str) -> None:
    stamp = datetime.fromisoformat(day).timestamp()
    os.utime(path, (stamp, stamp))


def _with_exif_date(path: Path, seed: int, taken: str) -> Path:
    """A JPEG whose EXIF DateTime says `taken` (YYYY:MM:DD HH:MM:SS), mtime elsewhere."""
    make_image(path, seed)
    image = Image.open(path)
    exif = image.getexif()
    exif[0x0132] = taken  # DateTime
    image.save(path, exif=exif)
    _set_mtime(path, "2030-01-01")  # far from the EXIF date: the EXIF date must win
    return path


@pytest.fixture(scope="module")
def library_dir(encoder, tmp_path_factory):
    """42 images: 2023 PNGs in a/, 2024 JPEGs in b/ and b/deep/, EXIF-dated ones in c/.

    Returns (folder, index_dir, facts): facts maps each path to (year-month, ext).
    """
    root = tmp_path_factory.mktemp("filters")
    folder = root / "photos"
    facts = {}
    for i, path in enumerate(make_images(folder / "a", 15)):
        _set_mtime(path, f"2023-0{1 + i % 6}-15")
        facts[str(path)] = (f"2023-0{1 + i % 6}", "png")
    for i, path in enumerate(make_images(folder / "b", 12, 100, ".jpg")):
        _set_mtime(path, f"2024-0{1 + i % 3}-10")
        facts[str(path)] = (f"2024-0{1 + i % 3}", "jpg")
    for path in make_images(folder / "b" / "deep", 5, 200, ".JPEG"):
        _set_mtime(path, "2024-02-20")
        facts[str(path)] = ("2024-02", "jpeg")
    for i in range(10):
        taken = f"2019:0{1 + i % 2}:05 12:00:00"
        path = _with_exif_date(folder / "c" / f"exif{i}.jpg", 300 + i, taken)
        facts[str(path)] = (f"2019-0{1 + i % 2}", "jpg")
    index_dir = root / "index"
    index_with(index_dir, encoder, [folder])
    assert sorted(indexed_paths(index_dir)) == sorted(facts)
    return folder, index_dir, facts


def _expected(facts, under=None, after=None, before=None, exts=None) -> set[str]:
    keep = set()
    for path, (month, ext) in facts.items():
        if under is not None and not path.startswith(str(under) + os.sep):
            continue
        if after is not None and month < after[:7]:
            continue
        if before is not None and month >= before[:7]:
            continue
        if exts is not None and ext not in exts:
            continue
        keep.add(path)
    return keep


CASES = [
    {"under": "b"},
    {"under": "b/deep"},
    {"ext": "jpg"},  # jpg and jpeg, any case
    {"ext": "png,JPEG"},
    {"after": "2024-02-01"},
    {"before": "2023-04-01"},
    {"after": "2023-03-01", "before": "2024-02-01", "ext": "png"},
    {"after": "2019-01-01", "before": "2019-02-01"},  # EXIF dates, not the 2030 mtimes
    {"under": "a", "ext": "jpg"},  # nothing matches
]


SAME_EXT = {"jpg": {"jpg", "jpeg"}, "jpeg": {"jpg", "jpeg"}, "png": {"png"}}


def _query(case, folder):
    """The SearchFilter for a case, and the arguments of `_expected` for it."""
    under = folder / case["under"] if "under" in case else None
    where = SearchFilter.parse(
        [under] if under else (), case.get("after"), case.get("before"), case.get("ext")
    )
    exts = None
    if "ext" in case:
        exts = set().union(*(SAME_EXT[e.lower()] for e in case["ext"].split(",")))
    return where, (under, case.get("after"), case.get("before"), exts)


@pytest.mark.parametrize("through_graph", [False, True], ids=["exact", "hnsw-graph"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_filter_returns_exactly_the_matching_items(
    encoder, library_dir, case, through_graph, tmp_path
):
    folder, index_dir, facts = library_dir
    where, spec = _query(case, folder)
    expected = _expected(facts, *spec)
    with Library.open(index_dir) as library:
        if through_graph:  # an HNSW index, and no exact shortcut for small filters
            from xmr.retrieval.index_choice import resolve_choice
            from xmr.retrieval.vector_index import VectorIndex

            ids = library.images.index.ids()
            library.images.index = VectorIndex.build(
                resolve_choice("hnsw", len(ids), 32), 32, ids, library.images.vectors.read
            )
            library.images.index.exact_filter_max = 0
        searcher = Searcher(library, encoder)
        query = searcher.text_query("a red square on blue")
        everything = searcher.search(query, "images", k=100, where=where)
        few = searcher.search(query, "images", k=3, where=where)
    assert {h.path for h in everything} == expected  # all of them, nothing else
    assert len(few) == min(3, len(expected))  # k whenever k match
    assert {h.path for h in few} <= expected
    # The k shown are the best k of the matching ones (order by stage-1 score).
    assert [h.path for h in few] == [h.path for h in everything][: len(few)]


def test_image_query_with_filter_leaves_itself_out(encoder, library_dir):
    folder, index_dir, facts = library_dir
    query_path = folder / "b" / "img0003.jpg"
    where = SearchFilter.parse([folder / "b"])
    with Library.open(index_dir) as library:
        searcher = Searcher(library, encoder)
        hits = searcher.search(searcher.image_query(query_path), "images", k=50, where=where)
    assert {h.path for h in hits} == _expected(facts, under=folder / "b") - {str(query_path)}


def test_bad_filter_values_are_refused():
    for kwargs, message in (
        ({"after": "yesterday"}, "after 'yesterday' is not a date"),
        ({"before": "2024-13-01"}, "before '2024-13-01' is not a date"),
        ({"after": "2024-02-01", "before": "2024-01-01"}, "nothing matches"),
        ({"ext": " , "}, "names no extension"),
    ):
        with pytest.raises(InputError, match=message):
            SearchFilter.parse(**kwargs)
    assert not SearchFilter.parse().active
    when = SearchFilter.parse(after="2024-03-01T10:30").after
    assert when == datetime(2024, 3, 1, 10, 30)


def test_search_cli_filters(cli, library_dir, tmp_path):
    folder, index_dir, facts = library_dir
    base = ("search", "a photo", "--index", index_dir, "--no-rerank", "--paths")
    result = cli(*base, "-k", "4", "--under", folder / "b", "--ext", "jpeg")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    assert all(line.startswith(str(folder / "b")) for line in lines)

    result = cli(*base, "-k", "100", "--after", "2019-01-01", "--before", "2019-12-31")
    assert set(result.stdout.splitlines()) == {p for p in facts if "/c/" in p}

    result = cli(*base, "--under", folder / "a", "--ext", "jpg")
    assert result.exit_code == 0 and result.stdout == ""
    assert "no images match the filter" in result.output

    result = cli(*base, "--after", "last week")
    assert result.exit_code == 1
    assert "Error: after 'last week' is not a date" in result.output


def test_text_search_filters_by_corpus_file(cli, encoder, tiny_spec, tmp_path):
    make_images(tmp_path / "photos", 2)
    index_dir = tmp_path / "index"
    (tmp_path / "corpus" / "news").mkdir(parents=True)
    (tmp_path / "corpus" / "news" / "a.txt").write_text("one\ntwo\nshared\n")
    (tmp_path / "corpus" / "b.txt").write_text("three\nfour\nshared\n")
    args = ("--index", index_dir, "--model", tiny_spec)
    assert cli("index", tmp_path / "photos", *args, "--workers", "0").exit_code == 0
    for corpus in ("news/a.txt", "b.txt"):
        assert cli("add-texts", tmp_path / "corpus" / corpus, *args).exit_code == 0
    image = tmp_path / "photos" / "img0000.png"
    base = ("search", "--image", image, "--texts", "--index", index_dir, "--paths", "-k", "10")
    result = cli(*base, "--under", tmp_path / "corpus" / "news")
    assert result.exit_code == 0, result.output
    assert sorted(result.stdout.split()) == ["one", "shared", "two"]
    result = cli(*base, "--under", tmp_path / "corpus" / "news", "--ext", "txt")
    assert result.exit_code == 1 and "a text search takes only under" in result.output


def test_filter_ids_come_from_one_query(library_dir):
    """The allowed set is a plain sorted id array, straight from SQLite."""
    folder, index_dir, facts = library_dir
    where = SearchFilter.parse([folder / "a"], ext="png")
    with Library.open(index_dir) as library:
        ids = where.allowed_ids(library.db, "images")
    paths = indexed_paths(index_dir)
    assert ids.dtype == np.int64 and ids.tolist() == sorted(
        paths[p] for p in _expected(facts, under=folder / "a", exts={"png"})
    )
    assert json.dumps(ids.tolist())  # plain ints
