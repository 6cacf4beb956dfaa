"""Random scenes: 1-3 objects placed without overlap, the first two in a clear relation,
every scene's canonical description unique within a corpus."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from xmr.retrieval.errors import InputError
from xmr.training.corpus.scenes import (
    BACKGROUNDS,
    CLEAR_RATIO,
    COLOURS,
    RELATION_MARGIN,
    SHADINGS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    canonical_description,
    radius,
)

_GAP = 2 / 64  # empty space between two objects' bounding boxes
_PAD = 2 / 64  # empty space between an object and the image border

# Mostly 2-3 objects: the scene space is then large enough for unique descriptions.
_OBJECT_COUNT_WEIGHTS = {1: 0.08, 2: 0.46, 3: 0.46}


def _boxes_apart(a: SceneObject, b: SceneObject, canvas: int) -> bool:
    """Whether the two bounding boxes are disjoint with a gap of _GAP between them."""
    reach = radius(a.size, canvas) + radius(b.size, canvas) + _GAP * canvas
    return abs(a.x - b.x) >= reach or abs(a.y - b.y) >= reach


def _centre_range(size: str, canvas: int) -> tuple[int, int]:
    """Inclusive range of centre pixels that keeps the object _PAD inside the border."""
    r = radius(size, canvas)
    # The centre of pixel x is at x + 0.5.
    return math.ceil(r + _PAD * canvas - 0.5), math.floor(canvas - r - _PAD * canvas - 0.5)


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
    limit = math.floor(CLEAR_RATIO * along)
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
