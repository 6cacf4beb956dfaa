"""Encode every image and caption of a retrieval dataset (benchmarks, validation, training).

Results can be cached on disk, keyed by the encoder's identity and the contents of the
dataset (annotation file bytes + each image's size and mtime), so re-running a
benchmark with another re-ranker or k never re-encodes.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xmr.retrieval.embedding import embed_images, text_batches
from xmr.retrieval.errors import DatasetError

CACHE_VERSION = 1


@dataclass
class DatasetEmbeddings:
    image_vectors: np.ndarray  # (n_images, D) float32
    text_vectors: np.ndarray  # (n_texts, D) float32
    image_tokens: np.ndarray | None  # (n_images, N, D) float16
    text_tokens: np.ndarray | None  # (n_texts, L, D) float16
    text_lengths: np.ndarray  # (n_texts,) int32
    image_seconds: float  # wall time to decode+encode the images
    text_seconds: float

    @property
    def images_per_second(self) -> float:
        return len(self.image_vectors) / max(self.image_seconds, 1e-9)

    @property
    def texts_per_second(self) -> float:
        return len(self.text_vectors) / max(self.text_seconds, 1e-9)


def token_options(reranker) -> dict:
    """embed_dataset's token arguments for the image tokens `reranker` reads: its vision
    block's, followed by each patch's pixels for a pixel stem. {} for none, or for a
    pretrained matcher, which reads the image files itself."""
    if reranker is None or getattr(reranker, "family", "native") != "native":
        return {}
    config = reranker.config
    return {"token_layer": config.image_token_layer, "with_pixels": bool(config.pixel_patch)}


def embed_dataset(
    encoder,
    dataset,
    batch_size: int = 128,
    workers: int | None = None,
    with_tokens: bool = True,
    progress=None,
    token_layer: int | None = None,
    with_pixels: bool = False,
) -> DatasetEmbeddings:
    """`progress(stage, done, total)` is called as batches finish (optional); image tokens
    come from vision block `token_layer` (None: the last; Encoder.encode_images), with
    their patches' pixels appended when `with_pixels` (retrieval/pixel_stem.py)."""
    paths = [str(p) for p in dataset.image_paths]
    started = time.monotonic()
    vectors, tokens = [], []
    done = 0
    batches = embed_images(
        paths, encoder, token_layer, batch_size, workers, with_pixels=with_pixels
    )
    for batch in batches:
        failed = [d for d in batch.images if d.error is not None]
        if failed:
            raise DatasetError(f"{paths[failed[0].position]}: {failed[0].error}")
        vectors.append(batch.encoded.vectors)
        if with_tokens and batch.encoded.tokens is not None:
            tokens.append(batch.encoded.tokens)
        done += len(batch.images)
        if progress:
            progress("images", done, len(paths))
    image_seconds = time.monotonic() - started

    started = time.monotonic()
    texts = encode_text_list(encoder, dataset.captions, batch_size * 2, with_tokens, progress)
    text_seconds = time.monotonic() - started
    return DatasetEmbeddings(
        image_vectors=np.concatenate(vectors),
        text_vectors=texts.vectors,
        image_tokens=np.concatenate(tokens) if tokens else None,
        text_tokens=texts.tokens,
        text_lengths=texts.lengths,
        image_seconds=image_seconds,
        text_seconds=text_seconds,
    )


def encode_text_list(encoder, texts, batch_size: int = 256, with_tokens=True, progress=None):
    """Encode many texts in batches -> Encoded: vectors (T, D) float32, tokens (T, L, D)
    float16 or None, lengths (T,) int32. `progress("texts", done, total)` per batch."""
    from xmr.retrieval.encoded import Encoded

    vectors, tokens, lengths = [], [], []
    done = 0
    for encoded in text_batches(encoder, texts, batch_size):
        vectors.append(encoded.vectors)
        lengths.append(encoded.lengths)
        if with_tokens and encoded.tokens is not None:
            tokens.append(encoded.tokens)
        done += len(encoded.vectors)
        if progress:
            progress("texts", done, len(texts))
    return Encoded(
        vectors=np.concatenate(vectors),
        tokens=np.concatenate(tokens) if tokens else None,
        lengths=np.concatenate(lengths).astype(np.int32),
    )


def cache_key(
    encoder_identity: dict,
    dataset,
    with_tokens: bool,
    token_layer: int | None = None,
    with_pixels: bool = False,
) -> str:
    digest = hashlib.sha256()
    tokens = with_tokens if token_layer is None else f"block {token_layer}"
    if with_pixels:
        tokens = f"{tokens} + pixels"
    digest.update(
        json.dumps(
            {"v": CACHE_VERSION, "enc": encoder_identity, "tokens": tokens}, sort_keys=True
        ).encode()
    )
    digest.update(Path(dataset.source_file).read_bytes())
    digest.update(str(dataset.split).encode())
    for path in dataset.image_paths:
        stat = Path(path).stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def embed_dataset_cached(
    encoder, dataset, cache_dir: Path | None, **kwargs
) -> tuple[DatasetEmbeddings, bool]:
    """Like embed_dataset, but reuse `cache_dir/<key>.npz`; returns (embeddings, was_cached)."""
    if cache_dir is None:
        return embed_dataset(encoder, dataset, **kwargs), False
    with_tokens = kwargs.get("with_tokens", True)
    layer = kwargs.get("token_layer") if with_tokens else None
    pixels = bool(kwargs.get("with_pixels")) and with_tokens
    key = cache_key(encoder.identity(), dataset, with_tokens, layer, pixels)
    path = Path(cache_dir) / f"{key}.npz"
    if path.exists():
        data = np.load(path)
        return DatasetEmbeddings(
            image_vectors=data["image_vectors"],
            text_vectors=data["text_vectors"],
            image_tokens=data["image_tokens"] if "image_tokens" in data else None,
            text_tokens=data["text_tokens"] if "text_tokens" in data else None,
            text_lengths=data["text_lengths"],
            image_seconds=float(data["image_seconds"]),
            text_seconds=float(data["text_seconds"]),
        ), True
    result = embed_dataset(encoder, dataset, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "image_vectors": result.image_vectors,
        "text_vectors": result.text_vectors,
        "text_lengths": result.text_lengths,
        "image_seconds": np.float64(result.image_seconds),
        "text_seconds": np.float64(result.text_seconds),
    }
    if result.image_tokens is not None:
        arrays["image_tokens"] = result.image_tokens
    if result.text_tokens is not None:
        arrays["text_tokens"] = result.text_tokens
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return result, False
