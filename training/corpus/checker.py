"""`is_caption_true`: parse a caption of the grammar back and check it against a scene.

The tests use it as an oracle: every caption the corpus writes must be true of its scene,
every negative false.
"""

from __future__ import annotations

import re

from xmr.retrieval.errors import InputError
from xmr.training.corpus.grammar import ABS_WORDS, REL_IT_WORDS, REL_WORDS, SIZE_WORDS
from xmr.training.corpus.scenes import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    Scene,
    SceneObject,
    relation_holds,
)


def _alternation(words) -> str:
    # Longest first, so "to the left of" is not read as a shorter phrase.
    return "(?:" + "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True)) + ")"


_SIZE_OF = {word: size for size, words in SIZE_WORDS.items() for word in words}
_DIRECTION_OF = {
    table_name: {phrase: d for d, phrases in table.items() for phrase in phrases}
    for table_name, table in (("rel", REL_WORDS), ("rel_it", REL_IT_WORDS), ("abs", ABS_WORDS))
}
_NP = (
    rf"\b(?:a|an|the)(?: {_alternation(_SIZE_OF)})?(?: {_alternation(COLOURS)})?"
    rf" {_alternation(SHAPES)}"
)
NOUN_PHRASE_PARTS = re.compile(
    rf"(a|an|the)(?: ({_alternation(_SIZE_OF)}))?(?: ({_alternation(COLOURS)}))?"
    rf" ({_alternation(SHAPES)})"
)
_BG = _alternation(BACKGROUNDS)
_PREFIX = re.compile(rf"on an? ({_BG}) background, ")
_SUFFIX = re.compile(rf" on an? ({_BG}) background$")
_LEAD = re.compile(r"(?:an image|a picture) of ")
_SEPARATOR = re.compile(r"; |, and |\. ")
_LIST_SEPARATOR = re.compile(r", | and ")
CLAUSES = {
    "rel": re.compile(rf"({_NP})(?: is)? ({_alternation(_DIRECTION_OF['rel'])}) ({_NP})"),
    "rel_it": re.compile(rf"({_NP}) with ({_NP}) ({_alternation(_DIRECTION_OF['rel_it'])})"),
    "abs": re.compile(rf"({_NP}) is ({_alternation(_DIRECTION_OF['abs'])})"),
    "exist": re.compile(rf"(?:there (?:is|are) (?:also )?)?({_NP}(?:(?:, | and ){_NP})*)"),
}


def _referents(scene: Scene, np_text: str) -> list[SceneObject] | None:
    """Objects a noun phrase can mean; None when "the ..." does not pick out exactly one."""
    match = NOUN_PHRASE_PARTS.fullmatch(np_text)
    assert match is not None  # only called on text that matched _NP
    article, size_word, colour, shape = match.groups()
    found = [
        o
        for o in scene.objects
        if o.shape == shape
        and (colour is None or o.colour == colour)
        and (size_word is None or o.size == _SIZE_OF[size_word])
    ]
    if article == "the" and len(found) != 1:
        return None
    return found


def _related(scene: Scene, first: str, direction: str, second: str) -> bool:
    """Some referent of `first` is `direction` of a different referent of `second`."""
    xs, ys = _referents(scene, first), _referents(scene, second)
    return bool(xs and ys) and any(
        x is not y and relation_holds(x, direction, y, scene.canvas) for x in xs for y in ys
    )


def _outermost(scene: Scene, x: SceneObject, direction: str) -> bool:
    """Whether `x` is `direction` of every other object, as in "the circle is on the left"."""
    others = [o for o in scene.objects if o is not x]
    return all(relation_holds(x, direction, o, scene.canvas) for o in others)


def _clause_true(scene: Scene, clause: str) -> bool:
    if m := CLAUSES["rel"].fullmatch(clause):
        return _related(scene, m[1], _DIRECTION_OF["rel"][m[2]], m[3])
    if m := CLAUSES["rel_it"].fullmatch(clause):
        return _related(scene, m[2], _DIRECTION_OF["rel_it"][m[3]], m[1])
    if m := CLAUSES["abs"].fullmatch(clause):
        direction = _DIRECTION_OF["abs"][m[2]]
        return any(_outermost(scene, x, direction) for x in _referents(scene, m[1]) or [])
    if m := CLAUSES["exist"].fullmatch(clause):
        return all(_referents(scene, np_text) for np_text in _LIST_SEPARATOR.split(m[1]))
    raise InputError(f"caption clause {clause!r} is not in the xmr-shapes grammar")


def is_caption_true(scene: Scene, caption: str) -> bool:
    """Whether every object the caption mentions exists (with the stated size, colour and
    shape), every stated relation holds, and a stated background matches.

    Raises InputError for text outside the grammar described above `REL_WORDS`.
    """
    text = " ".join(caption.lower().split()).rstrip(".")
    backgrounds = []
    if m := _PREFIX.match(text):
        backgrounds.append(m[1])
        text = text[m.end() :]
    if m := _LEAD.match(text):
        text = text[m.end() :]
    if m := _SUFFIX.search(text):
        backgrounds.append(m[1])
        text = text[: m.start()]
    if any(bg != scene.background for bg in backgrounds):
        return False
    return all(_clause_true(scene, clause) for clause in _SEPARATOR.split(text))
