"""Hard edit-pair mining in re-ranker training (--edit-mining): the pairs kept are the
ones the re-ranker scores worst, each pair's margin is what the edit-pair loss reads, and
the option is refused where it has nothing to pick from."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import prepared_training


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The trainer's data with edit pairs, and its fresh re-ranker moved off its zero head
    so that pairs score differently."""
    config, encoder, data, model = prepared_training(
        tmp_path_factory.mktemp("mining"), seed=8, edit_pairs=16, edit_mining=3
    )
    scored = copy.deepcopy(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in scored.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return config, data, scored


def _margin_alone(model, data, caption: int, edit: int, image: int) -> float:
    """One pair scored by itself: its true caption's logit minus its edit's."""
    from xmr.retrieval.reranker import text_mask

    f, edits = data.tensors, data.edits
    states = model.encode_images(f.image_tokens[image : image + 1].float())

    def logit(tokens, length):
        n = int(length)
        return float(model.match(tokens[None, :n].float(), text_mask(length[None], n), states)[0])

    true = logit(f.text_tokens[caption], f.text_lengths[caption])
    false = logit(edits.tokens[edit], edits.lengths[edit])
    return true - false


def _margins_alone(model, data, pool) -> np.ndarray:
    """(P,) every pair of `pool` scored by itself."""
    with torch.no_grad():
        return np.array(
            [
                _margin_alone(model, data, c, e, i)
                for c, e, i in zip(pool.captions, pool.edits, pool.images, strict=True)
            ]
        )


def test_mining_keeps_the_pairs_scored_worst(prepared):
    from xmr.training.reranker_training.losses import hardest_edit_pairs

    _, data, model = prepared
    pool = data.edit_pairs.draw(48, np.random.default_rng(2))
    margins = _margins_alone(model, data, pool)
    assert margins.std() > 1e-3  # the pairs really score differently
    kept = hardest_edit_pairs(model, pool, data.edits, data.tensors, 16)
    expected = np.argsort(margins)[:16]
    assert sorted(zip(kept.captions, kept.edits, strict=True)) == sorted(
        zip(pool.captions[expected], pool.edits[expected], strict=True)
    )
    assert np.array_equal(kept.images, data.train.text_to_image[kept.captions])


def test_the_edit_pair_loss_reads_each_pairs_margin(prepared):
    from xmr.training.reranker_training.losses import edit_pair_loss

    _, data, model = prepared
    pool = data.edit_pairs.draw(12, np.random.default_rng(4))
    margins = torch.from_numpy(_margins_alone(model, data, pool))
    with torch.no_grad():
        loss = edit_pair_loss(model, pool, data.edits, data.tensors)
    expected = torch.nn.functional.softplus(-margins).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-4)


def test_mining_without_edit_pairs_is_refused(prepared):
    from dataclasses import replace

    from xmr.retrieval.errors import InputError
    from xmr.training.reranker_training.config import check_config

    config, _, _ = prepared
    check_config(config)  # with edit pairs it is fine
    with pytest.raises(InputError, match="--edit-mining picks among edit pairs"):
        check_config(replace(config, edit_pairs=0))
