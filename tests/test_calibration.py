"""One readable score: every result's score is a calibrated 0..1 probability of a match
(retrieval/calibration.py), the same from the CLI and the server, and --min-score cuts on
the score shown."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_xmr

from xmr.retrieval.calibration import (
    CALIBRATION_FILE,
    Logistic,
    fit_logistic,
    rerank_fit,
    rerank_probability,
    stage1_fit,
    stage1_probability,
    write_calibration,
)
from xmr.retrieval.modelspec import SHIPPED_MODELS_DIR

TINY = SHIPPED_MODELS_DIR / "xmr-tiny"


# -- the mappings --------------------------------------------------------------------------
def test_platt_fit_recovers_a_known_logistic_and_is_increasing():
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 2.0, 20_000)
    y = rng.random(x.shape) < 1 / (1 + np.exp(-(1.5 * x - 2.0)))
    fit = fit_logistic(x, y)
    assert fit.slope == pytest.approx(1.5, rel=0.08)
    assert fit.intercept == pytest.approx(-2.0, abs=0.15)
    grid = np.linspace(-20, 20, 401)
    assert np.all(np.diff(fit(grid)) >= 0) and fit(grid).min() >= 0 and fit(grid).max() <= 1


def test_a_score_that_ranks_non_matches_first_is_refused():
    x = np.arange(100.0)
    with pytest.raises(ValueError, match="not increasing"):
        fit_logistic(x, x < 50)
    with pytest.raises(ValueError, match="both"):
        fit_logistic(x, np.ones(100))


def test_defaults_are_documented_mappings_in_0_1():
    cosines = np.array([-0.4, 0.0, 0.3, 0.9, 1.0])
    np.testing.assert_allclose(stage1_probability(cosines, False, None), [0, 0, 0.3, 0.9, 1])
    np.testing.assert_allclose(stage1_probability(cosines, True, None), [0, 0, 0.3, 0.9, 1])
    fused = np.array([-50.0, 0.0, 50.0])
    np.testing.assert_allclose(rerank_probability(fused, None), [0, 0.5, 1], atol=1e-12)
    fit = Logistic(2.0, -1.0)  # a fit is used for text <-> image only
    assert stage1_probability(np.array([0.5]), True, fit)[0] == pytest.approx(0.5)
    assert stage1_probability(np.array([0.5]), False, fit)[0] == pytest.approx(0.5)
    assert stage1_probability(np.array([0.9]), False, fit)[0] == pytest.approx(0.9)


def test_a_fit_for_other_weights_or_another_stage1_weight_is_not_used(tmp_path):
    write_calibration(tmp_path, rerank=Logistic(0.5, -10.0), stage1_weight=36.0, fingerprint="abc")
    assert rerank_fit(tmp_path, 36.0, "abc") == Logistic(0.5, -10.0)
    assert rerank_fit(tmp_path, 18.0, "abc") is None  # recalibrated fusion since the fit
    assert rerank_fit(tmp_path, 36.0, "other") is None  # retrained weights


# -- the shipped model's fit -----------------------------------------------------------------
def test_xmr_tiny_ships_its_fits_and_they_load_with_it():
    from xmr.retrieval.reranker import load_reranker

    assert (TINY / CALIBRATION_FILE).is_file()
    assert (TINY / "reranker" / CALIBRATION_FILE).is_file()
    assert stage1_fit(TINY) is not None
    runtime = load_reranker(TINY / "reranker")
    assert runtime.calibration is not None  # fitted for these weights and this fusion


def test_xmr_tiny_calibration_ranks_matches_of_unseen_scenes_higher(tmp_path):
    """On scenes xmr-tiny never saw, every caption's and image's top-16 candidates: the
    shown score is monotone in the fused score, and matches score higher than
    non-matches on average, at both stages."""
    from xmr.evaluation.calibration import candidate_pairs
    from xmr.evaluation.datasets import load_dataset
    from xmr.evaluation.embed_dataset import embed_dataset, token_options
    from xmr.retrieval.encoder import load_encoder
    from xmr.retrieval.fusion import fused_score
    from xmr.retrieval.reranker import load_reranker
    from xmr.training.corpus import make_corpus

    corpus = make_corpus(tmp_path / "unseen", 120, seed=2468)
    dataset = load_dataset(corpus.captions_path, split=None)
    encoder = load_encoder("xmr-tiny", "cpu")
    runtime = load_reranker(TINY / "reranker", encoder, "cpu")
    embeddings = embed_dataset(encoder, dataset, **token_options(runtime))
    pairs = candidate_pairs(runtime, dataset, embeddings, 16)
    fused = fused_score(pairs.logits, pairs.stage1, runtime.config.stage1_weight)
    shown = runtime.probability(fused)
    order = np.argsort(fused)
    assert np.all(np.diff(shown[order]) >= 0)
    assert shown[pairs.match].mean() > shown[~pairs.match].mean() + 0.3
    stage1 = stage1_probability(pairs.stage1, True, stage1_fit(TINY))
    assert stage1[pairs.match].mean() > stage1[~pairs.match].mean() + 0.1
    assert 0 <= shown.min() and shown.max() <= 1


# -- what a search shows -------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory):
    """60 unseen scenes and their captions indexed with xmr-tiny (and its re-ranker)."""
    from xmr.engine.engine import Engine
    from xmr.evaluation.datasets import load_dataset
    from xmr.training.corpus import make_corpus

    root = tmp_path_factory.mktemp("calibrated")
    corpus = make_corpus(root / "scenes", 60, seed=1357)
    dataset = load_dataset(corpus.captions_path, split=None)
    captions = root / "captions.txt"
    captions.write_text("\n".join(dataset.captions) + "\n")
    engine = Engine(root / "index")
    engine.index([corpus.images_dir], model="xmr-tiny")
    engine.add_texts(captions)
    engine.close()
    return root / "index", dataset


@pytest.mark.parametrize("kind", ["text->image", "image->image", "image->text"])
def test_min_score_keeps_exactly_the_hits_shown_at_or_above_it(tiny_index, kind):
    from xmr.engine.engine import Engine
    from xmr.engine.query_input import QueryInput

    index, dataset = tiny_index
    query = (
        QueryInput(text=dataset.captions[7])
        if kind == "text->image"
        else QueryInput(image_path=dataset.image_paths[7])
    )
    target = "texts" if kind == "image->text" else "images"
    engine = Engine(index)
    every = engine.search(query, target=target, k=30).hits
    assert every and all(0 <= h.score <= 1 for h in every)
    reranked = kind != "image->image"
    assert all((h.rerank_logit is not None) == reranked for h in every)
    cut = 0.5
    if not any(h.score >= cut for h in every) or all(h.score >= cut for h in every):
        cut = float(np.median([h.score for h in every]))  # a cut with hits on both sides
    answer = engine.search(query, target=target, k=30, min_score=cut)
    assert [h.id for h in answer.hits] == [h.id for h in every if h.score >= cut]
    assert answer.below_min_score == sum(h.score < cut for h in every) > 0
    assert [h.score for h in answer.hits] == sorted((h.score for h in answer.hits), reverse=True)


def test_the_cli_min_score_filters_the_printed_score(tiny_index):
    index, dataset = tiny_index
    args = ("search", dataset.captions[3], "--index", index, "--no-server", "-k", "20")
    every = json.loads(run_xmr(*args, "--json").stdout)
    result = run_xmr(*args, "--json", "--min-score", "0.5")
    assert result.returncode == 0, result.stderr
    kept = json.loads(result.stdout)
    assert [h["id"] for h in kept] == [h["id"] for h in every if h["score"] >= 0.5]
    for hit in every:  # the raw parts stay beside the shown score
        assert {"stage1_score", "rerank_logit", "fused_score"} <= set(hit)
    assert run_xmr(*args, "--min-score", "40").returncode != 0  # not on the old scale


def test_the_cli_and_the_server_show_the_same_scores(tiny_index):
    from fastapi.testclient import TestClient

    from xmr.engine.engine import Engine
    from xmr.server.app import create_app

    index, dataset = tiny_index
    text = dataset.captions[11]
    cli = json.loads(
        run_xmr("search", text, "--index", index, "--no-server", "-k", "8", "--json").stdout
    )
    with TestClient(create_app(Engine(index))) as client:
        served = client.get("/api/search", params={"q": text, "k": 8}).json()["results"]
    assert [h["id"] for h in served] == [h["id"] for h in cli]
    for a, b in zip(served, cli, strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        assert a["rerank_logit"] == pytest.approx(b["rerank_logit"], abs=1e-4)
