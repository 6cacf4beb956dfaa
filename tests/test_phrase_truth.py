"""Phrase training's false negatives (training/phrase_truth.py): which batch pairs are a
phrase true of another image, and a loss that leaves exactly those out."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch


def _features(n: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    return x / x.norm(dim=1, keepdim=True)


def _clip_loss_leaving_out(logits: np.ndarray, mask: np.ndarray) -> float:
    """The symmetric cross-entropy written out, masked entries dropped from each row."""

    def direction(rows: np.ndarray, drop: np.ndarray) -> float:
        total = 0.0
        for i, row in enumerate(rows):
            kept = row[~drop[i]]
            total += np.log(np.exp(kept - kept.max()).sum()) + kept.max() - row[i]
        return total / len(rows)

    return (direction(logits, mask) + direction(logits.T, mask.T)) / 2


def test_without_a_mask_it_is_open_clips_loss():
    from open_clip import ClipLoss

    from xmr.training.phrase_truth import masked_clip_loss

    images, texts, scale = _features(12, 8, 1), _features(12, 8, 2), torch.tensor(20.0)
    want = ClipLoss()(images, texts, scale)
    for mask in (None, np.zeros((12, 12), bool)):
        assert torch.allclose(masked_clip_loss(images, texts, scale, mask), want, atol=1e-6)


def test_masked_pairs_are_left_out_of_both_directions():
    from xmr.training.phrase_truth import masked_clip_loss

    images, texts = _features(10, 8, 3), _features(10, 8, 4)
    texts[2] = images[5]  # text 2 matches image 5 as well as its own: a strong "negative"
    texts[7] = images[0]
    mask = np.zeros((10, 10), bool)
    mask[5, 2] = mask[0, 7] = True
    logits = (20.0 * images @ texts.T).numpy()
    got = float(masked_clip_loss(images, texts, torch.tensor(20.0), mask))
    assert got == pytest.approx(_clip_loss_leaving_out(logits, mask), abs=1e-4)
    unmasked = float(masked_clip_loss(images, texts, torch.tensor(20.0), None))
    assert unmasked > got + 0.5  # the mask matters: those pairs dominated the loss


def test_false_negatives_are_phrases_true_of_another_image(shapes_corpus):
    from xmr.evaluation.datasets import load_dataset
    from xmr.training.corpus import Scene, is_phrase_true
    from xmr.training.phrase_truth import PhraseTruth

    path = shapes_corpus.captions_path
    train = load_dataset(path, split="train", phrases=True)
    truth = PhraseTruth.of_dataset(path, train)
    records = [r for r in json.loads(path.read_text())["images"] if r["split"] == "train"]
    images = np.arange(64)
    phrases = np.array([train.image_to_texts[i][-1] for i in images])  # a phrase each
    sentences = np.array([train.image_to_texts[i][0] for i in images])
    for i, c in zip(images, phrases, strict=True):
        assert train.captions[c] in records[i]["phrases"]

    mask = truth.false_negatives(images, phrases)
    scenes = [Scene.from_json(records[i]["scene"]) for i in images]
    want = np.array(
        [
            [i != j and is_phrase_true(scenes[i], train.captions[c]) for j, c in enumerate(phrases)]
            for i in images
        ]
    )
    assert mask.shape == (64, 64) and not mask.diagonal().any()
    assert (mask == want).all()
    assert mask.sum() >= 10  # "circles", "two shapes" ... hold of many scenes
    assert not truth.false_negatives(images, sentences).any()  # a sentence is one scene's


@pytest.mark.slow
def test_masking_needs_phrases_and_trains_with_them(shapes_corpus, train_config_path, tmp_path):
    from conftest import tiny_encoder_run

    from xmr.retrieval.errors import InputError
    from xmr.training.encoder_training import train_encoder

    out = tmp_path / "run"
    masked = dict(max_steps=2, mask_true_phrases=True)
    with pytest.raises(InputError, match="--phrases"):
        train_encoder(tiny_encoder_run(shapes_corpus, train_config_path, out, **masked))
    config = tiny_encoder_run(shapes_corpus, train_config_path, out, phrases=True, **masked)
    state = train_encoder(config)
    assert state.step == 2 and np.isfinite(state.history[-1]["loss"])
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())
    assert log["config"]["mask_true_phrases"] is True
