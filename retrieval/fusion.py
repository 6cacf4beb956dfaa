"""The final score of a re-ranked (query, candidate) pair: one formula for every re-ranker
family (native, BLIP ITM), for search, evaluation and training alike."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import numpy as np
    import torch

# numpy arrays (search, evaluation) or tensors (training); named as strings, so that this
# module imports neither at run time
Scores = TypeVar("Scores", "np.ndarray", "torch.Tensor")


def fused_score(logits: Scores, stage1: Scores, stage1_weight: float) -> Scores:
    """The final score of a (query, candidate) pair: the re-ranker's logit plus
    `stage1_weight` times the stage-1 cosine (BLIP's ITM + ITC). numpy arrays or tensors.

    Search, evaluation and the training loss all rank by this; the training loss uses the
    encoder's logit scale (itc_weight) as the weight, calibration may pick another."""
    return logits + stage1_weight * stage1
