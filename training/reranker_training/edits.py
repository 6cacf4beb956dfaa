"""Caption edits as text negatives: every training caption's attribute swap, relation flip,
object change and swapped relation operands, encoded once by the frozen encoder, and the
(caption, edit) pairs the edit-pair loss draws from."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

# The columns of CaptionEdits.rows. "relation" reverses a relation word ("left" -> "right"),
# "operands" exchanges a relation's two objects ("A left of B" -> "B left of A").
EDIT_KINDS = ("attribute", "relation", "object", "operands")


@dataclass
class CaptionEdits:
    """Every training caption's meaning-changing edits, encoded once: a caption has few
    distinct edits, so encoding them every step would only repeat the text tower's work."""

    rows: np.ndarray  # (T, E) row of caption t's edit of kind e in the arrays below; -1: none
    tokens: object  # (X, L, D) float16 tensor
    lengths: object  # (X,) int64 tensor
    vectors: object  # (X, D) float32 tensor
    texts: list[str]  # (X,) the edited captions themselves

    def of(self, captions: np.ndarray):
        """The edits of a batch's captions: (tokens, lengths, batch row of each, vectors)."""
        rows = self.rows[captions]  # (B, E)
        batch_row, kind = np.nonzero(rows >= 0)
        ids = rows[batch_row, kind]
        return self.tokens[ids], self.lengths[ids], batch_row, self.vectors[ids]


def caption_edits(
    encoder, captions, rng: random.Random, device: str = "cpu", progress=None
) -> CaptionEdits:
    """Each caption's attribute swap, relation flip, object change and operand swap (those
    that apply);
    `progress("caption edits", done, total)` as they are encoded."""
    import torch

    from xmr.training.text_edits import (
        change_object,
        flip_relation,
        object_words,
        swap_attributes,
        swap_operands,
    )

    objects = object_words(captions)
    kinds = (
        swap_attributes,
        flip_relation,
        lambda c, r: change_object(c, r, objects),
        lambda c, r: swap_operands(c, r, objects),
    )
    rows = np.full((len(captions), len(kinds)), -1, np.int64)
    texts = []
    for t, caption in enumerate(captions):
        for k, edit in enumerate(kinds):
            edited = edit(caption, rng)
            if edited is not None and edited != caption:
                rows[t, k] = len(texts)
                texts.append(edited)
    if not texts:  # captions without colours, relations or known objects: no text negatives
        empty = torch.zeros(0, device=device)
        return CaptionEdits(rows, empty, empty.long(), empty, texts)
    encoded = encoded_texts(encoder, texts, "caption edits", device, progress)
    return CaptionEdits(rows, *encoded, texts)


def encoded_texts(encoder, texts: list[str], what: str, device: str, progress=None) -> tuple:
    """Texts through the frozen encoder, as the losses read them: (tokens (X, L, D) float16,
    lengths (X,) int64, vectors (X, D) float32) tensors on `device`;
    `progress(what, done, total)` as they are encoded."""
    import torch

    from xmr.evaluation.embed_dataset import encode_text_list

    encoded = encode_text_list(
        encoder,
        texts,
        progress=progress and (lambda _, done, total: progress(what, done, total)),
    )
    return (
        torch.from_numpy(encoded.tokens).to(device),
        torch.from_numpy(encoded.lengths.astype(np.int64)).to(device),
        torch.from_numpy(encoded.vectors).to(device),
    )


@dataclass
class EditPairs:
    """(caption, its edit, the caption's image) triples the edit-pair loss draws from."""

    captions: np.ndarray  # (P,) caption ids
    edits: np.ndarray  # (P,) rows into CaptionEdits' arrays
    images: np.ndarray  # (P,) image id of each caption

    def draw(self, n: int, rng) -> EditPairs:
        return self.take(rng.choice(len(self.captions), min(n, len(self.captions)), replace=False))

    def take(self, rows) -> EditPairs:
        return EditPairs(self.captions[rows], self.edits[rows], self.images[rows])


def edit_columns(kinds: str) -> list[int]:
    """The CaptionEdits.rows columns of the named edit kinds ("attribute,relation")."""
    from xmr.retrieval.errors import InputError

    names = [k.strip() for k in kinds.split(",") if k.strip()]
    unknown = sorted(set(names) - set(EDIT_KINDS))
    if unknown:
        raise InputError(
            f"--edit-kinds {kinds}: unknown kind {', '.join(unknown)}; "
            f"use a comma-separated subset of {','.join(EDIT_KINDS)}"
        )
    return [EDIT_KINDS.index(k) for k in names]


def edit_pair_pool(edits: CaptionEdits, kinds: str, text_to_image) -> EditPairs:
    """Every (caption, edit) of the named kinds, for the edit-pair loss."""
    rows = edits.rows[:, edit_columns(kinds)]  # (T, k)
    caption, column = np.nonzero(rows >= 0)
    return EditPairs(caption, rows[caption, column], np.asarray(text_to_image)[caption])
