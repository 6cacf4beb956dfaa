"""True captions of a scene in varied templates, and ARO-style negatives: the same wording
with two colours swapped, the relation reversed, or one shape or colour replaced."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from xmr.retrieval.errors import InputError
from xmr.training.corpus.checker import is_caption_true
from xmr.training.corpus.grammar import ABS_WORDS, REL_IT_WORDS, REL_WORDS, SIZE_WORDS
from xmr.training.corpus.scenes import (
    CLEAR_RATIO,
    COLOURS,
    DIRECTIONS,
    OPPOSITE,
    SHAPES,
    Scene,
    relation_holds,
)


@dataclass(frozen=True)
class _Thing:
    """An object as captions see it. `shape_unique`: "the <shape>" alone names it."""

    colour: str
    shape: str
    size: str
    shape_unique: bool


@dataclass(frozen=True)
class _Facts:
    """What a caption may state: the objects, the scene's relation, and optionally one more
    clear relation of the third object. Negatives are captions of altered facts."""

    things: tuple[_Thing, ...]
    background: str
    relation: tuple[int, str, int] | None
    extra: tuple[int, str, int] | None


def _facts_of(scene: Scene, rng: random.Random) -> _Facts:
    shapes = [o.shape for o in scene.objects]
    things = tuple(
        _Thing(o.colour, o.shape, o.size, shapes.count(o.shape) == 1) for o in scene.objects
    )
    extra = None
    if len(scene.objects) == 3:
        third = scene.objects[2]
        clear = [
            (2, d, m)
            for m in (0, 1)
            for d in DIRECTIONS
            if relation_holds(third, d, scene.objects[m], scene.canvas, CLEAR_RATIO)
        ]
        pick = rng.random()  # drawn even when unused, so later draws do not shift
        extra = clear[int(pick * len(clear))] if clear else None
    return _Facts(things, scene.background, scene.relation, extra)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


class _Writer:
    """Writes one caption of a template. Its word choices come from a private RNG and draw the
    same numbers whatever the colours and shapes are, so the same seed applied to altered facts
    gives the same wording with only the altered words changed: a minimal-edit negative."""

    def __init__(self, facts: _Facts, seed: int):
        self.facts = facts
        self._rng = random.Random(seed)
        self.with_sizes = self.pick((True, True, False))

    def pick(self, options: tuple | list):
        return options[int(self._rng.random() * len(options))]

    def shuffled(self, items: list) -> list:
        items = list(items)
        self._rng.shuffle(items)
        return items

    def a(self, k: int) -> str:
        """Indefinite mention with colour and shape, and size when this caption states sizes."""
        thing = self.facts.things[k]
        size_word = self.pick(SIZE_WORDS[thing.size])
        words = ([size_word] if self.with_sizes else []) + [thing.colour, thing.shape]
        return f"{_article(words[0])} {' '.join(words)}"

    def the(self, k: int) -> str:
        """Definite mention: "the circle" when the shape is unique, else "the red circle"."""
        thing = self.facts.things[k]
        short = self.pick((True, False))
        return (
            f"the {thing.shape}"
            if short and thing.shape_unique
            else f"the {thing.colour} {thing.shape}"
        )

    def relation(self) -> tuple[int, str, int]:
        """The scene's relation, phrased from either end ("A left of B" or "B right of A")."""
        assert self.facts.relation is not None
        i, direction, j = self.facts.relation
        return (j, OPPOSITE[direction], i) if self.pick((False, True)) else (i, direction, j)

    def listing(self, ks: list[int]) -> str:
        names = [self.a(k) for k in self.shuffled(ks)]
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


# Each template returns (body, may_take_lead, may_take_suffix): a lead ("an image of") needs a
# body that starts with a noun phrase, a background suffix a single plain clause.
_Template = Callable[[_Writer], tuple[str, bool, bool]]


def _t_one(w: _Writer) -> tuple[str, bool, bool]:  # a big red circle
    return w.a(0), True, True


