"""BLIP ITM as xmr's second re-ranker family: xmr's scores are transformers' own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from blip_fixtures import save_tiny_blip, write_photos
from PIL import Image

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


# -- through the engine: kept features, on-demand features, image -> text ------------------
def index_photos(index_dir, photos_dir, tiny_spec, reranker, form="fp16"):
    from xmr.engine.writes import index_images

    return index_images(index_dir, [photos_dir], model=tiny_spec, reranker=reranker,
                        feature_form=form)  # fmt: skip


def reference_fused(folder, matcher, text, paths, stage1, weight):
    """transformers' logits for `text` against each file, fused by hand."""
    logits = np.array([reference_logits(folder, matcher, [text], p)[0] for p in paths])
    return logits + weight * np.asarray(stage1)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    write_photos(folder, 12, seed=3)
    return folder


@pytest.mark.parametrize("kept", [True, False], ids=["kept", "on-demand"])
def test_engine_scores_equal_transformers_and_order_by_them(
    tmp_path, tiny_spec, blip_folder, matcher, photos, kept
):
    """Kept as fp32 (the exact form) or computed on demand from the files (first query)."""
    from xmr.engine.engine import Engine

    reranker = str(blip_folder) if kept else "none"
    index_photos(tmp_path / "idx", photos, tiny_spec, reranker, form="fp32")
    engine = Engine(tmp_path / "idx", "cpu", str(blip_folder))
    engine.reranker().matcher.settings.stage1_weight = 0.1  # random stage 1: little say
    text = "a blue square on the beach"
    answer = engine.search(text, target="images", k=12, candidates=12)
    assert answer.reranked and answer.reranker == "tiny-blip"
    assert answer.as_dict()["reranker"] == "tiny-blip"
    assert (tmp_path / "idx" / "images.mvf").exists() == kept
    hits = answer.hits
    assert len(hits) == 12
    weight = engine.reranker().matcher.settings.stage1_weight
    want = reference_fused(
        blip_folder, matcher, text, [h.path for h in hits], [h.stage1_score for h in hits], weight
    )
    np.testing.assert_allclose([h.fused_score for h in hits], want, atol=1e-4)
    # the fused order is the order of those scores, sorted by hand
    by_hand = [hits[i].id for i in np.argsort(-want, kind="stable")]
    assert [h.id for h in hits] == by_hand
    stage1_order = sorted(hits, key=lambda h: -h.stage1_score)
    assert [h.id for h in stage1_order] != by_hand  # the re-ranker did reorder
    # asked again, from the search-time cache when on demand: the same scores
    again = engine.search(text, target="images", k=12, candidates=12)
    assert [(h.id, h.score) for h in again.hits] == [(h.id, h.score) for h in hits]


@pytest.mark.parametrize("kept", [True, False], ids=["kept", "on-demand"])
def test_image_to_text_scores_equal_transformers(
    tmp_path, tiny_spec, blip_folder, matcher, photos, kept
):
    """The query image's vision tokens: read from the index (fp32) or computed once."""
    from xmr.engine.engine import Engine
    from xmr.engine.query_input import QueryInput
    from xmr.engine.writes import add_text_corpus

    reranker = str(blip_folder) if kept else "none"
    index_photos(tmp_path / "idx", photos, tiny_spec, reranker, form="fp32")
    corpus = tmp_path / "captions.txt"
    corpus.write_text("\n".join(TEXTS + ["a cat on the beach", "red dog", "blue"]) + "\n")
    add_text_corpus(tmp_path / "idx", corpus, model=tiny_spec)
    engine = Engine(tmp_path / "idx", "cpu", str(blip_folder))
    query = sorted(photos.iterdir())[4]
    answer = engine.search(QueryInput(image_path=query), target="texts", k=7, candidates=7)
    assert answer.reranked and answer.reranker == "tiny-blip"
    texts = [h.text for h in answer.hits]
    weight = engine.reranker().matcher.settings.stage1_weight
    want = reference_logits(blip_folder, matcher, texts, query) + weight * np.array(
        [h.stage1_score for h in answer.hits]
    )
    np.testing.assert_allclose([h.fused_score for h in answer.hits], want, atol=1e-4)
    assert np.all(np.diff(want) <= 1e-9)  # best first, as sorting by hand gives


def test_a_folder_sets_its_stage1_weight(tmp_path):
    import json

    folder = save_tiny_blip(tmp_path / "calibrated")
    (folder / "xmr_matcher.json").write_text(json.dumps({"stage1_weight": 2.5}))
    loaded = load_matcher(matcher_source(str(folder)), "cpu")
    assert loaded.settings.stage1_weight == 2.5
    logits, stage1 = np.array([1.0, 0.0]), np.array([0.1, 0.5])
    np.testing.assert_allclose(loaded.final_scores(logits, stage1), [1.25, 1.25])


def test_xmr_bench_measures_blip_and_sweeps_the_stage1_weight(tmp_path, blip_folder, tiny_spec):
    """A Karpathy-format file through `xmr bench --reranker FOLDER`: stage 1 and 2 rows, the
    sweep of stage-1 weights, and which won."""
    import json

    from conftest import run_xmr

    photos = write_photos(tmp_path / "images", 6, seed=9)
    records = [
        {"filename": p.name, "split": "test", "sentences": [{"raw": TEXTS[i % 4]},
                                                             {"raw": f"{TEXTS[(i + 1) % 4]} dog"}]}
        for i, p in enumerate(photos)
    ]  # fmt: skip
    data = tmp_path / "dataset_tiny.json"
    data.write_text(json.dumps({"dataset": "tiny", "images": records}))
    out = tmp_path / "bench.json"
    done = run_xmr("bench", data, "--images-root", tmp_path / "images", "--model", tiny_spec,
                   "--reranker", blip_folder, "--candidates", 4, "--json", out, "--no-cache",
                   "--quiet")  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["reranker"] == "tiny-blip"
    assert {"exact", "rerank", "rerank_itm"} <= set(result["results"])
    sweep = result["fusion"]["sweep"]
    assert [row["stage1_weight"] for row in sweep] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0]
    best = max(sweep, key=lambda r: r["t2i_R@1"] + r["i2t_R@1"])
    won = next(r for r in sweep if r["stage1_weight"] == result["fusion"]["best_stage1_weight"])
    assert won["t2i_R@1"] + won["i2t_R@1"] == best["t2i_R@1"] + best["i2t_R@1"]
    assert f"Best on this data: w = {result['fusion']['best_stage1_weight']:g}" in done.stdout
