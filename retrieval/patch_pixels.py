"""Each patch's input pixels as a row beside its image token, the tokens a re-ranker's pixel
stem reads (retrieval/pixel_stem.py). NumPy only: an image query through ONNX Runtime
adds them without torch.

Each token's features are the encoder's D features, then its patch's pixels (3 x p x p,
channel-major), so every store and cache of tokens carries them unchanged.
"""

from __future__ import annotations

import numpy as np


def patch_pixels(pixels, side: int) -> np.ndarray:
    """pixels (B, 3, H, W), H = W = side * p -> (B, side^2, 3 * p * p) float32: each patch
    of the side x side grid (row-major, as the encoder's tokens) as one row of its pixels."""
    pixels = np.asarray(pixels, dtype=np.float32)
    b, c, h, w = pixels.shape
    p = h // side
    if h != w or h != side * p:
        raise ValueError(f"pixels {h} x {w} do not split into a {side} x {side} grid")
    grid = pixels.reshape(b, c, side, p, side, p).transpose(0, 2, 4, 1, 3, 5)  # (B,S,S,3,p,p)
    return grid.reshape(b, side * side, c * p * p)


def with_patch_pixels(tokens: np.ndarray, pixels) -> np.ndarray:
    """tokens (B, N, D) float16 and their images' pixels (B, 3, H, W) -> (B, N, D + 3p^2)
    float16."""
    side = int(round(tokens.shape[1] ** 0.5))
    rows = patch_pixels(pixels, side).astype(np.float16)
    return np.concatenate([tokens, rows], axis=2)