def _t_there_is(w: _Writer) -> tuple[str, bool, bool]:  # there is a red circle [and ...]
    return "there is " + w.listing(list(range(len(w.facts.things)))), False, True


def _t_rel(w: _Writer) -> tuple[str, bool, bool]:  # a red circle left of a blue square
    i, d, j = w.relation()
    return f"{w.a(i)} {w.pick(REL_WORDS[d])} {w.a(j)}", True, True


def _t_is_rel(w: _Writer) -> tuple[str, bool, bool]:  # a red circle is to the left of a ...
    i, d, j = w.relation()
    return f"{w.a(i)} is {w.pick(REL_WORDS[d])} {w.a(j)}", False, True


def _t_with(w: _Writer) -> tuple[str, bool, bool]:  # a red circle with a blue square to its right
    i, d, j = w.relation()
    return f"{w.a(j)} with {w.a(i)} {w.pick(REL_IT_WORDS[d])}", True, True


def _t_there_abs(w: _Writer) -> tuple[str, bool, bool]:  # there is A and B; the circle is on ...
    i, d, _ = w.relation()
    return f"there is {w.listing([0, 1])}; {w.the(i)} is {w.pick(ABS_WORDS[d])}", False, False


def _t_list_rel(w: _Writer) -> tuple[str, bool, bool]:  # A[, C] and B; the circle is left of ...
    listing = w.listing(list(range(len(w.facts.things))))
    i, d, j = w.relation()
    return f"{listing}; {w.the(i)} is {w.pick(REL_WORDS[d])} {w.the(j)}", True, False


def _t_there_rel(w: _Writer) -> tuple[str, bool, bool]:  # there is A, B and C; the A is left ...
    body, _, _ = _t_list_rel(w)
    return "there is " + body, False, False


def _t_rel_also(w: _Writer) -> tuple[str, bool, bool]:  # A left of B; there is also C
    body, lead, _ = w.pick((_t_rel, _t_is_rel, _t_with))(w)
    return f"{body}{w.pick(('; ', ', and '))}there is also {w.a(2)}", lead, False


def _t_rel_rel(w: _Writer) -> tuple[str, bool, bool]:  # A is left of B. C is above the B.
    i, d, j = w.relation()
    first = f"{w.a(i)} is {w.pick(REL_WORDS[d])} {w.a(j)}"
    assert w.facts.extra is not None
    k, d2, m = w.facts.extra
    return (
        f"{first}{w.pick(('; ', '. '))}{w.a(k)} is {w.pick(REL_WORDS[d2])} {w.the(m)}",
        False,
        False,
    )


def _templates(facts: _Facts) -> list[_Template]:
    if len(facts.things) == 1:
        return [_t_one, _t_there_is]
    if len(facts.things) == 2:
        return [_t_rel, _t_is_rel, _t_with, _t_there_abs, _t_list_rel]
    three = [_t_there_rel, _t_list_rel, _t_rel_also, _t_rel_also]
    return three + [_t_rel_rel] if facts.extra else three + [_t_there_rel]


@dataclass(frozen=True)
class _Spec:
    """Which template and which word choices: enough to rewrite a caption for other facts."""

    template: _Template
    seed: int


def _write(facts: _Facts, spec: _Spec) -> str:
    w = _Writer(facts, spec.seed)
    body, may_lead, may_suffix = spec.template(w)
    lead = w.pick(("", "", "an image of ", "a picture of "))
    place = w.pick(("none", "none", "prefix", "suffix"))
    text = (lead if may_lead else "") + body
    if place == "prefix" or (place == "suffix" and not may_suffix):
        text = f"on a {facts.background} background, {text}"
    elif place == "suffix":
        text = f"{text} on a {facts.background} background"
    return _sentence_case(text)


def _sentence_case(text: str) -> str:
    sentences = text.split(". ")
    return ". ".join(s[0].upper() + s[1:] for s in sentences) + "."


