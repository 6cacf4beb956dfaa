"""Model specs (`--model NAME[:PRETRAINED]`) and the open_clip encoder built from them."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import TINY_CFG

from xmr.retrieval.errors import InvalidModelSpec
from xmr.retrieval.modelspec import HUB_CONFIG_FILE, HUB_WEIGHTS_FILE, parse_model_spec

TEXTS = ["a red circle", "blue", "two green squares on a white background"]


# -- parsing -----------------------------------------------------------------------------
def test_openclip_name_and_tag():
    spec = parse_model_spec(" ViT-B-32:laion2b_s34b_b79k ")
    assert (spec.kind, spec.name, spec.pretrained) == ("openclip", "ViT-B-32", "laion2b_s34b_b79k")
    assert not spec.random_weights
    assert spec.canonical == "ViT-B-32:laion2b_s34b_b79k"
    assert parse_model_spec("ViT-B-32:NONE").pretrained == "none"
    assert parse_model_spec("ViT-B-32:none").random_weights


def test_openclip_name_without_weights_is_refused():
    with pytest.raises(InvalidModelSpec, match="needs weights") as err:
        parse_model_spec("ViT-B-32")
    assert "ViT-B-32:none" in str(err.value)  # the message says how to fix it
    with pytest.raises(InvalidModelSpec, match="empty"):
        parse_model_spec("  ")


def test_config_json_with_random_weights(tiny_config, tmp_path, monkeypatch):
    spec = parse_model_spec(f"{tiny_config}:none")
    assert spec.kind == "config" and spec.random_weights
    assert spec.name == str(tiny_config.resolve())
    ident = spec.identity()
    assert ident["config_sha1"] and ident["pretrained"] == "none"

    # A relative spec resolves to the same model; its canonical form works from anywhere.
    monkeypatch.chdir(tiny_config.parent)
    relative = parse_model_spec(f"{tiny_config.name}:none")
    assert relative.identity() == ident
    monkeypatch.chdir(tmp_path)
    assert parse_model_spec(relative.canonical).identity() == ident

    # The same path with other contents is another model.
    other = tmp_path / "tiny.json"
    other.write_text(json.dumps({**TINY_CFG, "embed_dim": 16}))
    assert parse_model_spec(f"{other}:none").identity()["config_sha1"] != ident["config_sha1"]


def test_config_json_needs_weights_and_must_exist(tiny_config, tmp_path):
    with pytest.raises(InvalidModelSpec, match="needs weights"):
        parse_model_spec(str(tiny_config))
    with pytest.raises(InvalidModelSpec, match="does not exist"):
        parse_model_spec(f"{tmp_path / 'nope.json'}:none")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidModelSpec, match="not valid JSON"):
        parse_model_spec(f"{bad}:none")
    not_a_model = tmp_path / "other.json"
    not_a_model.write_text(json.dumps({"hello": 1}))
    with pytest.raises(InvalidModelSpec, match="embed_dim/vision_cfg/text_cfg"):
        parse_model_spec(f"{not_a_model}:none")


def test_missing_checkpoint_path_is_refused(tiny_config, tmp_path):
    for missing in (tmp_path / "w.safetensors", "missing.safetensors", "~/nope/w.pt"):
        with pytest.raises(InvalidModelSpec, match="does not exist"):
            parse_model_spec(f"{tiny_config}:{missing}")
    with pytest.raises(InvalidModelSpec, match="does not exist"):
        parse_model_spec(f"ViT-B-32:{tmp_path}/open_clip_model.bin")


def test_existing_checkpoint_path_is_resolved_and_sized(tiny_config, tmp_path, monkeypatch):
    ckpt = tmp_path / "w.safetensors"
    ckpt.write_bytes(b"x" * 10)
    monkeypatch.chdir(tmp_path)
    spec = parse_model_spec(f"{tiny_config}:w.safetensors")
    assert spec.pretrained == str(ckpt.resolve())
    assert spec.identity()["pretrained_bytes"] == 10
    ckpt.write_bytes(b"x" * 11)  # a replaced checkpoint is another model
    assert spec.identity()["pretrained_bytes"] == 11


def test_folder_in_hub_layout(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    with pytest.raises(InvalidModelSpec, match=HUB_CONFIG_FILE):
        parse_model_spec(str(folder))
    (folder / HUB_CONFIG_FILE).write_text(json.dumps({"model_cfg": TINY_CFG}))
    (folder / HUB_WEIGHTS_FILE).write_bytes(b"w" * 7)
    spec = parse_model_spec(str(folder))
    assert (spec.kind, spec.name, spec.pretrained) == ("folder", str(folder.resolve()), None)
    assert spec.identity()["weights_bytes"] == 7
    # The folder's config file, named directly, loads the folder (config + its weights).
    via_json = parse_model_spec(str(folder / HUB_CONFIG_FILE))
    assert (via_json.kind, via_json.name) == ("folder", str(folder.resolve()))
    # ... unless other weights are named.
    assert parse_model_spec(f"{folder / HUB_CONFIG_FILE}:none").kind == "config"


# -- the encoder -------------------------------------------------------------------------
def _pixels(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g)


def test_vectors_are_unit_norm_and_token_shapes_match(encoder):
    images = encoder.encode_images(_pixels(3))
    texts = encoder.encode_texts(TEXTS)
    side = TINY_CFG["vision_cfg"]["image_size"] // TINY_CFG["vision_cfg"]["patch_size"]
    d = TINY_CFG["embed_dim"]
    assert encoder.dim == d
    assert tuple(encoder.image_token_shape) == (side * side, d)
    assert tuple(encoder.text_token_shape) == (TINY_CFG["text_cfg"]["context_length"], d)
    for enc, n in ((images, 3), (texts, len(TEXTS))):
        assert enc.vectors.shape == (n, d) and enc.vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(enc.vectors, axis=1), 1.0, atol=1e-5)
        assert enc.tokens.dtype == np.float16
    assert images.tokens.shape[1:] == tuple(encoder.image_token_shape)
    assert texts.tokens.shape[1:] == tuple(encoder.text_token_shape)
    # Valid text tokens: start + words + end (SimpleTokenizer pads with 0).
    ids = encoder.tokenizer(TEXTS)
    assert texts.lengths.tolist() == (ids != 0).sum(dim=1).tolist()
    assert texts.lengths.tolist()[:2] == [5, 3]
    # Token features are switched off again after use.
    assert encoder.model.visual.output_tokens is False


def test_vectors_match_open_clips_own_encoders(encoder):
    """Our token-returning forward passes must give exactly open_clip's pooled embeddings."""
    texts = encoder.encode_texts(TEXTS)
    pixels = _pixels(4, seed=1)
    images = encoder.encode_images(pixels)
    with torch.inference_mode():
        ref_text = encoder.model.encode_text(encoder.tokenizer(TEXTS), normalize=True).numpy()
        ref_image = encoder.model.encode_image(pixels, normalize=True).numpy()
    np.testing.assert_allclose(texts.vectors, ref_text, atol=1e-5)
    np.testing.assert_allclose(images.vectors, ref_image, atol=1e-5)
    # The pooled text vector is the projected end-of-text token: tokens live in the same space.
    eot = encoder.tokenizer(TEXTS).argmax(dim=1).numpy()
    at_eot = texts.tokens[np.arange(len(TEXTS)), eot].astype(np.float32)
    at_eot /= np.linalg.norm(at_eot, axis=1, keepdims=True)
    np.testing.assert_allclose(at_eot, texts.vectors, atol=5e-3)


