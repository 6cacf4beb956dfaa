"""Relation pairs: which word of a training caption states a relation, and which words it
joins, from the corpus grammar.

In "a red circle left of a blue square" the relation term (Reranker.relate) should read
"left" as a relation whose subject is "red"/"circle" and whose object is "blue"/"square".
Taught only by the ranking losses, its roles rarely settle on those words. The corpus
grammar (training/corpus/grammar.py) says which noun phrases a relation joins, so each
(relation word, subject word, object word) is a target, and a loss on the term's roles
teaches them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from xmr.training.corpus.checker import CLAUSES, NOUN_PHRASE_PARTS
from xmr.training.reranker_training.caption_rows import CaptionRows

# The word of a relation phrase that names its direction ("left" in "to the left of").
_DIRECTION_WORD = re.compile(r"\b(?:left|right|above|over|below|under|beneath)\b")


@dataclass
class RelationPairs(CaptionRows):
    """One row per (caption, relation word, subject word, object word): the caption's row
    and the positions of the words' last tokens in the caption's tokens (the start token
    at 0). The relation word names the direction ("left" of "to the left of"); a subject
    or object word is its noun phrase's colour or shape."""

    relations: np.ndarray  # (P,) int64
    subjects: np.ndarray  # (P,) int64
    objects: np.ndarray  # (P,) int64


def relation_pairs(captions, tokenizer) -> RelationPairs:
    """The relation pairs of `captions` (strings of the corpus grammar); a caption without
    a relation between two noun phrases has none."""
    rows: list[int] = []
    prefixes: list[str] = []  # per row: the text up to the relation, subject, object word
    for row, caption in enumerate(captions):
        text = caption.lower()
        for relation, subject, obj in _relations(text):
            for s in _word_ends(text, subject):
                for o in _word_ends(text, obj):
                    rows.append(row)
                    prefixes += [text[:relation], text[:s], text[:o]]
    # Each word's position: its prefix's token count, less the start and end tokens.
    ids = tokenizer(prefixes).numpy() if prefixes else np.zeros((0, 1), np.int64)
    at = ((ids != 0).sum(1).astype(np.int64) - 2).reshape(-1, 3)  # (P, 3)
    return RelationPairs(np.asarray(rows, np.int64), at[:, 0], at[:, 1], at[:, 2])


def relation_pair_loss(model, pairs: RelationPairs, text_to_image, f):
    """Cross-entropies of the relation term's roles (Reranker.relation_roles_of) against
    the grammar's: the gate's mass on the captions' relation words, and each relation
    word's subject and object mass on its subject's and its object's words (-log of each,
    averaged). Each caption is read against its own image. f: losses.FeatureTensors."""
    import torch

    from xmr.training.reranker_training.losses import own_image_words, torch_rows

    device = f.image_tokens.device
    rows, where = np.unique(pairs.captions, return_inverse=True)  # (C,), (P,) into rows
    words, mask, _ = own_image_words(model, rows, text_to_image, f)
    gate, subject, obj = (t.float() for t in model.relation_roles_of(words, mask))
    c, length = gate.shape
    at = (torch_rows(where, device), torch_rows(pairs.relations, device))
    is_relation = torch.zeros(c, length, dtype=torch.bool, device=device)
    is_relation[at] = True
    is_subject = torch.zeros(c, length, length, dtype=torch.bool, device=device)
    is_subject[(*at, torch_rows(pairs.subjects, device))] = True
    is_object = torch.zeros_like(is_subject)
    is_object[(*at, torch_rows(pairs.objects, device))] = True

    def nll(mass):
        return -torch.log(mass.clamp_min(1e-6)).mean()

    return (
        nll((gate * is_relation).sum(-1))  # (C,): one gate per caption
        + nll((subject * is_subject).sum(-1)[is_relation])  # (R,): one per relation word
        + nll((obj * is_object).sum(-1)[is_relation])
    )


def _relations(text: str) -> list[tuple[int, tuple[int, int], tuple[int, int]]]:
    """(where the relation word ends, subject span, object span) of each relation between
    noun phrases in `text`: "A [is] left of B" relates A to B; "A with B to its left"
    relates B to A."""
    found = []
    for m in CLAUSES["rel"].finditer(text):
        found.append((_direction_end(text, m.span(2)), m.span(1), m.span(3)))
    for m in CLAUSES["rel_it"].finditer(text):
        found.append((_direction_end(text, m.span(3)), m.span(2), m.span(1)))
    return found


def _direction_end(text: str, span: tuple[int, int]) -> int:
    """Where the word naming the direction ends in the relation phrase at `span`."""
    word = _DIRECTION_WORD.search(text, *span)
    assert word is not None  # every relation phrase of the grammar names one
    return word.end()


def _word_ends(text: str, span: tuple[int, int]) -> list[int]:
    """Where the colour and the shape word of the noun phrase at `span` of `text` end."""
    parts = NOUN_PHRASE_PARTS.fullmatch(text, *span)
    assert parts is not None  # the span matched a noun phrase
    return [parts.end(group) for group in (3, 4) if parts[group] is not None]
