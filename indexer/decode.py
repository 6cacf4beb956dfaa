"""Decode image files into model-ready tensors in parallel worker processes.

Every failure becomes a reason string on its item; the batch goes on without that file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime

from retrieval.imageio import DEFAULT_MAX_PIXELS, DecodeError, decode_image

__all__ = ["DEFAULT_MAX_PIXELS", "DecodedImage", "decode_batches", "default_workers"]


@dataclass
class DecodedImage:
    position: int  # index into the list of files being decoded
    pixels: object | None  # (3, H, W) float tensor, None on failure
    width: int = 0
    height: int = 0
    format: str | None = None
    taken_at: datetime | None = None
    error: str | None = None


class _DecodeDataset:
    """A map-style dataset over paths for torch's DataLoader (decodes in workers)."""

    def __init__(self, paths: list[str], preprocess, max_pixels: int):
        self.paths = paths
        self.preprocess = preprocess
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int) -> DecodedImage:
        try:
            pixels, w, h, fmt, taken = decode_image(
                self.paths[position], self.preprocess, self.max_pixels
            )
        except DecodeError as exc:
            return DecodedImage(position, None, error=str(exc))
        except Exception as exc:  # never let one odd file kill the worker pool
            return DecodedImage(position, None, error=f"unexpected error: {exc!r}")
        return DecodedImage(position, pixels, w, h, fmt, taken)


def _keep_list(batch: list[DecodedImage]) -> list[DecodedImage]:
    return batch


def _single_thread_worker(_worker_id: int) -> None:
    import torch

    torch.set_num_threads(1)  # workers share the cores with the encoder


def decode_batches(paths: list[str], preprocess, batch_size: int, workers: int, max_pixels: int):
    """Yield lists of DecodedImage, `batch_size` at a time, decoded `workers`-parallel.

    Decoding runs ahead of the consumer (prefetch), so it overlaps with encoding.
    """
    from torch.utils.data import DataLoader

    dataset = _DecodeDataset(paths, preprocess, max_pixels)
    workers = workers if len(paths) > batch_size else 0  # a pool costs more than tiny jobs
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_keep_list,
        worker_init_fn=_single_thread_worker if workers else None,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    yield from loader


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2)))