def test_random_weights_are_seeded_and_leave_global_rng_alone(encoder, tiny_spec):
    from xmr.retrieval.encoder import load_encoder

    torch.manual_seed(1234)
    expected_draw = torch.rand(3)
    torch.manual_seed(1234)
    again = load_encoder(tiny_spec, "cpu")
    assert torch.equal(torch.rand(3), expected_draw)  # loading did not consume the RNG

    pixels = _pixels(2, seed=2)
    np.testing.assert_array_equal(
        again.encode_images(pixels).vectors, encoder.encode_images(pixels).vectors
    )
    np.testing.assert_array_equal(
        again.encode_texts(TEXTS).vectors, encoder.encode_texts(TEXTS).vectors
    )
    assert again.identity() == encoder.identity()


def test_hub_folder_and_checkpoint_load_the_same_weights(encoder, tmp_path):
    """Saving the tiny model in open_clip's hub layout and loading it back gives its vectors."""
    import open_clip
    from safetensors.torch import save_file

    from xmr.retrieval.encoder import load_encoder

    folder = tmp_path / "tiny-hub"
    folder.mkdir()
    state = {k: v.contiguous() for k, v in encoder.model.state_dict().items()}
    save_file(state, folder / HUB_WEIGHTS_FILE)
    preprocess_cfg = {
        "mean": list(open_clip.OPENAI_DATASET_MEAN),
        "std": list(open_clip.OPENAI_DATASET_STD),
    }
    (folder / HUB_CONFIG_FILE).write_text(
        json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": preprocess_cfg})
    )
    plain_cfg = tmp_path / "tiny-plain.json"
    plain_cfg.write_text(json.dumps(TINY_CFG))

    pixels = _pixels(3, seed=3)
    want_img = encoder.encode_images(pixels).vectors
    want_txt = encoder.encode_texts(TEXTS).vectors
    for spec in (str(folder), f"{plain_cfg}:{folder / HUB_WEIGHTS_FILE}"):
        loaded = load_encoder(spec, "cpu")
        assert not loaded.random_weights
        np.testing.assert_allclose(loaded.encode_images(pixels).vectors, want_img, atol=1e-6)
        np.testing.assert_allclose(loaded.encode_texts(TEXTS).vectors, want_txt, atol=1e-6)


