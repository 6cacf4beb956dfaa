"""The re-ranker's own look at the pixels, beside the encoder's patch tokens.

A small dual encoder's patch tokens keep colour but little shape: on xmr-shapes a linear
probe reads an object's shape from its own patch token 20% of the time, at any vision
block (docs/models/xmr-tiny2-token-probe.md), so a re-ranker reading only those tokens
cannot tell "a red circle and a blue square" from its colour swap. A few convolutions
over the model's input pixels see shape at once. The pixels travel inside the image
tokens: each token's features are the encoder's D features, then its patch's pixels
(3 x p x p, channel-major; retrieval/patch_pixels.py), so every store and cache of
tokens carries them unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def pixels_of_patches(patches: torch.Tensor, p: int) -> torch.Tensor:
    """patch_pixels.patch_pixels undone: (B, S^2, 3 * p * p) -> (B, 3, S * p, S * p)."""
    b, n, _ = patches.shape
    side = math.isqrt(int(n))  # int(): a constant when traced for an ONNX export
    grid = patches.reshape(b, side, side, 3, p, p).permute(0, 3, 1, 4, 2, 5)  # (B,3,S,p,S,p)
    return grid.reshape(b, 3, side * p, side * p)


class PixelStem(nn.Module):
    """(B, N, 3 p^2) patch pixels -> (B, N, W) features, one per patch of the same grid.

    Stride-2 convolutions bring the S p x S p image to the S x S grid (p = 8: three, 64 px
    to 8 x 8; about 20 M multiply-adds an image); each output sees 19 px, a whole small
    object and most of a big one. The output projection starts at zero, so a re-ranker
    trained without this stem (--init-from) scores exactly as before until training
    moves it.
    """

    def __init__(self, p: int, width: int, channels: int = 32):
        super().__init__()
        if p & (p - 1) or p < 2:
            raise ValueError(f"a pixel stem needs a power-of-two patch side, not {p}")
        self.p = p
        layers: list[nn.Module] = []
        inputs, size = 3, p
        while size > 1:  # stride 2 until one output per patch
            # channels at the finest scale, doubling as the grid coarsens
            outputs = width if size == 2 else channels * (p // size)
            layers += [nn.Conv2d(inputs, outputs, 3, stride=2, padding=1), nn.GELU()]
            if size == p:  # one more look at the finest scale, where edges are
                layers += [nn.Conv2d(outputs, outputs, 3, padding=1), nn.GELU()]
            inputs, size = outputs, size // 2
        self.convs = nn.Sequential(*layers)
        self.out = nn.Linear(width, width)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def patch_features(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, N, 3 p^2) -> (B, N, W): the convolutions' output, before the output map."""
        image = pixels_of_patches(patches, self.p)  # (B, 3, S p, S p)
        return self.convs(image).flatten(2).transpose(1, 2)  # (B, W, S, S) -> (B, S^2, W)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.out(self.patch_features(patches))  # (B, S^2, W)
