"""open_clip's evaluation preprocessing in PIL and NumPy: resize the short side (bicubic,
as torchvision does on PIL images), centre crop, scale to [0, 1], normalise.

The parameters are read off the model's torchvision pipeline when the export is made
(`describe`) and kept in the export's metadata, so a cold query needs neither torchvision
nor open_clip to rebuild them; export.py checks that the two pipelines give the same
pixels before it trusts this one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


class UnsupportedPreprocess(Exception):
    """A torchvision pipeline this module does not reproduce."""


@dataclass(frozen=True)
class Resize:
    """The first step, named as torchvision's: imageio.py reads `size` off a step whose
    type name holds "Resize" to bound an image's size after resizing."""

    size: int  # the short side after resizing


class NumpyPreprocess:
    """RGB PIL image -> (3, H, W) float32, equal to open_clip's eval transform."""

    def __init__(self, size: int, crop: tuple[int, int], interpolation: str, mean, std):
        if interpolation not in INTERPOLATIONS:
            raise UnsupportedPreprocess(f"interpolation {interpolation}")
        self.size, self.crop, self.interpolation = int(size), tuple(crop), interpolation
        self.mean = np.asarray(mean, np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(3, 1, 1)
        self.transforms = [Resize(self.size)]

    def as_dict(self) -> dict:
        return {
            "size": self.size,
            "crop": list(self.crop),
            "interpolation": self.interpolation,
            "mean": self.mean.ravel().tolist(),
            "std": self.std.ravel().tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> NumpyPreprocess:
        return cls(data["size"], data["crop"], data["interpolation"], data["mean"], data["std"])

    def __call__(self, image: Image.Image) -> np.ndarray:
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(self.size * long / short)  # torchvision truncates the long side
        size = (self.size, new_long) if w <= h else (new_long, self.size)
        if size != (w, h):
            image = image.resize(size, INTERPOLATIONS[self.interpolation])
        ch, cw = self.crop
        w, h = image.size
        if w < cw or h < ch:
            raise UnsupportedPreprocess("an image smaller than the crop after resizing")
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        image = image.crop((left, top, left + cw, top + ch))
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
        return (pixels.transpose(2, 0, 1) - self.mean) / self.std  # (3, H, W)


def describe(transform) -> NumpyPreprocess:
    """The NumpyPreprocess equal to an open_clip eval pipeline (a torchvision Compose of
    Resize(int), CenterCrop, mode conversion, ToTensor, Normalize); raises
    UnsupportedPreprocess for any other."""
    size: int | None = None
    crop: tuple[int, int] | None = None
    mean = std = None
    interpolation = "bicubic"
    for step in getattr(transform, "transforms", ()):
        name = type(step).__name__
        if name == "Resize":
            value = step.size
            value = value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value
            if not isinstance(value, int) or getattr(step, "max_size", None):
                raise UnsupportedPreprocess(f"resize to {step.size}")
            size, interpolation = value, str(step.interpolation.value)
        elif name == "CenterCrop":
            crop = (int(step.size[0]), int(step.size[1]))
        elif name == "Normalize":
            mean, std = step.mean, step.std
        elif name not in ("MaybeConvertMode", "MaybeToTensor", "ToTensor", "_convert_to_rgb"):
            raise UnsupportedPreprocess(f"step {name}")
    if size is None or crop is None or mean is None:
        raise UnsupportedPreprocess("no resize, crop or normalisation")
    return NumpyPreprocess(size, crop, interpolation, mean, std)