def test_unknown_openclip_model_lists_choices():
    from xmr.retrieval.encoder import load_encoder

    with pytest.raises(InvalidModelSpec, match="Unknown model 'NoSuchNet-9'") as err:
        load_encoder("NoSuchNet-9:none", "cpu")
    assert "ViT-B-32" in str(err.value)  # the available models are listed


def test_unknown_pretrained_tag_lists_tags():
    from xmr.retrieval.encoder import load_encoder

    with pytest.raises(InvalidModelSpec, match="Unknown pretrained tag 'nosuchtag'") as err:
        load_encoder("ViT-B-32:nosuchtag", "cpu")
    assert "laion2b_s34b_b79k" in str(err.value)


def test_lazy_encoder_loads_only_when_used(tiny_spec):
    from xmr.retrieval.encoder import LazyEncoder

    lazy = LazyEncoder(tiny_spec, "cpu")
    assert not lazy.loaded
    assert lazy.spec.identity() == parse_model_spec(tiny_spec).identity()
    assert not lazy.loaded  # the spec and its identity need no model
    assert lazy.dim == TINY_CFG["embed_dim"]
    assert lazy.loaded


def test_checkpoint_that_does_not_fit_is_a_clear_error(tiny_config, tmp_path):
    from safetensors.torch import save_file

    from xmr.retrieval.encoder import load_encoder
    from xmr.retrieval.errors import ModelNotAvailable

    folder = tmp_path / "wrong"
    folder.mkdir()
    (folder / HUB_CONFIG_FILE).write_text(json.dumps({"model_cfg": TINY_CFG}))
    save_file({"nothing": torch.zeros(2)}, folder / HUB_WEIGHTS_FILE)
    # A typed error (the CLI's one-line `Error:`), not torch's RuntimeError (a traceback).
    with pytest.raises(ModelNotAvailable, match=f"cannot load model {folder}") as err:
        load_encoder(str(folder), "cpu")
    assert "state_dict" in str(err.value)
    wrong_ckpt = f"{tiny_config}:{folder / HUB_WEIGHTS_FILE}"
    with pytest.raises(ModelNotAvailable, match="cannot load model .*state_dict"):
        load_encoder(wrong_ckpt, "cpu")


