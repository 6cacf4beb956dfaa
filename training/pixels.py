"""Decode a dataset's images once into one in-memory tensor, so training steps never touch PIL."""

from __future__ import annotations

from xmr.retrieval.embedding import decode_images
from xmr.retrieval.errors import DatasetError


def preload_pixels(paths, preprocess, workers: int | None = None, progress=None):
    """-> (N, 3, H, W) float16 tensor, exactly what `preprocess` gives at inference time.

    The decode half of the shared step (retrieval.embedding): the model being trained
    encodes these pixels itself, step by step.
    """
    import torch

    paths = [str(p) for p in paths]
    out = None
    for batch in decode_images(paths, preprocess, 256, workers):
        for item in batch.images:
            if item.error is not None:
                raise DatasetError(f"{paths[item.position]}: {item.error}")
            if out is None:
                out = torch.empty((len(paths), *item.pixels.shape), dtype=torch.float16)
            out[item.position] = item.pixels.to(torch.float16)
        if progress:
            progress(batch.images[-1].position + 1, len(paths))
    return out
