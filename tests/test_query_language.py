"""Query expressions: the tokenising rules, bad expressions, and what arithmetic does to
the answers of the shipped xmr-tiny on a generated corpus it never saw."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import index_with, make_image, run_xmr
from test_cli import HEAVY, _imported, run_xmr_importtime

from xmr.retrieval.errors import InputError
from xmr.retrieval.query_language import Term, combine, parse


# -- the rules ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "a black-and-white photo",
        "a man in a T-shirt",
        "C++ book on a desk",
        "-5 degrees outside",
        "12:30 train to Paris",  # a colon before a digit is not a weight
        "e-mail",
    ],
)
def test_hyphens_and_colons_inside_words_stay_one_term(text):
    assert parse(text) == [Term(1.0, "text", text)]


def test_operators_weights_and_image_terms(tmp_path, monkeypatch):
    image = make_image(tmp_path / "ref.png", seed=1)
    monkeypatch.chdir(tmp_path)
    assert parse("sunset + 2:boats - people") == [
        Term(1.0, "text", "sunset"),
        Term(2.0, "text", "boats"),
        Term(-1.0, "text", "people"),
    ]
    assert parse("+ at night") == [Term(1.0, "text", "at night")]
    assert parse("- 0.5:snow") == [Term(-0.5, "text", "snow")]
    assert parse("./ref.png + at night") == [
        Term(1.0, "image", "./ref.png"),
        Term(1.0, "text", "at night"),
    ]
    assert parse(f"{image} - 3:red") == [Term(1.0, "image", str(image)), Term(-3.0, "text", "red")]
    assert parse("ref.png + dogs")[0] == Term(1.0, "image", "ref.png")  # an existing file
    assert parse("other.png + dogs")[0] == Term(1.0, "text", "other.png")  # no such file
    # A server never looks at its own files for a client's path terms.
    assert parse("/etc/passwd", local_files=False) == [Term(1.0, "image", "/etc/passwd")]


@pytest.mark.parametrize(
    "expression, says",
    [
        ("+ +", "'+' at position 1 of the query has no term after it"),
        ("cats -", "'-' at position 6 of the query has no term after it"),
        ("2:", "weight '2:' has no term after it"),
        ("dogs + 2:", "weight '2:' has no term after it"),
        ("1.2.3:snow", "weight '1.2.3' is not a number"),
        ("2x:snow", "weight '2x' is not a number"),
        ("0:snow", "weight '0' must be a positive number"),
        ("./missing.jpg + dog", "image term ./missing.jpg does not exist"),
        ("   ", "empty query"),
    ],
)
def test_bad_expressions_name_the_token(expression, says):
    with pytest.raises(InputError) as err:
        parse(expression)
    assert says in str(err.value)


def test_terms_that_cancel_out_are_refused():
    v = np.eye(4, dtype=np.float32)[:1]
    with pytest.raises(InputError, match="cancel"):
        combine(np.concatenate([v, v]), [1.0, -1.0])
    out = combine(np.eye(4, dtype=np.float32)[:2], [2.0, 1.0])
    np.testing.assert_allclose(out, np.array([2, 1, 0, 0]) / np.sqrt(5), rtol=1e-6)


def test_a_bad_expression_fails_at_once_in_the_cli(tmp_path, encoder):
    """One line naming the token, exit 1, and nothing else happens: no index is opened,
    no model is loaded (the expression is checked first)."""
    for expression, says in (
        ("dogs + +", "has no term after it"),
        ("two:cats", None),  # not numeric-looking: plain text, so it is no error
        ("0.5x:snow", "weight '0.5x' is not a number"),
    ):
        result = run_xmr_importtime("search", expression, "--index", tmp_path / "none")
        lines = [line for line in result.stderr.splitlines() if line.startswith("Error")]
        if says is None:
            assert "no xmr index" in lines[0]  # it got as far as opening the index
            continue
        assert result.returncode == 1 and lines == [f"Error: {lines[0][7:]}"]
        assert says in lines[0]
        assert not _imported(result.stderr) & set(HEAVY)
    # An image term that is not an image: named, and the search does not run.
    (tmp_path / "notes.jpg").write_text("not a picture")
    make_image(tmp_path / "photos" / "a.png", seed=3)
    index_with(tmp_path / "index", encoder, [tmp_path / "photos"])
    result = run_xmr("search", f"{tmp_path}/notes.jpg + cats", "--index", tmp_path / "index")
    assert result.returncode == 1 and result.stdout == ""
    assert f"cannot use {tmp_path}/notes.jpg as a query: not an image" in result.stderr


# -- what arithmetic does, with xmr-tiny ----------------------------------------------------
@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """600 generated scenes of a seed xmr-tiny never saw, indexed with it."""
    from xmr.engine.engine import Engine
    from xmr.training.corpus import make_corpus

    root = tmp_path_factory.mktemp("scenes")
    corpus = make_corpus(root / "corpus", 600, seed=2024)
    engine = Engine(root / "index")
    engine.index([corpus.images_dir], model="xmr-tiny")
    data = json.loads(corpus.captions_path.read_text())
    images = {str((corpus.images_dir / im["filename"]).resolve()): im for im in data["images"]}
    return engine, images


def _has(image: dict, colour: str, shape: str) -> bool:
    return any(o["colour"] == colour and o["shape"] == shape for o in image["scene"]["objects"])


@pytest.mark.slow
def test_caption_minus_red_plus_blue_moves_toward_blue_circles(scenes):
    engine, images = scenes
    captions = [
        s["raw"]
        for im in images.values()
        for s in im["sentences"]
        if "red circle" in s["raw"] and not _has(im, "blue", "circle")
    ][:6]
    assert len(captions) == 6

    def share(query: str, colour: str) -> float:
        hits = engine.search(query, k=20).hits
        return np.mean([_has(images[h.path], colour, "circle") for h in hits])

    plain = np.mean([share(c, "blue") for c in captions])
    half = np.mean([share(f"{c} - 0.5:red + 0.5:blue", "blue") for c in captions])
    once = np.mean([share(f"{c} - red + blue", "blue") for c in captions])
    twice = np.mean([share(f"{c} - 2:red + 2:blue", "blue") for c in captions])
    assert once >= plain + 0.06  # arithmetic moves the top 20 toward blue circles
    assert twice >= once + 0.06 and half <= once  # and the weights set how far
    red_plain = np.mean([share(c, "red") for c in captions])
    red_twice = np.mean([share(f"{c} - 2:red + 2:blue", "red") for c in captions])
    assert red_twice < red_plain


@pytest.mark.slow
def test_an_image_term_plus_a_text_term_returns_images_with_both(scenes):
    """The image's background and the text's object: the composite keeps the first
    nearly as well as the image alone and gets the second as well as the text alone."""
    from xmr.engine.query_input import QueryInput

    engine, images = scenes
    rng = random.Random(0)
    pool = list(images.items())
    totals = np.zeros((3, 2))  # image / text / both x background share / object share
    trials = 0
    while trials < 10:
        (path_a, a), (_, b) = rng.choice(pool), rng.choice(pool)
        if a["scene"]["background"] == b["scene"]["background"]:
            continue
        trials += 1
        obj = b["scene"]["objects"][0]
        text = b["sentences"][0]["raw"]
        for row, query in enumerate(
            (QueryInput(image_path=path_a), text, QueryInput(text="+ " + text, image_path=path_a))
        ):
            hits = engine.search(query, k=10).hits
            found = [images[h.path] for h in hits]
            totals[row, 0] += np.mean(
                [f["scene"]["background"] == a["scene"]["background"] for f in found]
            )
            totals[row, 1] += np.mean([_has(f, obj["colour"], obj["shape"]) for f in found])
    image_only, text_only, both = totals / trials
    assert both[0] >= text_only[0] + 0.1  # the image's background, which the text lacks
    assert both[1] >= image_only[1] + 0.15  # the text's object, which the image lacks


@pytest.mark.slow
def test_the_reranker_reads_a_composite_only_through_one_positive_text(scenes, tmp_path):
    from xmr.engine.query_input import QueryInput

    engine, images = scenes
    path, image = next(iter(images.items()))
    caption = image["sentences"][0]["raw"]
    single = engine.search(QueryInput(text="+ " + caption, image_path=path), k=5)
    assert single.reranked and single.notices == []  # re-ranked by the one text term
    double = engine.search(f"{caption} - red + blue", k=5)
    assert not double.reranked
    assert double.notices == [
        "this query combines terms; re-ranking needs exactly one positive text term (it has "
        "2), so the order is stage 1's"
    ]
    # Texts searched with texts only are never re-ranked: there is no re-ranking to miss.
    corpus = tmp_path / "captions.txt"
    corpus.write_text("\n".join(im["sentences"][0]["raw"] for im in images.values()) + "\n")
    engine.add_texts(corpus)
    among_texts = engine.search(f"{caption} - red + blue", target="texts", k=5)
    assert len(among_texts.hits) == 5
    assert not among_texts.reranked and among_texts.notices == []
    plain = engine.search(caption, k=5, rerank=False)
    weighted = engine.search("3:" + caption, k=5, rerank=False)  # one term: same direction
    assert [h.id for h in plain.hits] == [h.id for h in weighted.hits]
