"""Caption edits that keep the words and change the meaning: hard negatives for matching.

ARO-style: swap the attributes of two objects, reverse a relation word, swap a relation's
two objects, or replace an object word. The word lists are generic English (colours,
spatial relations); object words are learned from the training captions (words that
follow a colour word), so the same edits work on COCO-style captions as on the generated
corpus.
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
    "beneath": "above",
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


def _noun_phrases(caption: str, objects: list[str]) -> list[tuple[int, int]]:
    """Spans of "a|an|the [up to two words] OBJECT" ("a big red circle", "the square");
    a background is not an object."""
    names = "|".join(
        re.escape(o) for o in sorted(objects, key=len, reverse=True) if o != "background"
    )
    if not names:
        return []
    pattern = rf"\b(?:a|an|the)\s+(?:[a-z]+\s+){{0,2}}?(?:{names})\b"
    return [m.span() for m in re.finditer(pattern, caption, re.IGNORECASE)]


# What may stand between a relation's first object and its word ("is to the"), between the
# word and its second object ("of"), and the "A with B to its left" / "... below it" form.
_LEFT_GAP = re.compile(r"\s+(?:is\s+)?(?:(?:to|on)\s+the\s+)?", re.IGNORECASE)
_RIGHT_GAP = re.compile(r"\s+(?:of\s+)?", re.IGNORECASE)
_ITS_GAP = re.compile(r"\s+(?:(?:to|on)\s+its\s+)?", re.IGNORECASE)
_IT_AFTER = re.compile(r"\s+it\b", re.IGNORECASE)
_WITH_GAP = re.compile(r"\s+with\s+", re.IGNORECASE)


def _relation_pairs(caption: str, objects: list[str]) -> list[tuple[tuple[int, int], ...]]:
    """(first object, second object) spans of every relation the caption states."""
    phrases = _noun_phrases(caption, objects)
    pairs = []
    for start, end, _ in _spans(caption, RELATION_FLIPS):
        before = [p for p in phrases if p[1] <= start]
        after = [p for p in phrases if p[0] >= end]
        if not before:
            continue
        a = before[-1]
        its = _ITS_GAP.fullmatch(caption, a[1], start) and (
            "its" in caption[a[1] : start].lower() or _IT_AFTER.match(caption, end)
        )
        if its and len(before) >= 2 and _WITH_GAP.fullmatch(caption, before[-2][1], a[0]):
            pairs.append((before[-2], a))  # A with B to its left: B is left of A
        elif (
            after
            and _LEFT_GAP.fullmatch(caption, a[1], start)
            and _RIGHT_GAP.fullmatch(caption, end, after[0][0])
        ):
            pairs.append((a, after[0]))  # A [is] [to the] left [of] B
    return pairs


def swap_operands(caption: str, rng: random.Random, objects: list[str]) -> str | None:
    """Exchange the two objects of a relation, keeping its word: "a red circle left of a
    blue square" -> "a blue square left of a red circle" (and "A with B to its left" ->
    "B with A to its left"). Only word order tells it from the caption: a bag of words
    cannot. None when the caption states no relation between two object phrases."""
    pairs = [
        (a, b)
        for a, b in _relation_pairs(caption, objects)
        if caption[a[0] : a[1]].lower() != caption[b[0] : b[1]].lower()
    ]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    first, second = caption[a[0] : a[1]], caption[b[0] : b[1]]
    return _replace(caption, [(*a, _case_like(second, first)), (*b, _case_like(first, second))])


def _case_like(phrase: str, slot: str) -> str:
    """`phrase` with the first letter's case of the phrase it replaces (sentence starts)."""
    head = phrase[0].upper() if slot[0].isupper() else phrase[0].lower()
    return head + phrase[1:]


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
