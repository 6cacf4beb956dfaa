"""A split as the BLIP trainer reads it: the matcher's own pixels (decoded once), every
caption tokenized once, and stage 1's similarities (the xmr dual encoder), which mine the
hard negatives in training and give the candidates and fused score in validation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SplitTensors:
    dataset: object  # evaluation.datasets.RetrievalDataset
    pixels: object  # (N, 3, S, S) float16 tensor, what the image processor gives
    input_ids: object  # (T, L) int64 tensor, [CLS] ... [SEP] [PAD]...
    lengths: object  # (T,) int64 tensor: tokens before the padding
    image_vectors: np.ndarray  # (N, D) float32 stage-1 vectors (unit length)
    text_vectors: np.ndarray  # (T, D) float32
    itm_first_token: int | None = None  # BLIP's [ENC] for the ITM pass (None: keep [CLS])

    @property
    def stage1(self) -> np.ndarray:
        """(T, N) stage-1 cosines."""
        return self.text_vectors @ self.image_vectors.T


class ProcessorPixels:
    """PIL image -> (3, S, S) float tensor through a Hugging Face image processor: exactly
    the scorer's pixels. A class, not a closure, so decoding processes can receive it."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image):
        import torch

        out = self.processor(images=image.convert("RGB"), return_tensors="np")
        return torch.from_numpy(out["pixel_values"][0])


def tokenize(tokenizer, texts, max_tokens: int):
    """-> (input_ids (T, L) int64, lengths (T,) int64), padded to the longest (<= max_tokens).
    The ids are the tokenizer's as given, [CLS] first (the ITM pass swaps in [ENC])."""
    encoded = tokenizer(
        list(texts), padding="longest", truncation=True, max_length=max_tokens,
        return_tensors="pt",
    )  # fmt: skip
    return encoded["input_ids"].long(), encoded["attention_mask"].sum(1).long()


def split_tensors(dataset, tokenizer, processor, encoder, max_tokens: int, preparing=None):
    """Decode, tokenize and embed one split. `preparing(what, done, total)` as it goes."""
    from xmr.evaluation.embed_dataset import embed_dataset
    from xmr.training.pixels import preload_pixels

    pixels = preload_pixels(
        dataset.image_paths,
        ProcessorPixels(processor),
        progress=preparing and (lambda done, total: preparing("pixels", done, total)),
    )
    input_ids, lengths = tokenize(tokenizer, dataset.captions, max_tokens)
    feats = embed_dataset(encoder, dataset, with_tokens=False, progress=preparing)
    return SplitTensors(
        dataset, pixels, input_ids, lengths, feats.image_vectors, feats.text_vectors
    )
