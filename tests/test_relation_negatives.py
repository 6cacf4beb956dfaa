"""Relation negatives reach re-ranker training: with --edit-kinds ...relation,operands the
trainer's own batch builder draws relation-flipped and operand-swapped captions, and the
edit-pair term scores them with the re-ranker's logit. Built from a real generated corpus,
the shipped xmr-tiny encoder and the trainer's own data preparation, not a mock."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import prepared_training

from xmr.training.text_edits import COLOURS, RELATION_FLIPS

RELATION = set(RELATION_FLIPS) | {"front", "in", "of"}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def kind_of(caption: str, edit: str) -> str:
    """Which edit turned `caption` into `edit`, read from the words alone."""
    a, b = _words(caption), _words(edit)
    if len(a) != len(b):
        return "other"
    changed = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    if all(x in RELATION and y in RELATION for x, y in changed):
        return "relation"
    if sorted(a) == sorted(b) and not all(x in COLOURS for x, _ in changed):
        return "operands"  # the same words in another order, more than colours moved
    return "other"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The trainer's training data (embedded split, pools, caption edits) for 40 scenes."""
    config, encoder, data, model = prepared_training(
        tmp_path_factory.mktemp("rel"),
        seed=21,
        edit_pairs=64,
        edit_kinds="attribute,relation,operands",
    )
    torch.nn.init.normal_(model.head.weight, std=0.5)  # a trained head speaks; zeros do not
    return config, encoder, data, model


def _pool_kinds(data, kinds: str) -> dict[str, int]:
    from xmr.training.reranker_training.edits import edit_pair_pool

    pool = edit_pair_pool(data.edits, kinds, data.train.text_to_image)
    counts = {"relation": 0, "operands": 0, "other": 0}
    for caption, edit in zip(pool.captions, pool.edits, strict=True):
        counts[kind_of(data.train.captions[caption], data.edits.texts[edit])] += 1
    return counts


def test_the_edit_pair_pool_holds_relation_negatives_only_when_asked(prepared):
    _, _, data, _ = prepared
    asked = _pool_kinds(data, "attribute,relation,operands")
    assert asked["relation"] > 50 and asked["operands"] > 50, asked
    without = _pool_kinds(data, "attribute")
    assert without["relation"] == without["operands"] == 0 and without["other"] > 50, without


def _edit_term(config, model, data, rng_seed: int) -> float:
    """The edit-pair part of one training step's loss, as the trainer computes it: the
    step with --edit-pairs minus the same step (same batch) without."""
    from xmr.training.reranker_training.loop import _step_loss

    with torch.no_grad():
        full, _ = _step_loss(config, model, data, np.random.default_rng(rng_seed))
        listwise, _ = _step_loss(
            replace(config, edit_pairs=0), model, data, np.random.default_rng(rng_seed)
        )
    return float(full - listwise)


def _without_relation_meaning(data):
    """The same data, with every relation and operand edit's tokens replaced by the
    caption it was made from: those negatives say nothing any more."""
    from xmr.training.reranker_training.edits import edit_pair_pool

    edits = replace(data.edits, tokens=data.edits.tokens.clone())
    pool = edit_pair_pool(data.edits, "relation,operands", data.train.text_to_image)
    edits.tokens[pool.edits] = data.tensors.text_tokens[pool.captions]
    edits.lengths = data.edits.lengths.clone()
    edits.lengths[pool.edits] = data.tensors.text_lengths[pool.captions]
    return replace(data, edits=edits)


def test_relation_negatives_are_scored_by_the_logit_in_each_step(prepared):
    """Drop the relation negatives' meaning and the edit-pair term of the same step moves;
    with --edit-kinds attribute it does not: the relation edits are what it scored."""
    from xmr.training.reranker_training.edits import edit_pair_pool

    config, _, data, model = prepared
    blank = _without_relation_meaning(data)
    moved = [
        abs(_edit_term(config, model, data, s) - _edit_term(config, model, blank, s))
        for s in range(3)
    ]
    assert min(moved) > 1e-4, moved

    attribute = replace(config, edit_kinds="attribute")
    pairs = edit_pair_pool(data.edits, "attribute", data.train.text_to_image)
    only = replace(data, edit_pairs=pairs)
    only_blank = replace(blank, edit_pairs=pairs)
    same = [
        abs(_edit_term(attribute, model, only, s) - _edit_term(attribute, model, only_blank, s))
        for s in range(3)
    ]
    assert max(same) < 1e-6, same