# -- loading only what is needed, and never changing the model afterwards --------------
def test_text_tower_alone_gives_the_whole_models_text_vectors(encoder, tmp_path):
    """A safetensors checkpoint's text weights build the text tower alone: same vectors and
    tokens as both towers, and no image tower in memory."""
    import open_clip
    from safetensors.torch import save_file

    from xmr.retrieval.encoder import Encoder, load_encoder, load_text_encoder

    folder = tmp_path / "tiny-hub"
    folder.mkdir()
    save_file(
        {k: v.contiguous() for k, v in encoder.model.state_dict().items()},
        folder / HUB_WEIGHTS_FILE,
    )
    mean, std = list(open_clip.OPENAI_DATASET_MEAN), list(open_clip.OPENAI_DATASET_STD)
    (folder / HUB_CONFIG_FILE).write_text(
        json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": {"mean": mean, "std": std}})
    )
    for spec in (str(folder), "xmr-tiny"):
        text_only = load_text_encoder(spec, "cpu")
        assert not isinstance(text_only, Encoder) and not hasattr(text_only, "model")
        n_params = sum(p.numel() for p in text_only._text.parameters())
        whole = load_encoder(spec, "cpu")
        assert n_params < sum(p.numel() for p in whole.model.parameters())
        got, want = text_only.encode_texts(TEXTS), whole.encode_texts(TEXTS)
        np.testing.assert_array_equal(got.vectors, want.vectors)
        np.testing.assert_array_equal(got.tokens, want.tokens)
        np.testing.assert_array_equal(got.lengths, want.lengths)
        assert (text_only.dim, text_only.text_token_shape) == (whole.dim, whole.text_token_shape)
        assert text_only.identity() == whole.identity()


def test_random_weights_load_both_towers_for_text(tiny_spec, encoder):
    """Random weights are drawn for the whole model; a text tower drawn alone would differ."""
    from xmr.retrieval.encoder import Encoder, load_text_encoder

    loaded = load_text_encoder(tiny_spec, "cpu")
    assert isinstance(loaded, Encoder)
    np.testing.assert_array_equal(
        loaded.encode_texts(TEXTS).vectors, encoder.encode_texts(TEXTS).vectors
    )


def test_loading_runs_no_forward_pass_and_encoding_changes_nothing(tiny_spec):
    """Shapes come from the modules (no probe pass at start-up); encoding sets no flag and
    leaves no hook, so threads may share one encoder."""
    from xmr.retrieval.encoder import load_encoder

    calls = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, *_: calls.append(type(module).__name__)
    )
    try:
        encoder = load_encoder(tiny_spec, "cpu")
    finally:
        handle.remove()
    assert calls == []
    blocks = encoder.model.visual.transformer.resblocks
    state = lambda: (  # noqa: E731
        encoder.model.visual.output_tokens,
        [len(b._forward_hooks) for b in blocks],
        sum(p.sum().item() for p in encoder.model.parameters()),
    )
    before = state()
    pixels = _pixels(2, seed=4)
    expected = {layer: encoder.encode_images(pixels, layer) for layer in (None, 0, 1)}
    assert state() == before

    from concurrent.futures import ThreadPoolExecutor

    jobs = [None, 0, 1] * 6
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda layer: (layer, encoder.encode_images(pixels, layer)), jobs))
    for layer, got in results:  # every thread got its own block's tokens
        np.testing.assert_array_equal(got.tokens, expected[layer].tokens)
        np.testing.assert_array_equal(got.vectors, expected[None].vectors)
    assert state() == before


# -- where weights come from -------------------------------------------------------------
def test_uncached_weights_download_only_when_allowed_and_reachable(tmp_path, monkeypatch):
    """Not on disk: XMR_OFFLINE forbids, an unreachable host fails at once with the way out,
    a reachable one is left to open_clip's download (hub online, with its progress bar)."""
    import socket
    import time

    from xmr.retrieval.errors import ModelNotAvailable
    from xmr.retrieval.weights import prepare_weights

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nothing cached here
    spec = parse_model_spec("ViT-B-32:laion2b_s34b_b79k")

    monkeypatch.setenv("XMR_OFFLINE", "1")
    with pytest.raises(ModelNotAvailable, match="XMR_OFFLINE is set") as err:
        prepare_weights(spec)
    assert "xmr-tiny" in str(err.value)
    monkeypatch.delenv("XMR_OFFLINE")

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens here: refused at once
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(ModelNotAvailable, match="127.0.0.1 cannot be reached"):
        prepare_weights(spec)
    assert time.monotonic() - started < 5

    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(1)
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{listening.getsockname()[1]}")
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        prepare_weights(spec)  # reachable: no refusal, and the hub is not put offline
        assert os.environ["HF_HUB_OFFLINE"] == "0"
    finally:
        listening.close()
