"""Grounding targets for the relation term's looks (training/reranker_training/grounding.py):
built from a real generated corpus and the shipped encoder's tokenizer, checked against
the scenes word by word, and the loss against the same cross-entropy written out."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import prepared_training

from xmr.training.corpus.scenes import COLOURS, SHAPES


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The trainer's training data with --grounding on, for 40 generated scenes."""
    return prepared_training(
        tmp_path_factory.mktemp("ground"), seed=5, relation_readout=True, grounding=8
    )


def _scenes(config, data):
    from xmr.training.corpus.records import dataset_records
    from xmr.training.corpus.scenes import Scene

    return [Scene.from_json(r["scene"]) for r in dataset_records(config.data, data.train, "")]


def test_every_target_is_a_word_that_names_one_object_at_its_patch(prepared):
    config, encoder, data, _ = prepared
    targets = data.grounding
    scenes = _scenes(config, data)
    vocab = {w: encoder.tokenizer([w])[0] for w in [*COLOURS, *SHAPES]}
    last_token = {w: int(ids[int((ids != 0).sum()) - 2]) for w, ids in vocab.items()}
    ids = encoder.tokenizer(list(data.train.captions)).numpy()
    assert len(np.unique(targets.captions)) > len(data.train.captions) / 2
    by_kind = {"colour": 0, "shape": 0}
    for caption, position, patch in zip(
        targets.captions, targets.positions, targets.patches, strict=True
    ):
        scene = scenes[data.train.text_to_image[caption]]
        token = int(ids[caption, position])
        named = [
            (kind, o)
            for o in scene.objects
            for kind, word in (("colour", o.colour), ("shape", o.shape))
            if last_token[word] == token
        ]
        assert len(named) == 1, (data.train.captions[caption], position)  # one object only
        kind, obj = named[0]
        by_kind[kind] += 1
        assert patch == (obj.y * 8 // scene.canvas) * 8 + obj.x * 8 // scene.canvas
        # The word is that object's: the caption says it, and no other object shares it.
        assert sum(getattr(o, kind) == getattr(obj, kind) for o in scene.objects) == 1
    assert by_kind["colour"] > 0 and by_kind["shape"] > 0


def test_a_colour_that_names_the_background_or_two_objects_gets_no_target(prepared):
    config, encoder, data, _ = prepared
    from xmr.training.corpus.scenes import Scene, SceneObject
    from xmr.training.reranker_training.grounding import grounding_targets

    scene = Scene(
        background="red",
        objects=(
            SceneObject("circle", "red", "big", 10, 40),
            SceneObject("square", "blue", "small", 50, 12),
            SceneObject("star", "blue", "small", 30, 30),
        ),
        relation=None,
    )

    class One:  # the fields grounding_targets reads of a dataset
        captions = ["On a red background, a red circle, a blue square and a blue star."]
        text_to_image = np.array([0])

    targets = grounding_targets([scene], One, encoder.tokenizer, side=8)
    ids = encoder.tokenizer(One.captions)[0].numpy()
    words = {int(encoder.tokenizer([w])[0][1]): w for w in ("red", "circle", "square", "star")}
    got = sorted((words[int(ids[p])], int(patch)) for p, patch in zip(
        targets.positions, targets.patches, strict=True))  # fmt: skip
    # "red" once (the circle's, not the background's), each shape once; "blue": two objects.
    assert got == sorted([("red", 5 * 8 + 1), ("circle", 5 * 8 + 1), ("square", 1 * 8 + 6),
                          ("star", 3 * 8 + 3)])  # fmt: skip


def test_grounding_loss_is_the_cross_entropy_of_each_words_looks(prepared):
    from xmr.retrieval.reranker import text_mask
    from xmr.training.reranker_training.grounding import grounding_loss

    _, _, data, model = prepared
    f = data.tensors
    targets = data.grounding.of_captions(5, np.random.default_rng(3))
    got = grounding_loss(model, targets, data.train.text_to_image, f)
    losses = []
    with torch.no_grad():
        for caption, position, patch in zip(
            targets.captions, targets.positions, targets.patches, strict=True
        ):
            image = f.image_tokens[data.train.text_to_image[caption]][None].float()
            length = f.text_lengths[caption : caption + 1]
            text = f.text_tokens[caption : caption + 1, : int(length)].float()
            states = model.encode_images(image)
            words = model.text_states(text, text_mask(length, int(length)), states)[:, 1:]
            looks = model.word_looks(words, states)
            losses.append(-looks[0, position].log_softmax(-1)[patch])
    assert float(got.detach()) == pytest.approx(float(torch.stack(losses).mean()), rel=1e-4)
    got.backward()  # it teaches the looks: the key and query projections get a gradient
    assert float(model.relation_query.weight.grad.norm()) > 0
    assert float(model.relation_key.weight.grad.norm()) > 0


def test_grounding_is_refused_without_the_relation_term_or_without_scenes(tmp_path, prepared):
    import json
    from dataclasses import replace
    from pathlib import Path

    from xmr.retrieval.encoder import load_encoder
    from xmr.retrieval.errors import InputError
    from xmr.training.reranker_training.config import check_config
    from xmr.training.reranker_training.loop import _training_data

    config, _, _, _ = prepared
    with pytest.raises(InputError, match="--grounding .* add --relation-readout"):
        check_config(replace(config, relation_readout=False))
    corpus = json.loads(Path(config.data).read_text())
    for record in corpus["images"]:
        del record["scene"]
    bare = tmp_path / "captions.json"
    bare.write_text(json.dumps(corpus))
    images_root = str(Path(config.data).parent)
    with pytest.raises(InputError, match="no scene record.*--grounding"):
        _training_data(
            replace(config, data=str(bare), images_root=images_root),
            load_encoder("xmr-tiny", "cpu"),
            None,
        )