def _with_thing(facts: _Facts, k: int, **changes) -> _Facts:
    things = list(facts.things)
    things[k] = replace(things[k], **changes)
    return replace(facts, things=tuple(things))


def _negative_facts(scene: Scene, facts: _Facts, rng: random.Random) -> dict[str, _Facts]:
    """Altered facts, each false of the scene: swapped colours of the related pair, reversed
    relation and swapped relation operands (scenes with 2-3 objects), one shape or one
    colour replaced by one the scene lacks.
    All rng draws happen whatever the scene, so later draws do not depend on which apply."""
    out: dict[str, _Facts] = {}
    k_shape, k_colour = rng.randrange(len(facts.things)), rng.randrange(len(facts.things))
    new_shape = rng.choice([s for s in SHAPES if all(t.shape != s for t in facts.things)])
    spare = [
        c for c in COLOURS if c != scene.background and all(t.colour != c for t in facts.things)
    ]
    new_colour = rng.choice(spare)
    if facts.relation is not None:
        i, direction, j = facts.relation
        a, b = facts.things[i], facts.things[j]
        # Swapping equal colours changes nothing, and swapping the colours of two equal shapes
        # just describes the pair the other way round; ARO skips both.
        if a.colour != b.colour and a.shape != b.shape:
            swapped = _with_thing(facts, i, colour=b.colour)
            out["attribute_swap"] = _with_thing(swapped, j, colour=a.colour)
        out["relation_swap"] = replace(facts, relation=(i, OPPOSITE[direction], j))
        # The same false fact with the relation word kept and the objects exchanged ("B left
        # of A"): only word order tells it from the truth. Draws nothing from the rng.
        out["operand_swap"] = replace(facts, relation=(j, direction, i))
    out["shape_change"] = _with_thing(facts, k_shape, shape=new_shape)
    out["colour_change"] = _with_thing(facts, k_colour, colour=new_colour)
    return out


@dataclass(frozen=True)
class Description:
    """Captions of a scene, and hard negatives that are minimal edits of `captions[0]`."""

    captions: list[str]
    negatives: dict[str, str]


def describe(scene: Scene, rng: random.Random, n: int = 5) -> Description:
    """`n` distinct true captions (as varied in template as the scene allows) and negatives.

    Negatives: "attribute_swap" (colours of the related pair exchanged; only when they differ
    in colour and in shape), "relation_swap" (relation word reversed), "operand_swap" (the
    relation's two objects exchanged, its word kept), "shape_change" and
    "colour_change" (one object given a shape / colour the scene lacks). Single-object scenes
    have no relation, so they get only the last two. Each negative is checked false.
    The rng is consumed in the same order for every `n`, so `negatives` pair with the first
    caption of `captions_for` called with an equally seeded rng.
    """
    if n < 1:
        raise InputError(f"n={n}: ask for at least one caption")
    facts = _facts_of(scene, rng)
    templates = _templates(facts)
    rng.shuffle(templates)
    captions: list[str] = []
    negatives: dict[str, str] = {}
    for index in range(n):
        for _ in range(100):  # redraw wording until it differs from the captions so far
            spec = _Spec(templates[index % len(templates)], rng.getrandbits(32))
            text = _write(facts, spec)
            if text not in captions:
                break
        captions.append(text)
        if index == 0:
            for kind, altered in _negative_facts(scene, facts, rng).items():
                negative = _write(altered, spec)
                if not is_caption_true(scene, negative):  # belt and braces: never keep a truth
                    negatives[kind] = negative
    return Description(captions, negatives)


def captions_for(scene: Scene, rng: random.Random, n: int = 5) -> list[str]:
    """`n` distinct captions, each naming every object's colour and shape and, for scenes with
    two or more objects, stating the scene's relation."""
    return describe(scene, rng, n).captions


def negatives_for(scene: Scene, rng: random.Random) -> dict[str, str]:
    """Hard negatives of the scene, see `describe`."""
    return describe(scene, rng, 1).negatives
