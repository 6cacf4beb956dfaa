"""The one decode -> encode step: image paths in, batches of decoded metadata + vectors out.

Every caller that turns image files into vectors goes through here: `xmr index` (the
local path and each Ray actor), `xmr bench` / training's frozen-encoder embedding, and
(decode half only) training's pixel preload. Texts have their batched counterpart,
`text_batches`.

    paths ──decode_batches (workers)──▶ DecodedImage[B] ──encoder──▶ ImageBatch
                                        (pixels or reason)            images: metadata / reason
                                                                      encoded: vectors (G, D),
                                                                               tokens (G, N, D)
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from xmr.retrieval.errors import InputError
from xmr.retrieval.imageio import (
    DEFAULT_MAX_PIXELS,
    DecodedImage,
    Preprocess,
    decode_batches,
    default_workers,
)

if TYPE_CHECKING:
    from xmr.retrieval.encoder import Encoded, Encoder, LazyEncoder, TextEncoder


@dataclass
class ImageBatch:
    """One batch of the step, in the order of the paths given."""

    images: list[DecodedImage]  # every file of the batch; `.error` says why one failed
    encoded: object | None = None  # retrieval.encoder.Encoded for the decoded ones, in order
    encode_seconds: float = 0.0

    @property
    def decoded(self) -> list[DecodedImage]:
        """The images that decoded (those `encoded` has rows for), in order."""
        return [d for d in self.images if d.error is None]


def decode_images(
    paths: Sequence[str],
    preprocess: Preprocess,
    batch_size: int = 64,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[ImageBatch]:
    """The decode half: batches whose images keep their pixels (3, H, W); no encoder."""
    workers = default_workers() if workers is None else workers
    for batch in decode_batches(
        [str(p) for p in paths], preprocess, batch_size, workers, max_pixels
    ):
        yield ImageBatch(batch)


def embed_images(
    paths: Sequence[str],
    encoder: Encoder | LazyEncoder,
    token_layer: int | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    with_pixels: bool = False,
) -> Iterator[ImageBatch]:
    """Decode `paths` (`workers` processes running ahead) and encode each batch.

    Image tokens come from vision block `token_layer` (None: the last); `with_pixels`
    appends each patch's input pixels to its token (for a re-ranker's pixel stem). Pixels
    are dropped once encoded, so a batch carries only metadata, reasons and the outputs.
    """
    for batch in decode_images(paths, encoder.preprocess, batch_size, workers, max_pixels):
        yield encode_batch(encoder, batch, token_layer, with_pixels)


def encode_batch(
    encoder: Encoder | LazyEncoder,
    batch: ImageBatch,
    token_layer: int | None = None,
    with_pixels: bool = False,
) -> ImageBatch:
    """Encode the decoded images of `batch` in one call; frees their pixels."""
    decoded = batch.decoded
    if decoded:
        import torch

        started = time.perf_counter()
        pixels = torch.stack([cast("torch.Tensor", d.pixels) for d in decoded])  # (G, 3, H, W)
        encoded = encoder.encode_images(pixels, token_layer)
        batch.encoded = add_patch_pixels(encoded, pixels) if with_pixels else encoded
        batch.encode_seconds += time.perf_counter() - started
    for image in batch.images:
        image.pixels = None
    return batch


def add_patch_pixels(encoded: Encoded, pixels) -> Encoded:
    """`encoded` with each image token followed by its patch's input pixels, from the
    `pixels` (B, 3, H, W) it was encoded from: the tokens a re-ranker's pixel stem reads."""
    from xmr.retrieval.patch_pixels import with_patch_pixels

    if encoded.tokens is None:
        raise InputError("this model's image tower has no patch tokens to add pixels to")
    if hasattr(pixels, "cpu"):  # a torch tensor, maybe on a GPU
        pixels = pixels.float().cpu().numpy()
    encoded.tokens = with_patch_pixels(encoded.tokens, pixels)
    return encoded


def text_batches(
    encoder: TextEncoder | LazyEncoder, texts: Sequence[str], batch_size: int = 256
) -> Iterator[Encoded]:
    """Encode texts `batch_size` at a time -> Encoded per batch (vectors, tokens, lengths)."""
    for start in range(0, len(texts), batch_size):
        yield encoder.encode_texts(list(texts[start : start + batch_size]))
