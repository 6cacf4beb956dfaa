"""Query expressions: say more in one query, as rclip's users already write it.

    sunset over the sea + 2:boats - people      weighted sum of the terms' vectors
    ./ref.jpg + at night                        an image term plus a text term
    + at night                                  (with an uploaded image or --like ID)

The rules, in order:
  - An operator is a `+` or `-` standing alone: at the very start or after whitespace,
    and followed by whitespace or the end. Everything else is text, so "a black-and-white photo",
    "T-shirt", "C++ book", "-5 degrees" and "e-mail" stay one term each.
  - A term may start with a weight: a number, a colon, then the term right after it
    ("2:golden retriever", "0.5:snow"). The colon must be followed by something other
    than a digit, so "12:30 train" is plain text. A weight must be a positive number.
  - A term that starts with "/", "./", "../" or "~/" is an image file; so is a single
    word ending in an image extension that names an existing file ("cat.jpg").
    Everything else is text.
A query is the sum of its terms' unit vectors, each times its signed weight, made unit
length again. Bad expressions fail with the token at fault, before anything is encoded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from xmr.retrieval.errors import InputError

if TYPE_CHECKING:
    import numpy as np


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
_OPERATOR = re.compile(r"(?:^|(?<=\s))([+-])(?=\s|$)")
_WEIGHT = re.compile(r"^([0-9.][^\s:]*):(.*)$", re.DOTALL)


@dataclass(frozen=True)
class Term:
    weight: float  # signed: a `-` term's weight is negative
    kind: str  # "text" | "image" (a file path) | "like" (an indexed image's id)
    value: str  # the text, the path, or the id


def parse(expression: str, local_files: bool = True) -> list[Term]:
    """Terms of an expression (see the module docstring); raises InputError.
    `local_files=False` (a server's client): path terms are recognised by their syntax
    only, without looking at this machine's files."""
    terms = []
    matches = list(_OPERATOR.finditer(expression))
    head = expression[: matches[0].start()] if matches else expression
    if head.strip():
        terms.append(parse_term(head, 1.0, local_files))
    elif not matches:
        raise InputError("empty query; give some words, or an image")
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(expression)
        body = expression[match.end() : end]
        if not body.strip():
            raise InputError(
                f"'{match.group(1)}' at position {match.start() + 1} of the query has no term "
                "after it"
            )
        terms.append(parse_term(body, 1.0 if match.group(1) == "+" else -1.0, local_files))
    return terms


def parse_term(text: str, sign: float = 1.0, local_files: bool = True) -> Term:
    """One term, with its optional weight prefix and kind (no operators inside)."""
    text = text.strip()
    weight = 1.0
    prefix = _WEIGHT.match(text)
    if prefix and not prefix.group(2)[:1].isdigit():
        rest = prefix.group(2).strip()
        if not rest:
            raise InputError(f"weight '{prefix.group(1)}:' has no term after it")
        weight = _weight(prefix.group(1))
        text = rest
    return Term(sign * weight, _kind(text, local_files), text)


def _weight(token: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise InputError(f"weight '{token}' is not a number (write e.g. 2:beach)") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"weight '{token}' must be a positive number")
    return value


def _kind(text: str, local_files: bool) -> str:
    if text.startswith(("/", "./", "../", "~/")):
        if not local_files:
            return "image"
        path = Path(text).expanduser()
        if not path.exists():
            raise InputError(f"image term {text} does not exist")
        if not path.is_file():
            raise InputError(f"image term {text} is not a file")
        return "image"
    if " " not in text and text.lower().endswith(IMAGE_EXTENSIONS):
        if local_files and Path(text).is_file():
            return "image"
    return "text"


def combine(vectors: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """(T, D) unit vectors and T signed weights -> the (D,) unit query vector; raises
    InputError when the terms cancel out."""
    import numpy as np

    total = (np.asarray(weights, np.float32)[:, None] * vectors).sum(axis=0)  # (D,)
    norm = float(np.linalg.norm(total))
    if norm < 1e-6:
        raise InputError("the query's terms cancel each other out; change a weight or a term")
    return (total / norm).astype(np.float32)
