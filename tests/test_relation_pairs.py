"""Relation-pair targets and loss (training/reranker_training/relation_pairs.py): which
words of a caption a relation joins, read from the corpus grammar, checked token by token
on written captions; the loss against the same cross-entropies written out, and that it
teaches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import prepared_training


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The trainer's training data with --relation-pairs on, for 40 generated scenes."""
    return prepared_training(
        tmp_path_factory.mktemp("pairs"), seed=6, relation_readout=True, relation_pairs=4
    )


def _pairs_of(caption: str, tokenizer) -> list[tuple[int, int, int]]:
    """(relation, subject, object) word positions of one caption's relation pairs."""
    from xmr.training.reranker_training.relation_pairs import relation_pairs

    found = relation_pairs([caption], tokenizer)
    assert set(found.captions) <= {0}
    return sorted(zip(*(found.relations, found.subjects, found.objects), strict=True))


def test_pairs_join_the_subjects_words_to_the_objects_words(prepared):
    _, encoder, _, _ = prepared
    tokenizer = encoder.tokenizer
    # 0 start, 1 on, 2 a, 3 red, 4 background, 5 ",", 6 a, 7 red, 8 circle, 9 left, 10 of,
    # 11 a, 12 blue, 13 square: the background's "red" is not the circle's.
    caption = "On a red background, a red circle left of a blue square."
    assert _pairs_of(caption, tokenizer) == [(9, 7, 12), (9, 7, 13), (9, 8, 12), (9, 8, 13)]
    # The relation word is the one naming the direction: 4 to, 5 the, 6 left, 7 of.
    caption = "a red circle to the left of a blue square"
    assert _pairs_of(caption, tokenizer) == [(6, 2, 9), (6, 2, 10), (6, 3, 9), (6, 3, 10)]
    # "A with B to its left": B is left of A, so B's words are the subject.
    # 1 a, 2 big, 3 red, 4 circle, 5 with, 6 a, 7 small, 8 blue, 9 square, 10 to, 11 its,
    # 12 left
    caption = "a big red circle with a small blue square to its left"
    assert _pairs_of(caption, tokenizer) == [(12, 8, 3), (12, 8, 4), (12, 9, 3), (12, 9, 4)]
    # "the circle" has no colour word; the sizes are never a pair's words.
    # 1 there 2 is 3 a 4 red 5 circle 6 and 7 a 8 blue 9 square 10 ; 11 the 12 circle
    # 13 is 14 above 15 the 16 square
    caption = "there is a red circle and a blue square; the circle is above the square"
    assert _pairs_of(caption, tokenizer) == [(14, 12, 16)]
    # Two relations, each with its own word: 1 a 2 red 3 circle 4 is 5 left 6 of 7 a
    # 8 blue 9 square 10 . 11 a 12 green 13 star 14 is 15 above 16 the 17 square
    caption = "A red circle is left of a blue square. A green star is above the square."
    assert _pairs_of(caption, tokenizer) == [
        (5, 2, 8), (5, 2, 9), (5, 3, 8), (5, 3, 9), (15, 12, 17), (15, 13, 17),
    ]  # fmt: skip


def test_captions_without_a_relation_between_two_objects_have_no_pairs(prepared):
    _, encoder, _, _ = prepared
    for caption in (
        "a red circle",
        "there is a red circle and a blue square",
        "there is a red circle and a blue square; the circle is on the left",
        "a magenta circle",
    ):
        assert _pairs_of(caption, encoder.tokenizer) == [], caption


def test_every_pair_of_the_corpus_joins_two_object_words(prepared):
    from xmr.training.corpus.scenes import COLOURS, SHAPES

    _, encoder, data, _ = prepared
    pairs = data.relation_pairs
    vocab = encoder.tokenizer([*COLOURS, *SHAPES]).numpy()
    words = {int(row[int((row != 0).sum()) - 2]) for row in vocab}  # each word's last token
    ids = encoder.tokenizer(list(data.train.captions)).numpy()
    # Most multi-object captions state a relation; every pair is a colour or shape word
    # of one noun phrase, then of another later or earlier in the caption.
    assert len(pairs.distinct_captions) > len(data.train.captions) / 3
    directions = {int(encoder.tokenizer([w])[0][1]) for w in ("left", "right", "above",
                  "over", "below", "under", "beneath")}  # fmt: skip
    for caption, relation, subject, obj in zip(
        pairs.captions, pairs.relations, pairs.subjects, pairs.objects, strict=True
    ):
        assert int(ids[caption, subject]) in words and int(ids[caption, obj]) in words
        assert int(ids[caption, relation]) in directions
        assert abs(int(subject) - int(obj)) >= 3  # at least "left of a" between phrases


