"""`xmr train-reranker --family blip-itm`: transformers' BlipForImageTextRetrieval trained
with the ITM loss on stage-1 hard negatives, written as a Hugging Face folder.

Real parts throughout: a generated corpus, xmr-tiny as stage 1, a small random BlipConfig
built by the command's own `config:` start, transformers' model and tokenizer classes.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

# Small enough to take a hundred optimizer steps in seconds on one core: 32 px images in
# 8 px patches (17 vision tokens), width 64, two layers each side.
TEST_CFG = {
    "vision_config": {
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    },
    "text_config": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "encoder_hidden_size": 64,
        "max_position_embeddings": 48,
    },
    "image_text_hidden_size": 32,
}
TRAIN_IMAGES = 16  # the pairs the lift is measured on: one batch, so a short run learns them
STEPS = 100
SEED = 3


@pytest.fixture(scope="module")
def blip_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("blipcfg") / "blip-test.json"
    path.write_text(json.dumps(TEST_CFG))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from xmr.training.corpus import make_corpus

    return make_corpus(tmp_path_factory.mktemp("blipcorpus") / "shapes", 200, seed=11)


def _train_config(corpus, blip_config, out, steps=STEPS):
    from xmr.training.blip_training import BlipTrainConfig

    return BlipTrainConfig(
        data=str(corpus.captions_path),
        out=str(out),
        init_from=f"config:{blip_config}",
        steps=steps,
        batch_size=16,
        max_train_images=TRAIN_IMAGES,
        warmup_steps=10,
        rank_weight=1.0,  # the measure below is pairwise ranking by the match logit
        val_images=20,
        seed=SEED,
        threads=1,
    )


def _start(corpus, blip_config):
    """The model the trainer starts from: same seed, same config, same captions."""
    from xmr.evaluation.datasets import load_dataset
    from xmr.training.blip_training.start import load_start
    from xmr.training.runs import seed_everything

    train = load_dataset(corpus.captions_path, split="train").head(TRAIN_IMAGES)
    seed_everything(SEED)
    return load_start(f"config:{blip_config}", train.captions), train


def _hard_pair_accuracy(model, split, image_source=None) -> float:
    """How often a caption's match logit with its own image beats the logit with its
    stage-1 hardest other image. image_source: the image whose vision tokens stand in for
    each image id (the shuffled control)."""
    from xmr.training.blip_training.itm import MATCH, itm_logits, vision_states

    t2i = np.asarray(split.dataset.text_to_image)
    sims = split.stage1.copy()  # (T, N)
    sims[np.arange(len(t2i)), t2i] = -np.inf
    hard = sims.argmax(1)  # (T,) stage-1 look-alike of each caption's image
    n = split.dataset.n_images
    source = torch.as_tensor(np.arange(n) if image_source is None else image_source)
    with torch.no_grad():
        states = vision_states(model.eval(), split.pixels.float())[source]
        true = itm_logits(model, split.input_ids, split.lengths, states, torch.as_tensor(t2i))
        false = itm_logits(model, split.input_ids, split.lengths, states, torch.as_tensor(hard))
    return float((true[:, MATCH] > false[:, MATCH]).float().mean())


@pytest.fixture(scope="module")
def trained_blip(corpus, blip_config, tmp_path_factory):
    """(out folder, state) of a STEPS-step run from the test config."""
    from xmr.training.blip_training import train_blip_reranker

    out = tmp_path_factory.mktemp("blipout") / "matcher"
    return out, train_blip_reranker(_train_config(corpus, blip_config, out))


@pytest.mark.slow
def test_training_lifts_true_pairs_over_hard_negatives(trained_blip, corpus, blip_config):
    """The loss falls, and after training a caption's own image outscores its stage-1
    look-alike more often than before; with the images' features shuffled between ids
    the same model shows no such lift."""
    from transformers import AutoTokenizer, BlipForImageTextRetrieval, BlipImageProcessor

    from xmr.retrieval.encoder import load_encoder
    from xmr.training.blip_training.data import split_tensors

    out, state = trained_blip
    assert state.step == STEPS
    first, last = np.mean(state.losses[:10]), np.mean(state.losses[-10:])
    assert last < first - 0.3, (first, last)

    start, train = _start(corpus, blip_config)
    encoder = load_encoder("xmr-tiny", "cpu")
    split = split_tensors(train, start.tokenizer, start.processor, encoder, 40)
    before = _hard_pair_accuracy(start.model, split)

    trained = BlipForImageTextRetrieval.from_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    processor = BlipImageProcessor.from_pretrained(str(out))
    reloaded = split_tensors(train, tokenizer, processor, encoder, 40)
    # The folder's tokenizer and processor give exactly what training read.
    assert torch.equal(reloaded.input_ids, split.input_ids)
    assert torch.equal(reloaded.pixels, split.pixels)
    after = _hard_pair_accuracy(trained, reloaded)
    n = train.n_images
    derangement = (np.arange(n) + 1 + np.random.default_rng(0).integers(n - 1)) % n
    shuffled = _hard_pair_accuracy(trained, reloaded, derangement)
    assert after > before + 0.15, (before, after)
    assert shuffled < after - 0.15, (shuffled, after)


@pytest.mark.slow
def test_folder_reloads_the_trained_model(trained_blip):
    """from_pretrained on the folder gives the logits of the weights training ended with
    (its last checkpoint), and the train log says what was done and how ITM reads text."""
    from transformers import BlipForImageTextRetrieval, BlipProcessor

    from xmr.training.blip_training import checkpoints

    out, state = trained_blip
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= names
    assert "tokenizer_config.json" in names
    in_memory = checkpoints.model_from_checkpoint(checkpoints.load_checkpoint(out, "cpu"))
    reloaded = BlipForImageTextRetrieval.from_pretrained(str(out))
    processor = BlipProcessor.from_pretrained(str(out))  # the scorer may read it this way
    from PIL import Image

    images = [Image.new("RGB", (40, 30), c) for c in ("red", "blue")]
    inputs = processor(
        images=images,
        text=["a red circle left of a blue square.", "a big blue square."],
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        a = in_memory.eval()(**inputs, use_itm_head=True).itm_score
        b = reloaded.eval()(**inputs, use_itm_head=True).itm_score
    assert a.shape == (2, 2)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert not torch.allclose(a[0], a[1])  # the pairs differ, so must their logits

    log = json.loads((out / "train_log.json").read_text())
    assert log["step"] == STEPS and len(log["losses"]) == STEPS
    assert log["itm_first_token"].startswith("[CLS]")
    assert log["init_from"].startswith("config:") and log["lr"] == 1e-3
    assert log["fusion"]["chosen"]["candidates"] == 16


@pytest.mark.slow
def test_a_stopped_run_resumes(trained_blip, corpus, blip_config, tmp_path):
    """Asked for more steps, a finished run continues from its checkpoint: its history is
    kept and only the new steps are taken."""
    import shutil

    from xmr.training.blip_training import train_blip_reranker

    out, state = trained_blip
    copy = tmp_path / "matcher"
    shutil.copytree(out, copy)
    more = train_blip_reranker(_train_config(corpus, blip_config, copy, steps=STEPS + 3))
    assert more.step == STEPS + 3
    assert more.losses[:STEPS] == state.losses


def test_split_pass_equals_transformers_forward(corpus, blip_config):
    """The trainer's ITM pass (vision once per image, then the text with cross-attention)
    is transformers' forward(..., use_itm_head=True) on the tokenizer's ids as given."""
    from xmr.training.blip_training.data import ProcessorPixels, tokenize
    from xmr.training.blip_training.itm import itm_logits, vision_states

    start, train = _start(corpus, blip_config)
    model = start.model.eval()
    ids, lengths = tokenize(start.tokenizer, train.captions[:6], 40)
    assert (ids[:, 0] == start.tokenizer.cls_token_id).all()  # [CLS] is the first token
    from PIL import Image

    pixels = torch.stack(
        [ProcessorPixels(start.processor)(Image.open(p)) for p in train.image_paths[:3]]
    )  # (3, 3, 32, 32)
    rows = torch.tensor([0, 1, 2, 2, 1, 0])
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    with torch.no_grad():
        split = itm_logits(model, ids, lengths, vision_states(model, pixels), rows)
        whole = model(
            input_ids=ids, attention_mask=mask, pixel_values=pixels[rows], use_itm_head=True
        ).itm_score
    torch.testing.assert_close(split, whole, atol=1e-5, rtol=0)

    # With a first token for the ITM pass (BLIP's [ENC] on hub checkpoints), the pass is
    # the forward of ids whose first token is that one, and it scores differently.
    enc = start.tokenizer.sep_token_id  # any other id stands in for [ENC] here
    swapped = ids.clone()
    swapped[:, 0] = enc
    with torch.no_grad():
        split_enc = itm_logits(model, ids, lengths, vision_states(model, pixels), rows, enc)
        whole_enc = model(
            input_ids=swapped, attention_mask=mask, pixel_values=pixels[rows], use_itm_head=True
        ).itm_score
    torch.testing.assert_close(split_enc, whole_enc, atol=1e-5, rtol=0)
    assert not torch.allclose(split_enc, split, atol=1e-4)
    assert (ids[:, 0] == start.tokenizer.cls_token_id).all()  # the caller's ids untouched


def test_config_start_has_a_live_vision_tower(corpus, blip_config):
    """BlipVisionConfig's default init (1e-10) makes every image look the same; a config
    start must not."""
    from xmr.training.blip_training.data import ProcessorPixels

    start, train = _start(corpus, blip_config)
    from PIL import Image

    pixels = torch.stack(
        [ProcessorPixels(start.processor)(Image.open(p)) for p in train.image_paths[:8]]
    )
    with torch.no_grad():
        cls = start.model.vision_model(pixel_values=pixels).last_hidden_state[:, 0]  # (8, D)
    assert cls.std(0).mean() > 1e-2


def test_vocabulary_covers_the_captions_and_spells_new_words(corpus):
    from xmr.evaluation.datasets import load_dataset
    from xmr.training.blip_training.vocab import build_tokenizer, caption_words

    captions = load_dataset(corpus.captions_path, split="train").captions
    tokenizer = build_tokenizer(captions)
    for caption in captions[:20]:
        ids = tokenizer(caption)["input_ids"]
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
        pieces = tokenizer.convert_ids_to_tokens(ids[1:-1])
        assert set(pieces) <= set(caption_words([caption]))  # whole words, never [UNK]
        assert "".join(pieces) == "".join(caption.lower().split())
    zebra = tokenizer("a zebra")["input_ids"]  # a word never seen is spelled out
    assert tokenizer.convert_ids_to_tokens(zebra[2:4]) == ["z", "##e"]
    assert tokenizer.unk_token_id not in zebra


def test_hub_start_offline_fails_fast_with_a_way_out(monkeypatch, tmp_path):
    from xmr.retrieval.errors import ModelNotAvailable
    from xmr.training.blip_training.start import load_start

    monkeypatch.setenv("XMR_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    started = time.monotonic()
    with pytest.raises(ModelNotAvailable, match="config:blip-tiny") as err:
        load_start("blip-itm-base-coco", ["a red circle."])
    assert "Salesforce/blip-itm-base-coco" in str(err.value)
    assert time.monotonic() - started < 5


def test_unknown_start_names_the_choices():
    from xmr.retrieval.errors import InputError
    from xmr.training.blip_training.start import load_start

    with pytest.raises(InputError, match="blip-itm-base-coco.*config:NAME.*blip-tiny"):
        load_start("no-such-thing", ["a red circle."])
    with pytest.raises(InputError, match="shipped configs: blip-tiny"):
        load_start("config:no-such-config", ["a red circle."])


def test_cli_refuses_native_options_with_blip(cli, corpus, tmp_path):
    result = cli(
        "train-reranker", corpus.captions_path, "--out", tmp_path / "m",
        "--family", "blip-itm", "--width", "32", "--image-stem", "conv",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "--width, --image-stem" in result.output and "native" in result.output
    result = cli("train-reranker", corpus.captions_path, "--out", tmp_path / "m", "--family", "x")
    assert result.exit_code == 1 and "native or blip-itm" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without")
def test_cli_cuda_without_a_gpu_fails_before_any_work(cli, corpus, tmp_path):
    out = tmp_path / "m"
    result = cli(
        "train-reranker", corpus.captions_path, "--out", out, "--family", "blip-itm",
        "--init-from", "config:blip-tiny", "--device", "cuda",
    )  # fmt: skip
    assert result.exit_code == 1 and "no CUDA GPU" in result.output
    assert "Traceback" not in result.output and not out.exists()
