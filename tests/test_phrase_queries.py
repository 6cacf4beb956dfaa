"""Phrase queries in re-ranker training (training/reranker_training/phrase_queries.py):
each phrase's look-alike gallery and its truth from the corpus scenes, the candidates a
step draws, the multi-positive loss written out, that it teaches, and the refusal of a
corpus without phrases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import prepared_training


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The trainer's training data with --phrase-queries on, for 40 generated scenes."""
    return prepared_training(tmp_path_factory.mktemp("phrases"), seed=6, phrase_queries=4)


def _scenes(config, train):
    from xmr.training.reranker_training.loop import _scenes as training_scenes

    return training_scenes(config, train, "the test")


def test_galleries_are_stage1_look_alikes_with_the_scenes_truth(prepared):
    from xmr.training.corpus.phrases import is_phrase_true

    config, _, data, _ = prepared
    queries, f = data.phrases, data.tensors
    scenes = _scenes(config, data.train)
    records = json.loads(open(config.data).read())["images"]
    written = {p for r in records if r["split"] == "train" for p in r["phrases"]}
    assert set(queries.texts) == written
    # Every (image, own phrase) occurrence, and the phrase is true of its own image.
    assert len(queries.owners) == sum(len(r["phrases"]) for r in records if r["split"] == "train")
    for q, image in zip(queries.owners, queries.owner_images, strict=True):
        assert is_phrase_true(scenes[image], queries.texts[q])
    sims = (queries.vectors @ f.image_vectors.T).numpy()  # (Q, N)
    for q in range(len(queries.texts)):
        gallery = queries.gallery[q]
        assert len(set(gallery)) == len(gallery)
        shown = sims[q, gallery]
        assert np.all(np.diff(shown) <= 1e-6)  # best first
        assert shown[-1] >= np.delete(sims[q], gallery).max(initial=-1.0) - 1e-6  # the top G
        truth = [is_phrase_true(scenes[i], queries.texts[q]) for i in gallery]
        assert queries.truth[q].tolist() == truth
    # Both right and wrong answers are there to learn from.
    assert 0 < queries.truth.mean() < 1


def test_a_draw_puts_the_own_image_first_and_labels_every_candidate(prepared):
    from xmr.training.corpus.phrases import is_phrase_true

    config, _, data, _ = prepared
    queries = data.phrases
    scenes = _scenes(config, data.train)
    batch = queries.draw(12, np.random.default_rng(3), candidates=10)
    assert batch.images.shape == batch.positive.shape == batch.valid.shape == (12, 11)
    for n, q in enumerate(batch.phrases):
        own = batch.images[n, 0]
        assert is_phrase_true(scenes[own], queries.texts[q])
        assert set(batch.images[n, 1:]) <= set(queries.gallery[q])
        for c, image in enumerate(batch.images[n]):
            assert batch.positive[n, c] == is_phrase_true(scenes[image], queries.texts[q])
            assert batch.valid[n, c] == (c == 0 or image != own)  # a repeat counts once


def test_phrase_loss_is_the_multi_positive_softmax(prepared):
    from xmr.retrieval.reranker import fused_score, text_mask
    from xmr.training.reranker_training.phrase_queries import phrase_query_loss

    _, _, data, model = prepared
    queries, f = data.phrases, data.tensors
    batch = queries.draw(6, np.random.default_rng(5), candidates=8)
    assert batch.positive[:, 1:].any()  # some look-alike is also right
    got = phrase_query_loss(model, batch, queries, f)
    losses = []
    with torch.no_grad():
        for n, q in enumerate(batch.phrases):
            length = int(queries.lengths[q])
            text = queries.tokens[q : q + 1, :length].float()
            mask = text_mask(queries.lengths[q : q + 1], length)
            scores, right = [], []
            for c, image in enumerate(batch.images[n]):
                if not batch.valid[n, c]:
                    continue
                states = model.encode_images(f.image_tokens[image : image + 1].float())
                logit = model.match(text, mask, states)[0]
                cosine = float(queries.vectors[q] @ f.image_vectors[image])
                scores.append(float(fused_score(logit, cosine, model.config.itc_weight)))
                right.append(bool(batch.positive[n, c]))
            p = torch.softmax(torch.tensor(scores), 0)
            losses.append(-float(p[torch.tensor(right)].sum().log()))
    assert float(got.detach()) == pytest.approx(float(np.mean(losses)), rel=1e-4)


@pytest.mark.slow
def test_phrase_loss_teaches_which_look_alikes_are_right(prepared):
    import copy

    from xmr.training.reranker_training.phrase_queries import phrase_query_loss

    _, _, data, trained = prepared
    model = copy.deepcopy(trained)
    batch = data.phrases.draw(8, np.random.default_rng(7), candidates=12)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = phrase_query_loss(model, batch, data.phrases, data.tensors)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] / 2


def test_phrase_queries_are_refused_for_a_corpus_without_phrases(prepared, tmp_path):
    from dataclasses import replace

    from xmr.retrieval.errors import InputError
    from xmr.training.reranker_training.loop import _phrase_queries

    config, encoder, data, _ = prepared
    corpus = json.loads(open(config.data).read())
    for record in corpus["images"]:
        record.pop("phrases", None)
    stripped = tmp_path / "captions.json"
    stripped.write_text(json.dumps(corpus))
    plain = replace(config, data=str(stripped))
    # The dataset keeps its images' root: records are matched to them by path.
    with pytest.raises(InputError, match="--phrase-queries: the records of .* have no phrases"):
        _phrase_queries(plain, encoder, data.train, data.tensors.image_vectors.numpy(), None)