def test_relation_pair_loss_is_the_roles_cross_entropies(prepared):
    from xmr.retrieval.reranker import text_mask
    from xmr.training.reranker_training.relation_pairs import relation_pair_loss

    _, _, data, model = prepared
    f = data.tensors
    pairs = data.relation_pairs.of_captions(4, np.random.default_rng(1))
    got = relation_pair_loss(model, pairs, data.train.text_to_image, f)
    gates, roles = [], []
    with torch.no_grad():
        for caption in np.unique(pairs.captions):
            image = f.image_tokens[data.train.text_to_image[caption]][None].float()
            length = f.text_lengths[caption : caption + 1]
            mask = text_mask(length, int(length))
            text = f.text_tokens[caption : caption + 1, : int(length)].float()
            words = model.text_states(text, mask, model.encode_images(image))[:, 1:]
            gate, subject, obj = (t[0] for t in model.relation_roles_of(words, mask))
            mine = pairs.captions == caption
            relations = np.unique(pairs.relations[mine])
            gates.append(-gate[relations].sum().log())
            for r in relations:
                of_r = mine & (pairs.relations == r)
                roles.append(-subject[r, np.unique(pairs.subjects[of_r])].sum().log())
                roles.append(-obj[r, np.unique(pairs.objects[of_r])].sum().log())
    expected = torch.stack(gates).mean() + 2 * torch.stack(roles).mean()
    assert float(got.detach()) == pytest.approx(float(expected), rel=1e-4)
    got.backward()  # it reaches the role and gate projections
    assert float(model.relation_roles.weight.grad.norm()) > 0
    assert float(model.relation_gate.weight.grad.norm()) > 0


@pytest.mark.slow
def test_relation_pair_loss_teaches_the_roles(prepared):
    import copy

    from xmr.training.reranker_training.relation_pairs import relation_pair_loss

    _, _, data, trained = prepared
    model = copy.deepcopy(trained)
    pairs = data.relation_pairs.of_captions(4, np.random.default_rng(1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = relation_pair_loss(model, pairs, data.train.text_to_image, data.tensors)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    # From about chance (a few words of L) to most of the mass on the grammar's words.
    assert losses[-1] < losses[0] / 2


def test_relation_pairs_are_refused_without_the_term_or_without_relations(prepared):
    from dataclasses import replace

    from xmr.retrieval.errors import InputError
    from xmr.training.reranker_training.config import check_config
    from xmr.training.reranker_training.loop import _relation_pairs

    config, encoder, _, _ = prepared
    with pytest.raises(InputError, match="--relation-pairs .* add --relation-readout"):
        check_config(replace(config, relation_readout=False))

    class Singles:  # the field _relation_pairs reads of a dataset
        captions = ["a red circle", "there is a blue square and a green star"]

    with pytest.raises(InputError, match="only 0 captions .* state a relation"):
        _relation_pairs(config, encoder, Singles)


def test_relation_lr_puts_exactly_the_relation_terms_weights_in_their_own_group(prepared):
    from dataclasses import replace

    from xmr.retrieval.errors import InputError
    from xmr.training.reranker_training.config import check_config
    from xmr.training.reranker_training.loop import _parameter_groups

    config, _, _, model = prepared
    named = dict(model.named_parameters())
    (one,) = _parameter_groups(config, model)  # without --relation-lr: one group at --lr
    assert one["lr"] == config.lr and len(one["params"]) == len(named)
    rest, relation = _parameter_groups(replace(config, relation_lr=3e-3), model)
    assert (rest["lr"], relation["lr"]) == (config.lr, 3e-3)
    ids = {id(p): n for n, p in named.items()}
    relation_names = {ids[id(p)] for p in relation["params"]}
    assert relation_names == {n for n in named if n.startswith("relation_")}
    assert "relation_direction.weight" in relation_names
    assert len(rest["params"]) + len(relation["params"]) == len(named)
    with pytest.raises(InputError, match="--relation-lr .* add --relation-readout"):
        check_config(replace(config, relation_readout=False, relation_lr=3e-3))
