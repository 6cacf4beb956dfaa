"""A deterministic, compositional image-caption corpus: coloured shapes and the words for them.

Each image shows 1 to 3 flat shapes on a plain (sometimes lightly shaded) background. Every
image gets five true captions that name the colour and shape of every object and state at
least one spatial relation, plus ARO-style hard negatives: the same wording with two colours
swapped, the relation reversed, or one shape or colour replaced. Because the caption grammar is
small and regular, `is_caption_true` can check any caption against a scene, which is how the
tests prove the captions true and the negatives false.

The corpus is written in the Karpathy JSON layout used for COCO and Flickr30k, so the same
loaders and retrieval metrics apply:

    out_dir/images/000000.png ...
    out_dir/captions.json

The same seed always gives a byte-identical `captions.json` and identical pixels.

Reading order: vocabulary, scenes, geometry, sampling, rendering, caption writing, negatives,
the caption checker, and finally `make_corpus`.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from retrieval.errors import InputError

# --- Vocabulary ------------------------------------------------------------------------------

# One word per shape keeps the grammar regular; every shape is filled at its centre, which the
# rendering test relies on.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond", "hexagon")

# Saturated, far-apart colours so that colour names are unambiguous even after downsampling.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 220, 30),
    "purple": (130, 50, 180),
    "orange": (245, 135, 20),
    "pink": (250, 140, 200),
    "cyan": (40, 210, 220),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}

# Background colours; an object never takes the background's colour name.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
    "beige": (225, 205, 160),
}

SIZES: tuple[str, ...] = ("small", "big")
# Half the side of an object's bounding box, as a fraction of the canvas: 14 px and 24 px wide
# on a 64 px image.
_RADIUS_FRACTION = {"small": 7 / 64, "big": 12 / 64}

# A background is flat or carries a faint linear ramp of +-_SHADING_AMPLITUDE per channel, so
# that "background colour" is never a single exact RGB value a model could key on.
SHADINGS: tuple[str, ...] = ("flat", "flat", "vertical", "horizontal")
SHADING_AMPLITUDE = 8

# Canonical relation directions stored in a Scene; captions also use their opposites.
DIRECTIONS: tuple[str, ...] = ("left", "right", "above", "below")
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}

# A relation holds when the centres are this far apart (fraction of the canvas) along its axis
# and the offset across the axis is smaller than the offset along it.
RELATION_MARGIN = 0.15
# Relations a caption states outright are placed (or chosen) to be clearer still: the offset
# across the axis is at most this fraction of the offset along it.
_CLEAR_RATIO = 0.5
_GAP = 2 / 64  # empty space between two objects' bounding boxes
_PAD = 2 / 64  # empty space between an object and the image border

# Mostly 2-3 objects: the scene space is then large enough for unique descriptions.
_OBJECT_COUNT_WEIGHTS = {1: 0.08, 2: 0.46, 3: 0.46}

# --- Scenes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneObject:
    """One filled shape; (x, y) is the pixel its centre lies in, on the scene's canvas."""

    shape: str
    colour: str
    size: str
    x: int
    y: int

    @property
    def name(self) -> str:
        """`big red circle`: the words that identify this object within its scene."""
        return f"{self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """What an image shows. `relation` = (i, "left" | "above", j): objects[i] is left of / above
    objects[j]; every multi-object scene has one, and all its captions state it."""

    background: str
    objects: tuple[SceneObject, ...]
    relation: tuple[int, str, int] | None
    shading: str = "flat"
    canvas: int = 64

    def to_json(self) -> dict:
        return {
            "canvas": self.canvas,
            "background": self.background,
            "shading": self.shading,
            "objects": [
                {"shape": o.shape, "colour": o.colour, "size": o.size, "x": o.x, "y": o.y}
                for o in self.objects
            ],
            "relation": list(self.relation) if self.relation else None,
        }

    @classmethod
    def from_json(cls, data: dict) -> Scene:
        relation = data["relation"]
        return cls(
            background=data["background"],
            objects=tuple(SceneObject(**o) for o in data["objects"]),
            relation=(int(relation[0]), str(relation[1]), int(relation[2])) if relation else None,
            shading=data.get("shading", "flat"),
            canvas=int(data.get("canvas", 64)),
        )


def canonical_description(scene: Scene) -> str:
    """Everything a caption can say about a scene, in one fixed order (positions excluded).

    `make_corpus` keeps these unique, so no two images answer to the same full description.
    """
    names = sorted(o.name for o in scene.objects)
    text = f"{scene.background} background; " + ", ".join(names)
    if scene.relation is not None:
        i, direction, j = scene.relation
        phrase = {"left": "left of", "right": "right of"}.get(direction, direction)
        text += f"; {scene.objects[i].name} {phrase} {scene.objects[j].name}"
    return text


# --- Geometry --------------------------------------------------------------------------------


def radius(size: str, canvas: int) -> float:
    """Half the bounding-box side of an object of `size` on a `canvas`-pixel image."""
    return _RADIUS_FRACTION[size] * canvas


def relation_holds(
    a: SceneObject, direction: str, b: SceneObject, canvas: int, ratio: float = 1.0
) -> bool:
    """Whether `a` is `direction` of `b` ("left": a is left of b; y grows downwards).

    The centres must be RELATION_MARGIN * canvas apart along the axis, and the offset across
    the axis must be below `ratio` times the offset along it.
    """
    dx, dy = b.x - a.x, b.y - a.y  # positive when b is right of / below a
    along, across = {
        "left": (dx, dy),
        "right": (-dx, dy),
        "above": (dy, dx),
        "below": (-dy, dx),
    }[direction]
    return along >= RELATION_MARGIN * canvas and abs(across) < ratio * along


def _boxes_apart(a: SceneObject, b: SceneObject, canvas: int) -> bool:
    """Whether the two bounding boxes are disjoint with a gap of _GAP between them."""
    reach = radius(a.size, canvas) + radius(b.size, canvas) + _GAP * canvas
    return abs(a.x - b.x) >= reach or abs(a.y - b.y) >= reach


def _centre_range(size: str, canvas: int) -> tuple[int, int]:
    """Inclusive range of centre pixels that keeps the object _PAD inside the border."""
    r = radius(size, canvas)
    # The centre of pixel x is at x + 0.5.
    return math.ceil(r + _PAD * canvas - 0.5), math.floor(canvas - r - _PAD * canvas - 0.5)


# --- Sampling --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Look:
    """An object before placement."""

    shape: str
    colour: str
    size: str


def _sample_looks(rng: random.Random, background: str) -> list[_Look]:
    """1-3 objects, never in the background colour, no two with the same colour and shape
    (so "the red circle" always names exactly one object)."""
    counts, weights = list(_OBJECT_COUNT_WEIGHTS), list(_OBJECT_COUNT_WEIGHTS.values())
    count = rng.choices(counts, weights=weights)[0]
    colours = [c for c in COLOURS if c != background]
    looks: list[_Look] = []
    while len(looks) < count:
        look = _Look(rng.choice(SHAPES), rng.choice(colours), rng.choice(SIZES))
        if all((look.shape, look.colour) != (o.shape, o.colour) for o in looks):
            looks.append(look)
    return looks


def _place_pair(
    rng: random.Random, a: _Look, b: _Look, direction: str, canvas: int
) -> tuple[SceneObject, SceneObject] | None:
    """Place `a` clearly `direction` ("left" or "above") of `b`, without overlap."""
    lo_a, hi_a = _centre_range(a.size, canvas)
    lo_b, hi_b = _centre_range(b.size, canvas)
    reach = radius(a.size, canvas) + radius(b.size, canvas) + _GAP * canvas
    d_min = math.ceil(max(reach, RELATION_MARGIN * canvas))
    d_max = hi_b - lo_a
    if d_min > d_max:
        return None
    along = rng.randint(d_min, d_max)  # distance of the centres along the relation's axis
    start_lo, start_hi = max(lo_a, lo_b - along), min(hi_a, hi_b - along)
    if start_lo > start_hi:
        return None
    a_along = rng.randint(start_lo, start_hi)
    # Keep the cross-axis offset well under the along-axis one, so the relation is plain to see.
    limit = math.floor(_CLEAR_RATIO * along)
    a_across = rng.randint(lo_a, hi_a)
    b_lo, b_hi = max(lo_b, a_across - limit), min(hi_b, a_across + limit)
    if b_lo > b_hi:
        return None
    b_across = rng.randint(b_lo, b_hi)
    if direction == "left":
        pa, pb = (a_along, a_across), (a_along + along, b_across)
    else:
        pa, pb = (a_across, a_along), (b_across, a_along + along)
    return (
        SceneObject(a.shape, a.colour, a.size, *pa),
        SceneObject(b.shape, b.colour, b.size, *pb),
    )


def _place_free(
    rng: random.Random, look: _Look, others: list[SceneObject], canvas: int, tries: int = 50
) -> SceneObject | None:
    """Place `look` anywhere it overlaps none of `others` (rejection sampling)."""
    lo, hi = _centre_range(look.size, canvas)
    for _ in range(tries):
        obj = SceneObject(
            look.shape, look.colour, look.size, rng.randint(lo, hi), rng.randint(lo, hi)
        )
        if all(_boxes_apart(obj, o, canvas) for o in others):
            return obj
    return None


def sample_scene(rng: random.Random, canvas: int = 64) -> Scene:
    """One random scene; multi-object scenes relate objects[0] and objects[1]."""
    while True:  # placement rarely fails; a fresh draw always succeeds soon
        background = rng.choice(list(BACKGROUNDS))
        shading = rng.choice(SHADINGS)
        looks = _sample_looks(rng, background)
        if len(looks) == 1:
            obj = _place_free(rng, looks[0], [], canvas)  # nothing to collide with: never None
            assert obj is not None
            return Scene(background, (obj,), None, shading, canvas)
        direction = rng.choice(("left", "above"))
        pair = _place_pair(rng, looks[0], looks[1], direction, canvas)
        if pair is None:
            continue
        objects = list(pair)
        if len(looks) == 3:
            third = _place_free(rng, looks[2], objects, canvas)
            if third is None:
                continue
            objects.append(third)
        return Scene(background, tuple(objects), (0, direction, 1), shading, canvas)


def sample_scenes(n: int, seed: int, canvas: int = 64) -> list[Scene]:
    """`n` scenes with pairwise distinct canonical descriptions, reproducible from `seed`."""
    rng = random.Random(seed)
    seen: set[str] = set()
    scenes: list[Scene] = []
    misses = 0
    while len(scenes) < n:
        scene = sample_scene(rng, canvas)
        key = canonical_description(scene)
        if key in seen:
            # The space holds millions of descriptions; only absurd sizes can exhaust it.
            misses += 1
            if misses > 100 * n + 10_000:
                raise InputError(f"cannot draw {n} distinct scenes; ask for fewer images")
            continue
        seen.add(key)
        scenes.append(scene)
    return scenes


# --- Rendering -------------------------------------------------------------------------------

_SUPERSAMPLE = 4  # draw 4x larger and box-downsample: smooth edges, exact flat interiors


def _background(scene: Scene, side: int) -> Image.Image:
    rgb = np.array(BACKGROUNDS[scene.background], dtype=np.int16)
    if scene.shading == "flat":
        return Image.new("RGB", (side, side), tuple(int(c) for c in rgb))
    ramp = np.linspace(-SHADING_AMPLITUDE, SHADING_AMPLITUDE, side).round().astype(np.int16)
    ramp = ramp[:, None] if scene.shading == "vertical" else ramp[None, :]
    pixels = np.clip(rgb[None, None, :] + ramp[:, :, None], 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(np.broadcast_to(pixels, (side, side, 3))), "RGB")


def _polygon(cx: float, cy: float, r: float, corners: int, start_deg: float) -> list[tuple]:
    step = 360 / corners
    return [
        (cx + r * math.cos(math.radians(start_deg + k * step)),
         cy + r * math.sin(math.radians(start_deg + k * step)))
        for k in range(corners)
    ]  # fmt: skip


def _star(cx: float, cy: float, r: float) -> list[tuple]:
    outer = _polygon(cx, cy, r, 5, -90)
    inner = _polygon(cx, cy, 0.45 * r, 5, -90 + 36)
    return [p for pair in zip(outer, inner, strict=True) for p in pair]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill):
    """Draw `shape` filled, centred on (cx, cy), inside the box of half-side `r`."""
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        h = 0.88 * r  # a full-box square looks much bigger than a circle of the same box
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif shape == "star":
        draw.polygon(_star(cx, cy, r), fill=fill)
    elif shape == "cross":
        w = 0.34 * r
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
    elif shape == "diamond":
        draw.polygon(
            [(cx, cy - r), (cx + 0.8 * r, cy), (cx, cy + r), (cx - 0.8 * r, cy)], fill=fill
        )
    elif shape == "hexagon":
        draw.polygon(_polygon(cx, cy, r, 6, 0), fill=fill)
    else:
        raise InputError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")


def render_scene(scene: Scene, size: int = 64) -> Image.Image:
    """The scene as a `size` x `size` RGB image (positions scale from the scene's canvas)."""
    side = size * _SUPERSAMPLE
    scale = side / scene.canvas
    image = _background(scene, side)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        cx, cy = (obj.x + 0.5) * scale, (obj.y + 0.5) * scale
        _draw_shape(
            draw, obj.shape, cx, cy, radius(obj.size, scene.canvas) * scale, COLOURS[obj.colour]
        )
    return image.reduce(_SUPERSAMPLE)


# --- Caption writing -------------------------------------------------------------------------
#
# The grammar, which `is_caption_true` parses back (case and a final "." are ignored):
#
#   caption  := [ "on a BG background, " ] [ "an image of " | "a picture of " ] body
#               [ " on a BG background" ]
#   body     := clause { ("; " | ", and " | ". ") clause }
#   clause   := [ "there is " [ "also " ] ] np { (", " | " and ") np }    -- these exist
#             | np [ " is" ] " " REL " " np                                -- np REL np
#             | np " with " np " " REL_IT                                  -- 2nd np REL 1st
#             | np " is " ABS                                              -- np REL all others
#   np       := ("a" | "an" | "the") [ SIZE ] [ COLOUR ] SHAPE
#
# "a ..." needs at least one matching object and "the ..." exactly one.

REL_WORDS = {
    "left": ("left of", "to the left of", "on the left of"),
    "right": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
REL_IT_WORDS = {
    "left": ("to its left", "on its left"),
    "right": ("to its right", "on its right"),
    "above": ("above it",),
    "below": ("below it", "under it"),
}
ABS_WORDS = {
    "left": ("on the left",),
    "right": ("on the right",),
    "above": ("at the top", "on top"),
    "below": ("at the bottom",),
}
SIZE_WORDS = {"small": ("small", "little"), "big": ("big", "large")}


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
            if relation_holds(third, d, scene.objects[m], scene.canvas, _CLEAR_RATIO)
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


# --- Negatives -------------------------------------------------------------------------------


def _with_thing(facts: _Facts, k: int, **changes) -> _Facts:
    things = list(facts.things)
    things[k] = replace(things[k], **changes)
    return replace(facts, things=tuple(things))


def _negative_facts(scene: Scene, facts: _Facts, rng: random.Random) -> dict[str, _Facts]:
    """Altered facts, each false of the scene: swapped colours of the related pair, reversed
    relation (scenes with 2-3 objects), one shape or one colour replaced by one the scene lacks.
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
    out["shape_change"] = _with_thing(facts, k_shape, shape=new_shape)
    out["colour_change"] = _with_thing(facts, k_colour, colour=new_colour)
    return out


# --- Captions and negatives of a scene -------------------------------------------------------


@dataclass(frozen=True)
class Description:
    """Captions of a scene, and hard negatives that are minimal edits of `captions[0]`."""

    captions: list[str]
    negatives: dict[str, str]


def describe(scene: Scene, rng: random.Random, n: int = 5) -> Description:
    """`n` distinct true captions (as varied in template as the scene allows) and negatives.

    Negatives: "attribute_swap" (colours of the related pair exchanged; only when they differ
    in colour and in shape), "relation_swap" (relation reversed), "shape_change" and
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


# --- Checking a caption against a scene ------------------------------------------------------


def _alternation(words) -> str:
    # Longest first, so "to the left of" is not read as a shorter phrase.
    return "(?:" + "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True)) + ")"


_SIZE_OF = {word: size for size, words in SIZE_WORDS.items() for word in words}
_DIRECTION_OF = {
    table_name: {phrase: d for d, phrases in table.items() for phrase in phrases}
    for table_name, table in (("rel", REL_WORDS), ("rel_it", REL_IT_WORDS), ("abs", ABS_WORDS))
}
_NP = (
    rf"(?:a|an|the)(?: {_alternation(_SIZE_OF)})?(?: {_alternation(COLOURS)})?"
    rf" {_alternation(SHAPES)}"
)
_NP_PARTS = re.compile(
    rf"(a|an|the)(?: ({_alternation(_SIZE_OF)}))?(?: ({_alternation(COLOURS)}))?"
    rf" ({_alternation(SHAPES)})"
)
_BG = _alternation(BACKGROUNDS)
_PREFIX = re.compile(rf"on an? ({_BG}) background, ")
_SUFFIX = re.compile(rf" on an? ({_BG}) background$")
_LEAD = re.compile(r"(?:an image|a picture) of ")
_SEPARATOR = re.compile(r"; |, and |\. ")
_LIST_SEPARATOR = re.compile(r", | and ")
_CLAUSES = {
    "rel": re.compile(rf"({_NP})(?: is)? ({_alternation(_DIRECTION_OF['rel'])}) ({_NP})"),
    "rel_it": re.compile(rf"({_NP}) with ({_NP}) ({_alternation(_DIRECTION_OF['rel_it'])})"),
    "abs": re.compile(rf"({_NP}) is ({_alternation(_DIRECTION_OF['abs'])})"),
    "exist": re.compile(rf"(?:there (?:is|are) (?:also )?)?({_NP}(?:(?:, | and ){_NP})*)"),
}


def _referents(scene: Scene, np_text: str) -> list[SceneObject] | None:
    """Objects a noun phrase can mean; None when "the ..." does not pick out exactly one."""
    match = _NP_PARTS.fullmatch(np_text)
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
    if m := _CLAUSES["rel"].fullmatch(clause):
        return _related(scene, m[1], _DIRECTION_OF["rel"][m[2]], m[3])
    if m := _CLAUSES["rel_it"].fullmatch(clause):
        return _related(scene, m[2], _DIRECTION_OF["rel_it"][m[3]], m[1])
    if m := _CLAUSES["abs"].fullmatch(clause):
        direction = _DIRECTION_OF["abs"][m[2]]
        return any(_outermost(scene, x, direction) for x in _referents(scene, m[1]) or [])
    if m := _CLAUSES["exist"].fullmatch(clause):
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


# --- Writing a corpus ------------------------------------------------------------------------

DATASET_NAME = "xmr-shapes"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CorpusInfo:
    """What `make_corpus` wrote."""

    out_dir: Path
    captions_path: Path
    images_dir: Path
    seed: int
    n_images: int
    n_train: int
    n_val: int
    n_test: int


def split_counts(n_images: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """(train, val, test) sizes; val and test are rounded, train takes the rest."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise InputError(
            f"split_fractions={fractions}: give three non-negative numbers summing to 1"
        )
    n_val, n_test = round(n_images * fractions[1]), round(n_images * fractions[2])
    return n_images - n_val - n_test, n_val, n_test


def _split_of(index: int, counts: tuple[int, int, int]) -> str:
    # Contiguous blocks: train first, then val, then the last images are the test split.
    if index < counts[0]:
        return "train"
    return "val" if index < counts[0] + counts[1] else "test"


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _image_record(
    index: int, filename: str, split: str, scene: Scene, description: Description
) -> dict:
    first_sentid = index * len(description.captions)
    sentences = [
        {"raw": raw, "tokens": _tokens(raw), "imgid": index, "sentid": first_sentid + j}
        for j, raw in enumerate(description.captions)
    ]
    return {
        "filename": filename,
        "filepath": "images",
        "imgid": index,
        "split": split,
        "sentences": sentences,
        "sentids": [s["sentid"] for s in sentences],
        "scene": scene.to_json(),
        "negatives": description.negatives,
        "negatives_of": first_sentid,  # the sentid the negatives are minimal edits of
    }


def _save_png(job: tuple[dict, str, int]) -> None:
    """Render and write one image (module-level so a process pool can run it)."""
    scene_json, path, size = job
    # optimize=False: PNG optimisation costs far more time than the bytes it saves here.
    render_scene(Scene.from_json(scene_json), size).save(path, optimize=False, compress_level=6)


def _image_jobs(scenes: list[Scene], paths: list[Path], size: int) -> Iterator[tuple]:
    return ((s.to_json(), str(p), size) for s, p in zip(scenes, paths, strict=True))


def make_corpus(
    out_dir: Path,
    n_images: int,
    seed: int,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    image_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
    overwrite: bool = False,
) -> CorpusInfo:
    """Write `n_images` images and their Karpathy-format `captions.json` under `out_dir`.

    Scenes are drawn one after another from `random.Random(seed)` with unique canonical
    descriptions; captions and negatives of image i come from their own RNG seeded by
    (seed, i); pixels depend on the scene only. So the output is the same for any `workers`
    (processes that render PNGs). `progress(n_done, n_total)` is called as images are written.
    `captions.json` is written last, so its presence marks a complete corpus; an existing one
    is an error unless `overwrite` (which removes it first, then rewrites every image it lists;
    older images beyond `n_images` stay on disk, unlisted).
    """
    if n_images < 1:
        raise InputError(f"n_images={n_images}: ask for at least one image")
    if image_size < 16:
        raise InputError(f"image_size={image_size}: use at least 16 pixels")
    counts = split_counts(n_images, split_fractions)
    out_dir = Path(out_dir)
    captions_path = out_dir / "captions.json"
    if captions_path.exists():
        if not overwrite:
            raise InputError(f"{captions_path} already exists; pick another directory or overwrite")
        captions_path.unlink()  # an interrupted rewrite must not look complete
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)

    scenes = sample_scenes(n_images, seed, canvas=image_size)
    width = max(6, len(str(n_images - 1)))
    filenames = [f"{i:0{width}d}.png" for i in range(n_images)]
    records = [
        _image_record(
            i,
            filenames[i],
            _split_of(i, counts),
            scene,
            describe(scene, random.Random(f"{DATASET_NAME}/{seed}/{i}")),
        )
        for i, scene in enumerate(scenes)
    ]
    _write_images(scenes, [images_dir / f for f in filenames], image_size, workers, progress)

    corpus = {
        "dataset": DATASET_NAME,
        "version": FORMAT_VERSION,
        "seed": seed,
        "image_size": image_size,
        "images": records,
    }
    partial = captions_path.with_suffix(".json.partial")
    partial.write_text(json.dumps(corpus, separators=(",", ":")) + "\n", encoding="utf-8")
    os.replace(partial, captions_path)
    return CorpusInfo(out_dir, captions_path, images_dir, seed, n_images, *counts)


def _write_images(
    scenes: list[Scene],
    paths: list[Path],
    size: int,
    workers: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    jobs = _image_jobs(scenes, paths, size)
    if workers > 1:
        # spawn, not fork: the caller may hold threads (torch, BLAS) that fork would break.
        # A pool that cannot start (say, a main module read from stdin) raises BrokenProcessPool.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            _report(pool.map(_save_png, jobs, chunksize=64), len(scenes), progress)
    else:
        _report(map(_save_png, jobs), len(scenes), progress)


def _report(done_jobs: Iterator, total: int, progress: Callable[[int, int], None] | None) -> None:
    """Drain `done_jobs`, calling `progress` about a hundred times and at the end."""
    every = max(1, total // 100)
    for done, _ in enumerate(done_jobs, start=1):
        if progress and (done % every == 0 or done == total):
            progress(done, total)
