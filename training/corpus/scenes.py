"""What a generated image shows: the vocabulary, a scene's objects and one spatial relation,
and the geometry that decides whether a relation holds."""

from __future__ import annotations

from dataclasses import dataclass

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

# A background is flat or carries a faint linear ramp of +-SHADING_AMPLITUDE per channel, so
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
CLEAR_RATIO = 0.5


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
