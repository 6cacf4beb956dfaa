"""The re-ranker's pixel stem (retrieval/pixel_stem.py): the pixels each image token
carries are its own patch's, in the encoder's patch order; the stem starts neutral on a
re-ranker trained without it and then reads the pixels; the trainer and the index say
when it cannot be used."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_images

from xmr.retrieval.patch_pixels import patch_pixels
from xmr.retrieval.pixel_stem import pixels_of_patches
from xmr.retrieval.reranker import Reranker, RerankerConfig, start_weights, text_mask


def test_patch_rows_are_the_patches_the_encoders_tokens_come_from(encoder):
    """A ViT's patch embedding is a p x p stride-p convolution: applied to patch_pixels'
    rows as one matrix it must give the tower's own patch embeddings, patch by patch."""
    visual = encoder.model.visual
    size = visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        grid = visual.conv1(pixels)  # (B, width, S, S)
        side = grid.shape[-1]
        want = grid.flatten(2).transpose(1, 2)  # (B, S^2, width), the tokens' row-major order
        rows = torch.from_numpy(patch_pixels(pixels.numpy(), side))  # (B, S^2, 3 p^2)
        got = rows @ visual.conv1.weight.reshape(len(visual.conv1.weight), -1).T
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # A grid read column-major would put the wrong patch under every token but the diagonal.
    transposed = pixels.transpose(2, 3)
    wrong = torch.from_numpy(patch_pixels(transposed.numpy(), side))
    weight = visual.conv1.weight.reshape(len(visual.conv1.weight), -1)
    assert not torch.allclose(wrong @ weight.T, want, atol=1e-2)
    assert torch.equal(pixels_of_patches(rows, size // side), pixels)
    with pytest.raises(ValueError, match="do not split into a 5 x 5 grid"):
        patch_pixels(pixels.numpy(), 5)


def test_embedded_tokens_carry_their_images_preprocessed_pixels(tmp_path, encoder):
    from xmr.retrieval.embedding import embed_images
    from xmr.retrieval.imageio import decode_image

    paths = [str(p) for p in make_images(tmp_path, 3)]
    (plain,) = embed_images(paths, encoder, workers=0)
    (carrying,) = embed_images(paths, encoder, workers=0, with_pixels=True)
    d = plain.encoded.tokens.shape[2]
    assert carrying.encoded.tokens.shape == (3, 16, d + 3 * 8 * 8)  # 32 px, 8 px patches
    np.testing.assert_array_equal(carrying.encoded.tokens[..., :d], plain.encoded.tokens)
    for row, path in enumerate(paths):
        pixels, *_ = decode_image(path, encoder.preprocess)
        want = patch_pixels(pixels[None], 4).astype(np.float16)[0]
        np.testing.assert_array_equal(carrying.encoded.tokens[row, :, d:], want)


def _pixel_tokens(rng, batch: int = 3, n: int = 16, d: int = 32, p: int = 4) -> torch.Tensor:
    return torch.tensor(rng.normal(size=(batch, n, d + 3 * p * p)), dtype=torch.float32)


def test_a_pixel_stem_starts_neutral_and_then_reads_the_pixels(tmp_path):
    """--init-from a re-ranker without the stem scores exactly as before; once the stem's
    output moves, changing only the pixels changes the logits."""
    from xmr.retrieval.reranker import load_reranker, save_reranker
    from xmr.retrieval.reranker_files import config_digest

    torch.manual_seed(3)
    common = dict(token_dim=32, text_len=12, image_tokens=16, width=32, layers=1)
    old = Reranker(RerankerConfig(**common, image_stem="conv", token_alignment=True)).eval()
    torch.nn.init.normal_(old.head.weight)
    new = Reranker(RerankerConfig(**{**vars(old.config), "pixel_patch": 4})).eval()
    kept = start_weights(new, old.state_dict())
    assert kept and all(name.startswith("pixel_stem.") for name in kept)
    assert set(kept) == new.pixel_parameters()
    rng = np.random.default_rng(4)
    text = torch.tensor(rng.normal(size=(3, 12, 32)), dtype=torch.float32)
    mask = text_mask(torch.tensor([12, 4, 7]), 12)
    image = _pixel_tokens(rng)
    other_pixels = image.clone()
    other_pixels[..., 32:] = _pixel_tokens(rng)[..., 32:]
    with torch.no_grad():
        before = old(text, mask, image[..., :32])
        assert torch.equal(new(text, mask, image), before)
        assert torch.equal(new(text, mask, other_pixels), before)
        torch.nn.init.normal_(new.pixel_stem.out.weight, std=0.3)
        moved = new(text, mask, image)
        assert (moved - before).abs().max() > 1e-3
        assert (new(text, mask, other_pixels) - moved).abs().max() > 1e-3
    # An index digest of the old re-ranker does not change because the option exists.
    saved = {**vars(old.config)}
    assert config_digest({**saved, "pixel_patch": 0}).digest() == config_digest(saved).digest()
    save_reranker(new, tmp_path / "pix")
    assert load_reranker(tmp_path / "pix", device="cpu").config.image_token_dim == 32 + 48


def test_a_pixel_stem_is_refused_where_it_cannot_read_every_patch():
    with pytest.raises(ValueError, match="image_pool must be 1"):
        RerankerConfig(token_dim=32, text_len=12, image_tokens=16, image_pool=2, pixel_patch=4)
    from xmr.retrieval.pixel_stem import PixelStem

    with pytest.raises(ValueError, match="power-of-two patch side, not 6"):
        PixelStem(6, 32)


def test_trainer_options_for_the_pixel_stem(tmp_path):
    from xmr.retrieval.errors import InputError
    from xmr.training.reranker_training import RerankerTrainConfig
    from xmr.training.reranker_training.config import check_config
    from xmr.training.reranker_training.loop import _parameter_groups

    def config(**options):
        return RerankerTrainConfig(data="x.json", model="xmr-tiny", out=str(tmp_path), **options)

    with pytest.raises(InputError, match="--pixel-lr sets the pixel stem's rate: add --pixel"):
        check_config(config(pixel_lr=1e-3, image_pool=1))
    with pytest.raises(InputError, match="--pixel-stem reads every patch's pixels: use --image"):
        check_config(config(pixel_stem=True, image_pool=2))

    torch.manual_seed(0)
    model = Reranker(
        RerankerConfig(token_dim=32, text_len=12, image_tokens=16, width=32, layers=1,
                       image_stem="conv", token_alignment=True, relation_readout=True,
                       pixel_patch=4)
    )  # fmt: skip
    names = {id(p): n for n, p in model.named_parameters()}
    rest, relation, pixel = _parameter_groups(
        config(pixel_stem=True, image_pool=1, relation_lr=2e-3, pixel_lr=3e-3), model
    )
    assert (rest["lr"], relation["lr"], pixel["lr"]) == (5e-4, 2e-3, 3e-3)
    assert {names[id(p)] for p in pixel["params"]} == model.pixel_parameters()
    assert {names[id(p)] for p in relation["params"]} == model.relation_parameters()
    assert len(rest["params"]) + len(relation["params"]) + len(pixel["params"]) == len(names)
    assert not any(names[id(p)].startswith(("pixel_", "relation_")) for p in rest["params"])


def _pixel_reranker(encoder, seed: int = 0, pixel_patch: int = 8):
    from conftest import random_reranker

    return random_reranker(
        32, encoder.model.context_length, 16, seed, image_pool=1, pixel_patch=pixel_patch
    )


def test_an_index_keeps_each_patchs_pixels_for_a_pixel_stem(tmp_path, encoder):
    """Stored tokens, and the tokens of an image query from outside the index, carry the
    same pixels training gave the re-ranker (embed_images(with_pixels=True)); the kept
    features are the stem's; a re-ranker without a stem scores as on a plain index."""
    from xmr.indexer.images import IndexOptions, index_folders
    from xmr.retrieval.embedding import add_patch_pixels
    from xmr.retrieval.imageio import decode_image
    from xmr.retrieval.library import Library
    from xmr.retrieval.reranker_files import TokenSource
    from xmr.retrieval.searcher import Searcher

    make_images(tmp_path / "imgs", 6)
    for name, pixels in (("pix", True), ("plain", False)):
        with Library.open_or_create(
            tmp_path / name, encoder, token_source=TokenSource(None, pixels)
        ) as library:
            index_folders(library, encoder, [tmp_path / "imgs"], IndexOptions(workers=0))

    reranker = _pixel_reranker(encoder)
    with Library.open(tmp_path / "pix") as library:
        assert library.token_pixels == 8 and library.manifest["image_tokens"] == [16, 32 + 3 * 64]
        rows = [(i, path) for i, path, _ in library.db.indexed_images()]
        assert len(rows) == 6
        for row_id, path in rows:
            pixels, *_ = decode_image(path, encoder.preprocess)
            want = add_patch_pixels(encoder.encode_images(pixels[None]), pixels[None]).tokens
            stored = library.images.tokens.read(np.array([row_id]))[0]
            np.testing.assert_array_equal(stored, want[0])

        outside = make_images(tmp_path / "outside", 1, start_seed=90)[0]
        searcher = Searcher(library, encoder, reranker)  # accepted: the pixels are there
        query = searcher.image_query(outside)
        pixels, *_ = decode_image(str(outside), encoder.preprocess)
        want = add_patch_pixels(encoder.encode_images(pixels[None]), pixels[None]).tokens[0]
        np.testing.assert_array_equal(query.tokens, want)
        hits = searcher.search(searcher.text_query("a red square"), "images", k=6, candidates=6)
        assert [h.reranker for h in hits] == ["random-pool1"] * 6

    with Library.open_or_create(tmp_path / "pix", encoder) as library:
        library.keep_reranker_features(reranker)
        ids = np.array([row_id for row_id, _ in rows])
        features = library.images.features.read(ids).astype(np.float32)
        stored = torch.tensor(library.images.tokens.read(ids), dtype=torch.float32)
        with torch.no_grad():
            want = reranker.model.image_features(stored).numpy()
        np.testing.assert_allclose(features, want, rtol=1e-2, atol=1e-2)  # kept as float16
        # the stem's part is in them: the same tokens with other pixels give others
        stored[..., 32:] = 0
        with torch.no_grad():
            blind = reranker.model.image_features(stored).numpy()
        assert np.abs(features - blind).max() > 0.1

    plain_reranker = _pixel_reranker(encoder, seed=5, pixel_patch=0)
    logits = {}
    for name in ("pix", "plain"):
        with Library.open(tmp_path / name) as library:
            searcher = Searcher(library, encoder, plain_reranker)
            found = searcher.search(searcher.text_query("two blue circles"), "images", k=6)
            logits[name] = {h.path: h.rerank_logit for h in found}
    assert logits["pix"].keys() == logits["plain"].keys()
    for path, logit in logits["plain"].items():
        assert logits["pix"][path] == pytest.approx(logit, abs=1e-4)


def test_an_index_refuses_a_reranker_that_reads_pixels_it_does_not_keep(tmp_path, encoder):
    from conftest import index_with

    from xmr.retrieval.errors import InvalidModelSpec
    from xmr.retrieval.library import Library
    from xmr.retrieval.searcher import Searcher

    make_images(tmp_path / "imgs", 3)
    index_with(tmp_path / "idx", encoder, [tmp_path / "imgs"])
    with Library.open(tmp_path / "idx") as library:
        assert not library.token_pixels
        with pytest.raises(InvalidModelSpec, match="re-ranker random-pool1 also reads each pat"):
            Searcher(library, encoder, _pixel_reranker(encoder))
        plain = Searcher(library, encoder, None)  # stage 1 still answers
        assert len(plain.search(plain.text_query("a red square"), "images", k=3)) == 3


def test_xmr_index_keeps_pixels_for_the_reranker_it_is_given(tmp_path, tiny_spec, encoder):
    """`xmr index --reranker` with a pixel stem keeps the pixels and that re-ranker's
    features; searching with it works; an index built for a re-ranker without a stem says
    how to get one that keeps them."""
    from conftest import run_xmr

    from xmr.retrieval.reranker import save_reranker

    make_images(tmp_path / "imgs", 5)
    save_reranker(_pixel_reranker(encoder, seed=1).model, tmp_path / "rr_pix")
    save_reranker(_pixel_reranker(encoder, seed=2, pixel_patch=0).model, tmp_path / "rr_plain")
    for name, reranker in (("idx_pix", "rr_pix"), ("idx_plain", "rr_plain")):
        done = run_xmr(
            "index", tmp_path / "imgs", "--model", tiny_spec, "--index", tmp_path / name,
            "--reranker", tmp_path / reranker, "-q",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "idx_pix" / "manifest.json").read_text())
    assert manifest["image_token_pixels"] == 8 and manifest["reranker_features"]
    assert "with each patch's pixels" in run_xmr("info", "--index", tmp_path / "idx_pix").stdout
    plain = json.loads((tmp_path / "idx_plain" / "manifest.json").read_text())
    assert plain["image_token_pixels"] == 0 and plain["image_tokens"] == [16, 32]

    good = run_xmr(
        "search", "a red square", "--index", tmp_path / "idx_pix",
        "--reranker", tmp_path / "rr_pix", "--json",
    )  # fmt: skip
    assert good.returncode == 0, good.stderr
    assert {hit["reranker"] for hit in json.loads(good.stdout)} == {"rr_pix"}
    assert "ONNX path is unavailable" not in good.stderr  # the stem exports
    # A re-ranker without a stem reads the pixel index's tokens as the plain index's.
    logits = {}
    for name in ("idx_pix", "idx_plain"):
        done = run_xmr(
            "search", "two blue circles", "--index", tmp_path / name,
            "--reranker", tmp_path / "rr_plain", "--json",
        )  # fmt: skip
        assert done.returncode == 0 and "ONNX path is unavailable" not in done.stderr
        logits[name] = {hit["path"]: hit["rerank_logit"] for hit in json.loads(done.stdout)}
        assert None not in logits[name].values()
    assert logits["idx_pix"] == pytest.approx(logits["idx_plain"], abs=1e-3)
    bad = run_xmr(
        "search", "a red square", "--index", tmp_path / "idx_plain",
        "--reranker", tmp_path / "rr_pix",
    )  # fmt: skip
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "does not keep; re-index into a new index folder with `--reranker`" in bad.stderr


def _scene(objects, canvas: int = 64):
    from xmr.training.corpus.scenes import Scene, SceneObject

    return Scene("gray", tuple(SceneObject(*o) for o in objects), None, canvas=canvas)


def test_patch_labels_name_the_object_covering_each_patch_centre():
    from xmr.training.corpus.scenes import COLOURS, SHAPES
    from xmr.training.reranker_training.patch_labels import patch_labels

    # A big red circle (24 px box) centred at (16, 16), a small blue square (14 px) at
    # (48, 40); 8 x 8 patches of 8 px, patch k has its centre at (8 (k % 8) + 4, 8 (k // 8) + 4).
    scene = _scene([("circle", "red", "big", 16, 16), ("square", "blue", "small", 48, 40)])
    labels = patch_labels([scene], 8)
    circle, square = 1 + SHAPES.index("circle"), 1 + SHAPES.index("square")
    red, blue = 1 + list(COLOURS).index("red"), 1 + list(COLOURS).index("blue")
    shapes, colours = labels.shapes[0], labels.colours[0]
    assert (shapes[18], colours[18]) == (circle, red)  # centre (20, 20)
    assert shapes[0] == circle  # centre (4, 4): 12 px from the circle's, inside its box
    assert shapes[46] == square and colours[46] == blue  # (52, 44)
    assert shapes[37] == square  # (44, 36)
    assert shapes[30] == 0 and colours[30] == 0  # (52, 28): 12 px above the small square
    assert shapes[63] == 0  # (60, 60)
    assert (shapes > 0).sum() == 16 + 4  # the circle's box covers 4 x 4 centres, the square's 2 x 2
    # Where two boxes cover a centre, the nearer object names it.
    near = patch_labels(
        [_scene([("star", "red", "big", 20, 20), ("cross", "blue", "big", 30, 20)])], 8
    )
    assert near.shapes[0, 2 * 8 + 2] == 1 + SHAPES.index("star")  # (20, 20)
    assert near.shapes[0, 2 * 8 + 3] == 1 + SHAPES.index("cross")  # (28, 20)
    # Positions scale with the canvas: the same scene drawn twice as large, same labels.
    double = _scene([("circle", "red", "big", 32, 32), ("square", "blue", "small", 96, 80)], 128)
    np.testing.assert_array_equal(patch_labels([double], 8).shapes, labels.shapes)


@pytest.mark.slow
def test_pretraining_teaches_the_stem_what_its_patches_show(tmp_path, encoder):
    """On a generated corpus's own images, the convolutions learn to name the colour under
    each patch; labels laid over the wrong patches (transposed) cannot be learned by
    local convolutions, which is what makes the colour accuracy a test of alignment."""
    from xmr.retrieval.embedding import embed_images
    from xmr.retrieval.pixel_stem import PixelStem
    from xmr.training.corpus import make_corpus
    from xmr.training.corpus.scenes import Scene
    from xmr.training.reranker_training.patch_labels import (
        PatchLabels,
        patch_labels,
        pretrain_pixel_stem,
    )

    corpus = make_corpus(tmp_path / "shapes", 60, seed=3)
    import json

    records = json.loads(corpus.captions_path.read_text())["images"]
    paths = [
        str(corpus.captions_path.parent / r.get("filepath", "") / r["filename"]) for r in records
    ]
    tokens = np.concatenate(
        [b.encoded.tokens for b in embed_images(paths, encoder, workers=0, with_pixels=True)]
    )
    d = tokens.shape[2] - 3 * 8 * 8
    pixels = torch.from_numpy(tokens[..., d:])  # (60, 16, 192): the 32 px input, 8 px patches
    labels = patch_labels([Scene.from_json(r["scene"]) for r in records], 4)

    def taught(labels: PatchLabels) -> dict:
        torch.manual_seed(0)
        stem = PixelStem(8, 32)
        return pretrain_pixel_stem(stem, pixels, labels, epochs=40, lr=3e-3, batch=16)

    right = taught(labels)
    grid = lambda a: a.reshape(-1, 4, 4).transpose(0, 2, 1).reshape(-1, 16)  # noqa: E731
    wrong = taught(PatchLabels(grid(labels.shapes), grid(labels.colours)))
    assert right["colours_accuracy"] > 0.8
    assert right["colours_accuracy"] > wrong["colours_accuracy"] + 0.2
