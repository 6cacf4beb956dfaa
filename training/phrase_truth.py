"""Which batch pairs a contrastive step must not count as negatives, for phrase training.

A sentence describes one scene; a short phrase ("circles", "a red square") is true of
many. CLIP's loss treats every other image of a batch as a negative for a text, so with
phrases it pushes "circles" away from every other image with circles in it. From an xmr
corpus's scene records, `PhraseTruth.false_negatives` names those pairs: a phrase of one
image that `is_phrase_true` of another image of the batch. `masked_clip_loss` leaves
them out of both directions of the loss.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class PhraseTruth:
    """The scenes of a training split (from its captions.json) and which of its captions
    are phrases; `false_negatives` for a batch of (image, caption) pairs."""

    def __init__(self, scenes: list, is_phrase: np.ndarray, captions: list[str]):
        self.scenes = scenes  # (n_images,) training.corpus Scene, in the dataset's order
        self.is_phrase = is_phrase  # (n_texts,) bool
        self.captions = captions  # (n_texts,)

    @classmethod
    def of_dataset(cls, data: str | Path, dataset) -> PhraseTruth:
        """From the corpus file `data` that `dataset` (evaluation.datasets.RetrievalDataset,
        loaded with phrases=True) was read from: records are matched by image path."""
        from xmr.training.corpus.records import dataset_records
        from xmr.training.corpus.scenes import Scene

        records = dataset_records(data, dataset, "true phrases can be masked")
        scenes = [Scene.from_json(rec["scene"]) for rec in records]
        is_phrase = np.zeros(len(dataset.captions), bool)
        for image, texts in enumerate(dataset.image_to_texts):
            own = {p.strip() for p in records[image].get("phrases") or []}
            for t in texts:
                is_phrase[t] = dataset.captions[t] in own
        return cls(scenes, is_phrase, list(dataset.captions))

    def false_negatives(self, images: np.ndarray, captions: np.ndarray) -> np.ndarray:
        """images (B,), captions (B,): pair b is image images[b] with caption captions[b].
        -> (B, B) bool, [i, j] True where i != j and caption j is a phrase true of image i
        (then image i and text j are a match the loss must not push apart)."""
        from xmr.training.corpus.phrases import is_phrase_true

        n = len(images)
        mask = np.zeros((n, n), bool)
        for j, caption in enumerate(captions):
            if not self.is_phrase[caption]:
                continue
            text = self.captions[caption]
            for i, image in enumerate(images):
                if i != j and is_phrase_true(self.scenes[image], text):
                    mask[i, j] = True
        return mask


def masked_clip_loss(image_features, text_features, logit_scale, false_negatives=None):
    """CLIP's symmetric cross-entropy, matched pairs on the diagonal: image_features (B, D),
    text_features (B, D), both unit norm; false_negatives (B, B) bool or None, [i, j] True
    leaves image i / text j out of each other's negatives (open_clip's ClipLoss when None
    or all False)."""
    import torch
    import torch.nn.functional as F

    logits = logit_scale * image_features @ text_features.T  # (B images, B texts)
    if false_negatives is not None:
        mask = torch.as_tensor(false_negatives, device=logits.device)
        logits = logits.masked_fill(mask, float("-inf"))  # the diagonal is never masked
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
