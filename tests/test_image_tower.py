"""The indexing hot path: JPEGs decoded at a reduced scale, and the pluggable image tower.

Both must leave the vectors what the reference path (every pixel decoded, PyTorch's
tower) gives: an index never holds two answers for one picture.
"""

from __future__ import annotations

import numpy as np
from conftest import db_rows, index_with, indexed_paths, stored_vectors
from PIL import Image, ImageFilter, ImageOps

from xmr.retrieval.image_tower import SAME_VECTORS_COSINE, TorchImageTower
from xmr.retrieval.imageio import DRAFT_FACTOR, _draft, decode_image


def _photo(path, seed: int, size=(1600, 1200), **save) -> None:
    """A camera-sized JPEG: shapes on a gradient, blurred like a lens, with grain."""
    rng = np.random.default_rng(seed)
    w, h = size
    ramp = np.linspace(0, 1, w // 8, dtype=np.float32)[None, :, None]
    sky = rng.uniform(0, 255, 3) * (1 - ramp) + rng.uniform(0, 255, 3) * ramp
    small = Image.fromarray(np.broadcast_to(sky, (h // 8, w // 8, 3)).astype(np.uint8))
    for _ in range(6):
        x, y, r = (int(v) for v in rng.integers(4, min(w, h) // 8, 3))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        small.paste(colour, (x, y, x + r, y + r))
    picture = small.filter(ImageFilter.GaussianBlur(1)).resize((w, h), Image.BICUBIC)
    grain = Image.effect_noise((w, h), 30).convert("RGB")
    Image.blend(picture, grain, 0.1).save(path, quality=90, **save)


def _full_decode(path, preprocess):
    """The reference: every pixel decoded, then the model's preprocessing."""
    with Image.open(path) as image:
        image.load()
        return preprocess(ImageOps.exif_transpose(image).convert("RGB"))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_a_large_jpeg_decodes_at_reduced_scale_with_the_same_vector(encoder, tmp_path):
    import torch

    paths = []
    for seed, size in enumerate([(1600, 1200), (1200, 1600), (4000, 3000), (1024, 768)]):
        paths.append(tmp_path / f"photo{seed}.jpg")
        _photo(paths[-1], seed, size)
    with Image.open(paths[2]) as image:  # 4000x3000: the DCT scaling really applies
        _draft(image, encoder.preprocess)
        image.load()
        assert image.size[0] < 4000 and min(image.size) >= DRAFT_FACTOR * 32
    drafted = torch.stack([decode_image(str(p), encoder.preprocess)[0] for p in paths])
    full = torch.stack([_full_decode(p, encoder.preprocess) for p in paths])
    assert not torch.equal(drafted, full)  # the reduced decode ran: pixels differ a little
    cos = _cosines(encoder.encode_images(drafted).vectors, encoder.encode_images(full).vectors)
    assert cos.min() >= 0.99999


def test_a_rotated_jpeg_keeps_its_displayed_size_and_vector(encoder, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: a viewer turns it a quarter
    _photo(tmp_path / "tagged.jpg", 7, (1600, 1200), exif=exif)
    pixels, width, height, fmt, _ = decode_image(str(tmp_path / "tagged.jpg"), encoder.preprocess)
    assert (width, height, fmt) == (1200, 1600, "JPEG")
    full = _full_decode(tmp_path / "tagged.jpg", encoder.preprocess)
    cos = _cosines(
        encoder.encode_images(pixels[None]).vectors,
        encoder.encode_images(full[None]).vectors,
    )
    assert cos.min() >= 0.99999


class _ChannelsLastTower:
    """Another runtime for the seam: PyTorch's tower fed channels-last memory, counting."""

    def __init__(self, reference: TorchImageTower):
        self.reference = reference
        self.images = 0

    def encode(self, pixels, token_layer=None):
        import torch

        self.images += len(pixels)
        return self.reference.encode(
            pixels.contiguous(memory_format=torch.channels_last), token_layer
        )


def test_indexing_runs_the_plugged_image_tower_and_keeps_the_same_vectors(encoder, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed in range(5):
        _photo(folder / f"p{seed}.jpg", seed, (800, 600))
    reference = encoder.image_tower
    plugged = _ChannelsLastTower(reference)
    encoder.image_tower = plugged
    try:
        summary = index_with(tmp_path / "index", encoder, [folder], batch_size=2)
    finally:
        encoder.image_tower = reference
    assert (summary.encoded, plugged.images) == (5, 5)
    paths = indexed_paths(tmp_path / "index")
    names = sorted(paths)
    stored = stored_vectors(tmp_path / "index", [paths[n] for n in names])
    import torch

    pixels = torch.stack([decode_image(n, encoder.preprocess)[0] for n in names])
    want = reference.encode(pixels).vectors
    assert _cosines(stored, want).min() >= SAME_VECTORS_COSINE
    assert {r["width"] for r in db_rows(tmp_path / "index")} == {800}
