"""Teaching a new pixel stem what each patch shows, before the re-ranker reads it.

A pixel stem added to a trained re-ranker starts silent (its output map at zero), and the
ranking losses reach its convolutions only through that map: after 450 steps they had
learned next to nothing. In a generated corpus the scene says which object covers every
patch, so the convolutions can first be taught directly to name the shape and colour
there (a cross-entropy per patch, through two linear heads used only for this), in a few
minutes on a CPU; the ranking steps then start from features that already see shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PatchLabels:
    """Per image and patch (row-major): 1 + the index of the shape and of the colour of
    the object whose box covers the patch's centre (the nearest one where boxes overlap),
    0 where none does."""

    shapes: np.ndarray  # (M, N) int64
    colours: np.ndarray  # (M, N) int64


def patch_labels(scenes, side: int) -> PatchLabels:
    """Labels of `scenes` (training.corpus Scene) on a side x side patch grid. Positions
    scale with the canvas: the corpus's square images are resized, never cropped, to the
    model's input."""
    from xmr.training.corpus.scenes import COLOURS, SHAPES, radius

    shapes = np.zeros((len(scenes), side * side), np.int64)
    colours = np.zeros_like(shapes)
    colour_names, shape_names = list(COLOURS), list(SHAPES)
    for i, scene in enumerate(scenes):
        step = scene.canvas / side
        for k in range(side * side):
            cx, cy = (k % side + 0.5) * step, (k // side + 0.5) * step
            covering = [
                ((cx - o.x) ** 2 + (cy - o.y) ** 2, o)
                for o in scene.objects
                if max(abs(cx - o.x), abs(cy - o.y)) <= radius(o.size, scene.canvas)
            ]
            if covering:
                nearest = min(covering, key=lambda pair: pair[0])[1]
                shapes[i, k] = 1 + shape_names.index(nearest.shape)
                colours[i, k] = 1 + colour_names.index(nearest.colour)
    return PatchLabels(shapes, colours)


def pretrain_pixel_stem(
    stem,
    pixels,
    labels: PatchLabels,
    epochs: int,
    held_out=None,
    lr: float = 2e-3,
    batch: int = 64,
    seed: int = 0,
    progress=None,
) -> dict:
    """Train `stem`'s convolutions (retrieval.pixel_stem.PixelStem; its output map is left
    alone) to name each patch's shape and colour. pixels: (M, N, 3 p^2) tensor of patch
    pixels; held_out: (pixels, PatchLabels) to measure on, or None.
    `progress("pixel stem", epoch, epochs)` after each epoch. -> the accuracies on patches
    an object covers, the held-out ones when given."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from xmr.training.corpus.scenes import COLOURS, SHAPES

    device = pixels.device
    width = stem.out.in_features
    heads = nn.ModuleDict(
        {"shapes": nn.Linear(width, 1 + len(SHAPES)), "colours": nn.Linear(width, 1 + len(COLOURS))}
    ).to(device)
    params = [*stem.convs.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    targets = {k: torch.from_numpy(getattr(labels, k)).to(device) for k in heads}
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(len(pixels), generator=generator).to(device)
        for start in range(0, len(pixels), batch):
            rows = order[start : start + batch]
            grid = stem.patch_features(pixels[rows].float())  # (b, N, W)
            loss = sum(
                F.cross_entropy(head(grid).flatten(0, 1), targets[k][rows].flatten())
                for k, head in heads.items()
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if progress:
            progress("pixel stem", epoch + 1, epochs)
    measured_pixels, measured = held_out if held_out is not None else (pixels, labels)
    return {"epochs": epochs, **_accuracies(stem, heads, measured_pixels, measured, batch)}


def _accuracies(stem, heads, pixels, labels: PatchLabels, batch: int) -> dict:
    """Shape and colour accuracy on the patches an object covers."""
    import torch

    hits = {k: 0 for k in heads}
    covered = 0
    with torch.no_grad():
        for start in range(0, len(pixels), batch):
            grid = stem.patch_features(pixels[start : start + batch].float())
            on_object = torch.from_numpy(labels.shapes[start : start + batch] > 0)
            covered += int(on_object.sum())
            for k, head in heads.items():
                truth = torch.from_numpy(getattr(labels, k)[start : start + batch])
                guess = head(grid).argmax(-1).cpu()
                hits[k] += int((guess == truth)[on_object].sum())
    return {f"{k}_accuracy": round(hits[k] / max(covered, 1), 4) for k in heads}
