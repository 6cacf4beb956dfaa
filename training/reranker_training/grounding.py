"""Grounding: where the words of a training caption should look, from the corpus's scenes.

The relation term (Reranker.relate) compares where words look (Reranker.word_looks). Trained
through the relation loss alone, those looks barely find their objects. In a generated
corpus the scene says where every object is, so a word that names one object of its
scene ("red" when one object is red, "hexagon" when one is a hexagon) gets that object's
patch as a target, and a cross-entropy over the patches teaches the looks directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xmr.training.reranker_training.caption_rows import CaptionRows


@dataclass
class GroundingTargets(CaptionRows):
    """One row per (caption, word that names one object): the caption's row, the word's
    last token's position in the caption's tokens, and the patch under the object's
    centre (row-major on the re-ranker's grid)."""

    positions: np.ndarray  # (G,) int64
    patches: np.ndarray  # (G,) int64


def grounding_targets(scenes, dataset, tokenizer, side: int) -> GroundingTargets:
    """Targets for every caption of `dataset` (its images' `scenes`, training.corpus
    Scene, in its order) on a `side` x `side` patch grid. A colour names an object when
    no other object of the scene has it, and not where it names the background ("on a
    red background"); a shape, when no other object has that shape."""
    ids = tokenizer(list(dataset.captions)).numpy()  # (T, ctx)
    word_ids = _word_ids(tokenizer)
    background = word_ids["background"]
    captions, positions, patches = [], [], []
    for text, image in enumerate(dataset.text_to_image):
        scene = scenes[image]
        colours = [o.colour for o in scene.objects]
        shapes = [o.shape for o in scene.objects]
        for obj in scene.objects:
            patch = _patch(obj.x, obj.y, scene.canvas, side)
            ends = []
            if colours.count(obj.colour) == 1:
                ends += [
                    end
                    for end in _occurrences(ids[text], word_ids[obj.colour])
                    if not _follows(ids[text], end, background)
                ]
            if shapes.count(obj.shape) == 1:
                ends += _occurrences(ids[text], word_ids[obj.shape])
            captions += [text] * len(ends)
            positions += ends
            patches += [patch] * len(ends)
    return GroundingTargets(
        np.asarray(captions, np.int64), np.asarray(positions, np.int64), np.asarray(patches)
    )


def grounding_loss(model, targets: GroundingTargets, text_to_image, f):
    """Cross-entropy of each target word's looks (over the patches) against its object's
    patch, the caption read against its own image. f: losses.FeatureTensors."""
    import torch.nn.functional as F

    from xmr.training.reranker_training.losses import own_image_words, torch_rows

    device = f.image_tokens.device
    rows, where = np.unique(targets.captions, return_inverse=True)  # (C,), (G,) into rows
    words, _, states = own_image_words(model, rows, text_to_image, f)
    looks = model.word_looks(words, states)  # (C, L, N')
    picked = looks[torch_rows(where, device), torch_rows(targets.positions, device)]  # (G, N')
    return F.cross_entropy(picked.float(), torch_rows(targets.patches, device))


def _word_ids(tokenizer) -> dict[str, np.ndarray]:
    """Colour, shape and "background" -> their token ids (a word may be several tokens)."""
    from xmr.training.corpus.scenes import COLOURS, SHAPES

    words = [*COLOURS, *SHAPES, "background"]
    ids = tokenizer(words).numpy()  # (n, ctx): start token, the word's tokens, end token
    return {w: row[1 : int((row != 0).sum()) - 1] for w, row in zip(words, ids, strict=True)}


def _occurrences(ids: np.ndarray, word: np.ndarray) -> list[int]:
    """Positions of the last token of each occurrence of `word` in `ids`."""
    n = len(word)
    return [
        start + n - 1
        for start in range(len(ids) - n + 1)
        if ids[start] == word[0] and np.array_equal(ids[start : start + n], word)
    ]


def _follows(ids: np.ndarray, end: int, word: np.ndarray) -> bool:
    """Whether `word` comes right after position `end`."""
    return np.array_equal(ids[end + 1 : end + 1 + len(word)], word)


def _patch(x: int, y: int, canvas: int, side: int) -> int:
    """The patch of a side x side grid over a canvas x canvas image that pixel (x, y) is in."""
    return min(side - 1, y * side // canvas) * side + min(side - 1, x * side // canvas)
