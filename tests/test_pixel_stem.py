"""The re-ranker's pixel stem (retrieval/pixel_stem.py): the pixels each image token
carries are its own patch's, in the encoder's patch order; the stem starts neutral on a
re-ranker trained without it and then reads the pixels; the trainer and the index say
when it cannot be used."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_images

from xmr.retrieval.pixel_stem import patch_pixels, pixels_of_patches
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
        rows = patch_pixels(pixels, side)  # (B, S^2, 3 p^2)
        got = rows @ visual.conv1.weight.reshape(len(visual.conv1.weight), -1).T
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # A grid read column-major would put the wrong patch under every token but the diagonal.
    transposed = pixels.transpose(2, 3)
    assert not torch.allclose(patch_pixels(transposed, side) @ visual.conv1.weight.reshape(
        len(visual.conv1.weight), -1).T, want, atol=1e-2)  # fmt: skip
    assert torch.equal(pixels_of_patches(rows, size // side), pixels)
    with pytest.raises(ValueError, match="do not split into a 5 x 5 grid"):
        patch_pixels(pixels, 5)


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
        want = patch_pixels(pixels[None], 4).to(torch.float16).numpy()[0]
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


def test_an_index_refuses_a_reranker_that_reads_pixels_it_does_not_keep(tmp_path, encoder):
    from conftest import index_with

    from xmr.retrieval.errors import InvalidModelSpec
    from xmr.retrieval.library import Library
    from xmr.retrieval.reranker import RerankerRuntime
    from xmr.retrieval.searcher import Searcher

    make_images(tmp_path / "imgs", 3)
    index_with(tmp_path / "idx", encoder, [tmp_path / "imgs"])
    text_len = encoder.model.context_length
    config = RerankerConfig(token_dim=32, text_len=text_len, image_tokens=16, width=32,
                            layers=1, pixel_patch=8)  # fmt: skip
    runtime = RerankerRuntime(Reranker(config).eval(), "pix", "cpu")
    with Library.open(tmp_path / "idx") as library:
        with pytest.raises(InvalidModelSpec, match="re-ranker pix also reads each patch's pix"):
            Searcher(library, encoder, runtime)
        plain = Searcher(library, encoder, None)  # stage 1 still answers
        assert len(plain.search(plain.text_query("a red square"), "images", k=3)) == 3


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
