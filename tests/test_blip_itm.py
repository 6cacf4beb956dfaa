"""BLIP ITM as xmr's second re-ranker family: xmr's scores are transformers' own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.blip_fixtures import save_tiny_blip, write_photos
from xmr.retrieval.blip_itm import load_matcher
from xmr.retrieval.matcher_names import matcher_source

TEXTS = ["a red circle", "a blue square on the beach", "a dog left of a cat", "green"]


@pytest.fixture(scope="module")
def blip_folder(tmp_path_factory):
    return save_tiny_blip(tmp_path_factory.mktemp("blip") / "tiny-blip")


@pytest.fixture(scope="module")
def matcher(blip_folder):
    return load_matcher(matcher_source(str(blip_folder)), "cpu")


def reference_logits(folder, matcher, texts, image_path):
    """transformers' own forward, on the ids xmr feeds it and the image's pixels."""
    from transformers import BlipForImageTextRetrieval

    model = BlipForImageTextRetrieval.from_pretrained(folder).eval()
    ids, mask = matcher.text_inputs(texts)
    pixels = matcher.preprocess(Image.open(image_path).convert("RGB"))[None]
    pixels = pixels.expand(len(texts), -1, -1, -1)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels, attention_mask=mask, use_itm_head=True)
    return out.itm_score[:, 1].numpy()


def test_scores_equal_transformers_forward(blip_folder, matcher, tmp_path):
    (photo,) = write_photos(tmp_path, 1)
    pixels = matcher.preprocess(Image.open(photo).convert("RGB"))[None]
    vision = matcher.vision_features(pixels)  # (1, 17, 48)
    assert vision.shape == (1, 17, 48)
    ours = matcher.match_texts(vision[0], TEXTS)
    want = reference_logits(blip_folder, matcher, TEXTS, photo)
    np.testing.assert_allclose(ours, want, atol=1e-4)
    assert np.ptp(want) > 1e-2  # the texts score differently: the comparison means something


def test_enc_token_first_when_the_model_has_one(matcher, tmp_path):
    ids, _ = matcher.text_inputs(["a red circle"])
    assert matcher.enc_token_id == matcher.tokenizer.convert_tokens_to_ids("[ENC]")
    assert ids[0, 0].item() == matcher.enc_token_id
    assert ids[0, 0].item() != matcher.tokenizer.cls_token_id
    # and the first token matters: [CLS] first gives another score
    (photo,) = write_photos(tmp_path, 1)
    vision = matcher.vision_features(matcher.preprocess(Image.open(photo).convert("RGB"))[None])
    cls_ids = ids.clone()
    cls_ids[:, 0] = matcher.tokenizer.cls_token_id
    mask = torch.ones_like(ids)
    with_enc = matcher.itm_logits(ids, mask, vision)
    with_cls = matcher.itm_logits(cls_ids, mask, vision)
    assert abs(with_enc[0] - with_cls[0]) > 1e-4


def test_cls_kept_without_an_enc_token(tmp_path):
    folder = save_tiny_blip(tmp_path / "no-enc", with_enc=False)
    plain = load_matcher(matcher_source(str(folder)), "cpu")
    assert plain.enc_token_id is None
    ids, _ = plain.text_inputs(["a red circle"])
    assert ids[0, 0].item() == plain.tokenizer.cls_token_id


def test_blip_vocabulary_layout_gives_enc_as_last_word():
    from xmr.retrieval.blip_itm import BLIP_VOCAB, enc_token_id

    class BertOnly:  # bert-base-uncased's 30522 words, no [ENC] of its own
        unk_token_id = 100

        def convert_tokens_to_ids(self, token):
            return self.unk_token_id

        def __len__(self):
            return 30522

    assert enc_token_id(BertOnly(), BLIP_VOCAB) == 30523
    assert enc_token_id(BertOnly(), 30522) is None
