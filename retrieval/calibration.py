"""One score people can read: every result's shown score is a number from 0 to 1 on the
same scale, whatever kind of query found it and whichever stage ordered it.

The raw scores do not share a scale: a re-ranked score is the re-ranker's logit plus a
weight times the stage-1 cosine (fusion.py; about 40 for a good match with xmr-tiny, about
8 with BLIP ITM), and a stage-1 cosine between a text and an image spans about 0.1..0.4
with open_clip's photo models while one between two images spans 0.5..1. So each is
mapped to a probability of a match:

  re-ranked (text <-> image)   p = sigmoid(slope * fused + intercept), fitted on a
                               validation split (Platt scaling). Without a fit: the fused
                               score read as log-odds, sigmoid(fused).
  stage 1, text <-> image      p = sigmoid(slope * cosine + intercept), fitted on the same
                               split for the model. Without a fit: the cosine clipped to
                               0..1.
  stage 1, same modality       the cosine clipped to 0..1 (image -> image, text -> text:
                               there is no "match" to fit against; 1 is the same picture).

Every mapping is increasing, so the shown score never changes the order the raw scores
give. A fit lives beside the model it was fitted for, in `score_calibration.json`: the
encoder's folder holds the stage-1 fit, a re-ranker's folder the re-ranked fit (with the
stage-1 weight and weights fingerprint it was fitted at: a re-ranker retrained or
recalibrated since then falls back to the default rather than show a stale probability).
docs/models/xmr-tiny.md says how the shipped model's was made.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from xmr.retrieval.errors import InvalidModelSpec

CALIBRATION_FILE = "score_calibration.json"


@dataclass(frozen=True)
class Logistic:
    """p = sigmoid(slope * x + intercept); increasing whenever slope > 0."""

    slope: float
    intercept: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return sigmoid(self.slope * np.asarray(x, dtype=np.float64) + self.intercept)

    def inverse(self, p: float) -> float:
        """The raw score whose probability is `p` (0 < p < 1)."""
        return (math.log(p / (1 - p)) - self.intercept) / self.slope


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0  # two branches so that neither exp overflows
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, steps: int = 100) -> Logistic:
    """Platt scaling: the logistic regression of labels `y` (0/1) on one score `x`, by
    Newton's method on standardised x with a small L2 penalty on the slope (so perfectly
    separated data gives a steep but finite mapping). Raises ValueError without both
    labels, or when the fit comes out decreasing (the score does not rank matches first)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if len(x) != len(y) or not (y.min(initial=1) == 0 and y.max(initial=0) == 1):
        raise ValueError("a calibration needs scores of both matches and non-matches")
    mean, scale = float(x.mean()), float(x.std()) or 1.0
    z = np.stack([(x - mean) / scale, np.ones_like(x)], axis=1)  # (n, 2)
    w = np.zeros(2)
    penalty = np.diag([l2 * len(x), 0.0])
    for _ in range(steps):
        p = sigmoid(z @ w)
        grad = z.T @ (p - y) + penalty @ w
        hess = (z * (p * (1 - p))[:, None]).T @ z + penalty + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    slope = w[0] / scale
    if not slope > 0:
        raise ValueError("the fitted mapping is not increasing: these scores do not rank matches")
    return Logistic(float(slope), float(w[1] - slope * mean))


# -- the mappings a search applies ------------------------------------------------------


def stage1_probability(cosines: np.ndarray, cross_modal: bool, fit: Logistic | None) -> np.ndarray:
    """Shown scores of stage-1 results (see the module docstring)."""
    if cross_modal and fit is not None:
        return fit(cosines)
    return np.clip(np.asarray(cosines, dtype=np.float64), 0.0, 1.0)


def rerank_probability(fused: np.ndarray, fit: Logistic | None) -> np.ndarray:
    """Shown scores of re-ranked results: the fit, else the fused score as log-odds."""
    return fit(fused) if fit is not None else sigmoid(fused)


# -- files -------------------------------------------------------------------------------


def read_calibration(folder: Path | str | None) -> dict:
    """The calibration file in `folder` as a dict ({} when there is none)."""
    if folder is None:
        return {}
    path = Path(folder) / CALIBRATION_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidModelSpec(f"{path} is not a score calibration ({exc})") from exc
    if not isinstance(data, dict):
        raise InvalidModelSpec(f"{path} is not a score calibration")
    return data


def mapping(data: dict, key: str) -> Logistic | None:
    """The fit under `key` ("stage1" | "rerank") of a calibration file's dict, if any."""
    entry = data.get(key)
    if not isinstance(entry, dict):
        return None
    try:
        fit = Logistic(float(entry["slope"]), float(entry["intercept"]))
    except (KeyError, TypeError, ValueError):
        return None
    return fit if fit.slope > 0 and math.isfinite(fit.intercept) else None


def stage1_fit(model_folder: Path | str | None) -> Logistic | None:
    """The stage-1 (text <-> image cosine) fit kept in an encoder's folder, if any."""
    return mapping(read_calibration(model_folder), "stage1")


def rerank_fit(folder: Path | str, stage1_weight: float, fingerprint: str) -> Logistic | None:
    """The re-ranked fit kept in a re-ranker's folder, if it was fitted for this re-ranker
    as it is now: the same weights (fingerprint) and the same stage-1 weight."""
    data = read_calibration(folder)
    if data.get("fingerprint") not in (None, fingerprint):
        return None
    weight = data.get("stage1_weight")
    if not isinstance(weight, int | float) or abs(weight - stage1_weight) > 1e-6 * max(
        1.0, abs(stage1_weight)
    ):
        return None
    return mapping(data, "rerank")


def write_calibration(folder: Path | str, **entries: object) -> Path:
    """Write (or update) `folder`'s calibration file: each entry a Logistic or plain data.
    Atomic: a temporary file, fsync, rename."""
    import os

    path = Path(folder) / CALIBRATION_FILE
    data = read_calibration(folder)
    for key, value in entries.items():
        data[key] = asdict(value) if isinstance(value, Logistic) else value
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(data, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
