"""Decode a dataset's images once into one in-memory tensor, so training steps never touch PIL."""

from __future__ import annotations

from retrieval.errors import DatasetError
from retrieval.imageio import DEFAULT_MAX_PIXELS, decode_batches, default_workers


def preload_pixels(paths, preprocess, workers: int | None = None, progress=None):
    """-> (N, 3, H, W) float16 tensor, exactly what `preprocess` gives at inference time."""
    import torch

    paths = [str(p) for p in paths]
    out = None
    workers = default_workers() if workers is None else workers
    for batch in decode_batches(paths, preprocess, 256, workers, DEFAULT_MAX_PIXELS):
        for item in batch:
            if item.pixels is None:
                raise DatasetError(f"{paths[item.position]}: {item.error}")
            if out is None:
                out = torch.empty((len(paths), *item.pixels.shape), dtype=torch.float16)
            out[item.position] = item.pixels.to(torch.float16)
        if progress:
            progress(batch[-1].position + 1, len(paths))
    return out
