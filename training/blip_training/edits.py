"""Caption edits as text negatives: for each batch image, its caption with two colours
swapped, the relation reversed or an object changed (training/text_edits, the native
trainer's edits), one kind drawn at random among those that apply. They teach what
stage 1 cannot see, which word goes with which object, and cost no encoder pass here:
the matcher reads the edited words itself."""

from __future__ import annotations

import random

import numpy as np


class CaptionEditor:
    def __init__(self, captions, seed: int):
        from xmr.training.text_edits import object_words

        self.captions = captions
        self.objects = object_words(captions)
        self.rng = random.Random(seed)

    def edit(self, caption: str) -> str | None:
        """One meaning-changing edit of `caption`, or None when none applies."""
        from xmr.training.text_edits import change_object, flip_relation, swap_attributes

        kinds = [
            swap_attributes,
            flip_relation,
            lambda c, r: change_object(c, r, self.objects),
        ]
        self.rng.shuffle(kinds)
        for kind in kinds:
            edited = kind(caption, self.rng)
            if edited is not None and edited.lower() != caption.lower():
                return edited
        return None

    def batch(self, caption_ids, tokenizer, max_tokens: int):
        """Edits of the batch's captions -> (input_ids (E, L), lengths (E,), batch row of
        each (E,)); E <= B, empty tensors when nothing applies."""
        import torch

        from xmr.training.blip_training.data import tokenize

        texts, rows = [], []
        for row, t in enumerate(caption_ids):
            edited = self.edit(self.captions[t])
            if edited is not None:
                texts.append(edited)
                rows.append(row)
        if not texts:
            return torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, dtype=torch.long), rows
        ids, lengths = tokenize(tokenizer, texts, max_tokens)
        return ids, lengths, np.asarray(rows, np.int64)
