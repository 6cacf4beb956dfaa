"""CaptionRows: per-caption training targets, one row each, drawn a few captions a step."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np


@dataclass
class CaptionRows:
    """Rows of targets, each for one caption of the training split (`captions`, its
    row); a subclass adds one array per target field, as long as `captions`."""

    captions: np.ndarray  # (G,) int64

    @functools.cached_property
    def distinct_captions(self) -> np.ndarray:
        """(C,) the captions that have a row, once (drawn from every step)."""
        return np.unique(self.captions)

    def of_captions(self, n: int, rng: np.random.Generator):
        """Every row of `n` captions drawn at random from those that have one."""
        chosen = rng.choice(self.distinct_captions, size=n, replace=False)
        keep = np.isin(self.captions, chosen)
        fields = {f.name: getattr(self, f.name)[keep] for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **fields)
