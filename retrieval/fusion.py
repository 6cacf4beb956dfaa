"""The final score of a re-ranked (query, candidate) pair: one formula for every re-ranker
family (native, BLIP ITM), for search, evaluation and training alike."""

from __future__ import annotations


def fused_score(logits, stage1, stage1_weight: float):
    """The final score of a (query, candidate) pair: the re-ranker's logit plus
    `stage1_weight` times the stage-1 cosine (BLIP's ITM + ITC). numpy arrays or tensors.

    Search, evaluation and the training loss all rank by this; the training loss uses the
    encoder's logit scale (itc_weight) as the weight, calibration may pick another."""
    return logits + stage1_weight * stage1
