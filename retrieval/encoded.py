"""What an encoder hands back for a batch, whichever runtime ran it (PyTorch, ONNX)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Encoded:
    vectors: np.ndarray  # (B, D) float32, unit L2 norm
    tokens: np.ndarray | None  # (B, L, D) float16, projected into the joint space
    lengths: np.ndarray | None  # (B,) int32, valid tokens per row (texts; images use all)
