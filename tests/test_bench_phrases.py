"""The phrase benchmark's scoring (benchmarks/bench_phrases.py): the share of the top k
that show an object of the queried colour and shape, read from real corpus scenes."""

from __future__ import annotations

import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from bench_phrases import has_object, link_images, phrase_share, split_scenes  # noqa: E402


def scene(*objects: tuple[str, str]) -> dict:
    return {
        "background": "gray",
        "objects": [
            {"colour": c, "shape": s, "size": "big", "x": 10 * i, "y": 5}
            for i, (c, s) in enumerate(objects)
        ],
        "relation": None,
    }


def test_has_object_needs_colour_and_shape_on_one_object():
    both = scene(("red", "circle"), ("blue", "square"))
    assert has_object(both, "red", "circle")
    assert has_object(both, "blue", "square")
    # Red and circle are both in the scene, on different objects: not a red circle.
    assert not has_object(scene(("red", "square"), ("blue", "circle")), "red", "circle")
    assert not has_object(both, "green", "circle")


def test_phrase_share_counts_hits_out_of_k():
    red_circle = scene(("red", "circle"))
    other = scene(("blue", "circle"), ("red", "star"))
    ranked = [red_circle, other, red_circle, other, other]
    assert phrase_share(ranked, "red", "circle", k=5) == pytest.approx(2 / 5)
    assert phrase_share(ranked, "red", "circle", k=2) == pytest.approx(1 / 2)  # top k only
    # Fewer results than k: the missing ones are misses, not left out of the denominator.
    assert phrase_share([red_circle, red_circle], "red", "circle", k=4) == pytest.approx(0.5)
    assert phrase_share([other] * 4, "red", "circle", k=4) == 0.0


def test_split_scenes_and_links_hold_exactly_the_split(tmp_path):
    from xmr.training.corpus import make_corpus

    info = make_corpus(tmp_path / "corpus", 20, seed=3)
    test = split_scenes(info.captions_path, "test")
    assert len(test) == info.n_test == 2
    assert len(split_scenes(info.captions_path, "all")) == 20
    link_images(info.captions_path, test, tmp_path / "images")
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(test)
    for name, s in test.items():  # the scene is the one its image was rendered from
        first = s["objects"][0]
        assert has_object(s, first["colour"], first["shape"])
        assert (tmp_path / "images" / name).read_bytes() == (info.images_dir / name).read_bytes()


def test_summary_of_stage1_only_rows_has_no_reranked_entries():
    from bench_phrases import summary

    rows = [
        {"phrase": "a red circle", "best_possible": 1.0, "stage1": 0.6, "reranked": 0.9},
        {"phrase": "a blue star", "best_possible": 0.5, "stage1": 0.2, "reranked": 0.7},
    ]
    both = summary(rows)
    assert both["stage1_mean"] == pytest.approx(0.4)
    assert both["reranked_mean"] == pytest.approx(0.8)
    assert both["best_possible_mean"] == pytest.approx(0.75)
    assert (both["stage1_below_0.5"], both["reranked_below_0.8"]) == (1, 1)
    # `--reranker none`: stage 1 only; no re-ranked mean is made up from missing entries.
    stage1 = summary([{k: v for k, v in r.items() if k != "reranked"} for r in rows])
    assert stage1 == {k: both[k] for k in stage1}
    assert "reranked_mean" not in stage1 and "reranked_below_0.8" not in stage1
