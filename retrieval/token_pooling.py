"""k x k average pooling of a square grid of patch tokens (`--token-pool`, `--image-pool`).

The token store and the re-ranker both use it: an index may keep tokens pooled, and a
re-ranker trained on pooled tokens pools the full grid the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def pooled_side(n_tokens: int, k: int) -> int:
    """The side of the grid left after k x k pooling of a square grid of n_tokens (edges
    kept: ceil)."""
    side = int(round(n_tokens**0.5))
    return -(-side // k)  # ceil(side / k)


def pooled_count(n_tokens: int, k: int) -> int:
    """Tokens left after k x k pooling of a square grid of n_tokens."""
    return pooled_side(n_tokens, k) ** 2


def pool_patch_tokens(tokens: torch.Tensor, k: int) -> torch.Tensor:
    """(B, N, D) tokens of a square patch grid -> (B, ceil(S/k)^2, D), k x k averages.

    Cuts the re-ranker's image-side work and the token store by about k^2; an odd grid
    (ViT-B-32's 7 x 7) keeps its last row and column as smaller cells.
    """
    if k == 1:
        return tokens
    import torch.nn.functional as F

    b, n, d = tokens.shape
    side = int(round(n**0.5))
    grid = tokens.transpose(1, 2).reshape(b, d, side, side)  # (B, D, S, S)
    pooled = F.avg_pool2d(grid, k, ceil_mode=True)  # (B, D, ceil(S/k), ceil(S/k))
    return pooled.flatten(2).transpose(1, 2)


def pool_token_array(tokens: np.ndarray, k: int) -> np.ndarray:
    """pool_patch_tokens for the token store: (B, N, D) float16 -> (B, N', D) float16."""
    if k == 1:
        return tokens
    import torch

    return pool_patch_tokens(torch.from_numpy(tokens).float(), k).to(torch.float16).numpy()
