"""Pixels of a scene: flat shapes on a flat or lightly shaded background, drawn supersampled."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from xmr.retrieval.errors import InputError
from xmr.training.corpus.scenes import (
    BACKGROUNDS,
    COLOURS,
    SHADING_AMPLITUDE,
    SHAPES,
    Scene,
    radius,
)

_SUPERSAMPLE = 4  # draw 4x larger and box-downsample: smooth edges, exact flat interiors


def _background(scene: Scene, side: int) -> Image.Image:
    rgb = np.array(BACKGROUNDS[scene.background], dtype=np.int16)
    if scene.shading == "flat":
        return Image.new("RGB", (side, side), tuple(int(c) for c in rgb))
    ramp = np.linspace(-SHADING_AMPLITUDE, SHADING_AMPLITUDE, side).round().astype(np.int16)
    ramp = ramp[:, None] if scene.shading == "vertical" else ramp[None, :]
    pixels = np.clip(rgb[None, None, :] + ramp[:, :, None], 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(np.broadcast_to(pixels, (side, side, 3))), "RGB")


def _polygon(cx: float, cy: float, r: float, corners: int, start_deg: float) -> list[tuple]:
    step = 360 / corners
    return [
        (cx + r * math.cos(math.radians(start_deg + k * step)),
         cy + r * math.sin(math.radians(start_deg + k * step)))
        for k in range(corners)
    ]  # fmt: skip


def _star(cx: float, cy: float, r: float) -> list[tuple]:
    outer = _polygon(cx, cy, r, 5, -90)
    inner = _polygon(cx, cy, 0.45 * r, 5, -90 + 36)
    return [p for pair in zip(outer, inner, strict=True) for p in pair]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill):
    """Draw `shape` filled, centred on (cx, cy), inside the box of half-side `r`."""
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        h = 0.88 * r  # a full-box square looks much bigger than a circle of the same box
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif shape == "star":
        draw.polygon(_star(cx, cy, r), fill=fill)
    elif shape == "cross":
        w = 0.34 * r
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
    elif shape == "diamond":
        draw.polygon(
            [(cx, cy - r), (cx + 0.8 * r, cy), (cx, cy + r), (cx - 0.8 * r, cy)], fill=fill
        )
    elif shape == "hexagon":
        draw.polygon(_polygon(cx, cy, r, 6, 0), fill=fill)
    else:
        raise InputError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")


def render_scene(scene: Scene, size: int = 64) -> Image.Image:
    """The scene as a `size` x `size` RGB image (positions scale from the scene's canvas)."""
    side = size * _SUPERSAMPLE
    scale = side / scene.canvas
    image = _background(scene, side)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        cx, cy = (obj.x + 0.5) * scale, (obj.y + 0.5) * scale
        _draw_shape(
            draw, obj.shape, cx, cy, radius(obj.size, scene.canvas) * scale, COLOURS[obj.colour]
        )
    return image.reduce(_SUPERSAMPLE)
