"""What every training run here shares: seeding, the learning-rate schedule, and checkpoint
files that a kill never leaves half-written."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators, so a run is reproducible."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def warmup_cosine(warmup: int, total: int):
    """LambdaLR factor: linear warm-up over `warmup` steps, then a cosine to 0 at `total`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        done = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, done)))

    return factor


def save_atomically(payload: dict, path: Path) -> None:
    """torch.save through a temporary file and a rename: a reader (or a resume after a kill)
    sees the previous checkpoint or the new one, never half of one."""
    import torch

    tmp = path.with_name(f"{path.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
