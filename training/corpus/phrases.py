"""Short phrases, the way people type a search: "a red circle", "red circle", "circles",
"two squares", "a red circle and a blue star". Every image gets a few, each true of it,
beside its full-sentence captions.

  phrase := item { " and " item }
  item   := [ COUNT | "a" | "an" ] [ SIZE ] [ COLOUR ] NOUN
  NOUN   := SHAPE | its plural | "shape" | "shapes"        (COUNT: one, two, three)

An item without a count needs at least one matching object (a shape noun matches its
shape, "shape" any object; a plural too: "circles" is a search for circles); with a count,
exactly that many. `is_phrase_true` parses the grammar back, the tests' oracle.
"""

from __future__ import annotations

import random
import re

from xmr.retrieval.errors import InputError
from xmr.training.corpus.grammar import SIZE_WORDS
from xmr.training.corpus.scenes import COLOURS, SHAPES, Scene, SceneObject

COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
_COUNT_OF = {word: n for n, word in COUNT_WORDS.items()}
_SIZE_OF = {word: size for size, words in SIZE_WORDS.items() for word in words}


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x")) else "s")


_NOUNS = {**{s: s for s in SHAPES}, **{_plural(s): s for s in SHAPES}, "shape": "", "shapes": ""}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _matches(o: SceneObject, shape: str, colour: str | None, size: str | None) -> bool:
    return (
        (not shape or o.shape == shape)
        and (colour is None or o.colour == colour)
        and (size is None or o.size == size)
    )


def _count(scene: Scene, shape: str, colour: str | None = None) -> int:
    return sum(_matches(o, shape, colour, None) for o in scene.objects)


class _Forms:
    """The phrase forms, each writing one phrase of a scene with the rng's word choices."""

    def __init__(self, scene: Scene, rng: random.Random):
        self.scene, self.rng = scene, rng

    def thing(self) -> SceneObject:
        return self.scene.objects[self.rng.randrange(len(self.scene.objects))]

    def a_colour_shape(self) -> str:  # a red circle / a big red circle
        o = self.thing()
        sized = self.rng.random() < 0.3
        words = ([self.rng.choice(SIZE_WORDS[o.size])] if sized else []) + [o.colour, o.shape]
        return f"{_article(words[0])} {' '.join(words)}"

    def colour_shape(self) -> str:  # red circle / red circles
        o = self.thing()
        return f"{o.colour} {_plural(o.shape) if self.rng.random() < 0.3 else o.shape}"

    def shape(self) -> str:  # circles / a circle / circle
        o = self.thing()
        return self.rng.choice((_plural(o.shape), f"{_article(o.shape)} {o.shape}", o.shape))

    def count(self) -> str:  # two circles / one red square / three shapes
        o = self.thing()
        kind = self.rng.randrange(3)
        if kind == 0:
            n = _count(self.scene, o.shape)
            noun = o.shape if n == 1 else _plural(o.shape)
            return f"{COUNT_WORDS[n]} {noun}"
        if kind == 1:
            n = _count(self.scene, o.shape, o.colour)
            noun = o.shape if n == 1 else _plural(o.shape)
            return f"{COUNT_WORDS[n]} {o.colour} {noun}"
        n = len(self.scene.objects)
        return f"{COUNT_WORDS[n]} {'shape' if n == 1 else 'shapes'}"

    def two_things(self) -> str:  # a red circle and a blue star / red circle and blue star
        objects = list(self.scene.objects)
        self.rng.shuffle(objects)
        a, b = objects[:2]
        if self.rng.random() < 0.5:
            return f"{a.colour} {a.shape} and {b.colour} {b.shape}"
        first, second = f"{a.colour} {a.shape}", f"{b.colour} {b.shape}"
        return f"{_article(first)} {first} and {_article(second)} {second}"


def phrases_for(scene: Scene, rng: random.Random, n: int = 3) -> list[str]:
    """`n` distinct short phrases true of the scene (fewer when the scene allows no more),
    in varied forms: with and without an article, plural, counted, two objects."""
    forms = _Forms(scene, rng)
    kinds = [forms.a_colour_shape, forms.colour_shape, forms.shape, forms.count]
    if len(scene.objects) > 1:
        kinds.append(forms.two_things)
    rng.shuffle(kinds)
    out: list[str] = []
    for index in range(n):
        for _ in range(20):  # redraw until it differs from the phrases so far
            phrase = kinds[index % len(kinds)]()
            if phrase not in out:
                out.append(phrase)
                break
    return out


_ITEM = re.compile(
    r"(?:(one|two|three|a|an) )?(?:(" + "|".join(_SIZE_OF) + r") )?"
    r"(?:(" + "|".join(COLOURS) + r") )?(" + "|".join(sorted(_NOUNS, key=len, reverse=True)) + r")"
)


def is_phrase_true(scene: Scene, phrase: str) -> bool:
    """Whether every item of the phrase holds of the scene (see the module's grammar).
    Raises InputError for text outside it."""
    text = " ".join(phrase.lower().split()).rstrip(".")
    results = []
    for item in text.split(" and "):
        m = _ITEM.fullmatch(item)
        if m is None:
            raise InputError(f"phrase item {item!r} is not in the xmr-shapes phrase grammar")
        quantity, size_word, colour, noun = m.groups()
        size = _SIZE_OF[size_word] if size_word else None
        found = sum(_matches(o, _NOUNS[noun], colour, size) for o in scene.objects)
        wanted = _COUNT_OF.get(quantity or "")
        results.append(found == wanted if wanted else found >= 1)
    return all(results)
