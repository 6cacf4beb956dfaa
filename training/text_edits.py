"""Caption edits that keep the words and change the meaning: hard negatives for matching.

ARO-style: swap the attributes of two objects, reverse a relation, or replace an object
word. The word lists are generic English (colours, spatial relations); object words are
learned from the training captions (words that follow a colour word), so the same edits
work on COCO-style captions as on the generated corpus.
"""

from __future__ import annotations

import random
import re
from collections import Counter

COLOURS = (
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "orange",
    "white",
    "black",
    "pink",
    "brown",
    "gray",
    "grey",
    "cyan",
    "magenta",
    "teal",
    "silver",
    "gold",
)
RELATION_FLIPS = {
    "left": "right",
    "right": "left",
    "above": "below",
    "below": "above",
    "top": "bottom",
    "bottom": "top",
    "over": "under",
    "under": "over",
    "behind": "in front of",
}
_WORD = re.compile(r"[A-Za-z]+")


def object_words(captions, min_count: int = 5) -> list[str]:
    """Words that follow a colour word often enough: the corpus's nouns for objects."""
    counts: Counter[str] = Counter()
    for caption in captions:
        words = _WORD.findall(caption.lower())
        for a, b in zip(words, words[1:], strict=False):
            if a in COLOURS and b not in COLOURS:
                counts[b] += 1
    return [w for w, c in counts.most_common() if c >= min_count]


def _spans(caption: str, vocabulary) -> list[tuple[int, int, str]]:
    vocab = set(vocabulary)
    return [
        (m.start(), m.end(), m.group())
        for m in _WORD.finditer(caption)
        if m.group().lower() in vocab
    ]


def _replace(caption: str, edits: list[tuple[int, int, str]]) -> str:
    for start, end, word in sorted(edits, reverse=True):
        caption = caption[:start] + word + caption[end:]
    return caption


_BACKGROUND = re.compile(r"\s*background\b", re.IGNORECASE)


def swap_attributes(caption: str, rng: random.Random) -> str | None:
    """Exchange two different colour words: binds each colour to the other object.

    A background's colour stays: "a cyan background" would be a negative that the text
    alone gives away (backgrounds and objects use different colours), not a binding test.
    """
    spans = [s for s in _spans(caption, COLOURS) if not _BACKGROUND.match(caption, s[1])]
    pairs = [
        (a, b) for i, a in enumerate(spans) for b in spans[i + 1 :] if a[2].lower() != b[2].lower()
    ]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    # Swap every mention of the two colours, so "the red circle ... the red one" stays coherent.
    edits = [
        (s, e, b[2] if w.lower() == a[2].lower() else a[2])
        for s, e, w in spans
        if w.lower() in (a[2].lower(), b[2].lower())
    ]
    return _replace(caption, edits)


def flip_relation(caption: str, rng: random.Random) -> str | None:
    spans = _spans(caption, RELATION_FLIPS)
    if not spans:
        return None
    start, end, word = rng.choice(spans)
    return _replace(caption, [(start, end, RELATION_FLIPS[word.lower()])])


def change_object(caption: str, rng: random.Random, objects: list[str]) -> str | None:
    spans = _spans(caption, objects)
    if not spans:
        return None
    start, end, word = rng.choice(spans)
    present = {w.lower() for _, _, w in spans}
    choices = [o for o in objects if o not in present]
    if not choices:
        return None
    new = rng.choice(choices)
    # Every mention of that object changes, or a later "the circle" would still be true.
    return _replace(caption, [(s, e, new) for s, e, w in spans if w.lower() == word.lower()])
