"""One search request: what `xmr search`, both HTTP search routes and `Engine.search` take.

The fields are declared once, here, with their bounds; a value out of bounds raises
`BadField` (an InputError naming the field) before anything is loaded or encoded. The
HTTP routes build a request from the strings a client sent (`from_fields`), the CLI
sends one to a running server as those strings (`as_fields`), so all three read the
same fields the same way.

Light on purpose, like query_input.py: the CLI builds one before it knows whether a
server will answer (filters.py imports its database parts only when a search runs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from xmr.engine.query_input import MAX_ID, QueryInput
from xmr.retrieval.errors import InputError
from xmr.retrieval.filters import SearchFilter

TARGETS = ("images", "texts")
ORDERS = ("relevance", "newest", "oldest")  # newest/oldest: by the file's date (see Engine)
MAX_K = 10_000  # results or stage-1 candidates of one request (offset + k included)
# The defaults every face reads from here (the page through /api/config):
PAGE_K = 40  # results a page of the web page asks for at a time
DUPLICATE_THRESHOLD = 0.95  # cosine at which two images are taken for one picture
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class BadField(InputError):
    """A request field of the wrong type or out of its bounds (HTTP 422)."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.field = name


@dataclass(frozen=True, kw_only=True)
class SearchRequest:
    """A query (see QueryInput) and how to answer it. `under`/`after`/`before`/`ext` are
    the strings a person typed (filters.py); `where` is what they mean."""

    query: QueryInput
    target: str = "images"
    k: int = 10
    candidates: int | None = None
    rerank: bool = True
    under: tuple[str, ...] = ()
    after: str | None = None
    before: str | None = None
    ext: str | None = None
    min_score: float | None = None  # shown score (0..1, calibrated) below which results go
    dedup: float | None = None  # fold results at least this similar into one
    offset: int = 0  # skip this many of the ranking: results offset+1 .. offset+k
    order: str = "relevance"  # or newest / oldest among the results kept (Engine.search)
    where: SearchFilter = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if isinstance(self.query, str):
            object.__setattr__(self, "query", QueryInput(text=self.query))
        object.__setattr__(self, "under", tuple(str(p) for p in self.under))
        self.query.terms()  # the expression and its bounds (query_input.py)
        if self.target not in TARGETS:
            raise InputError(f"unknown target '{self.target}'; use images or texts")
        _int_in("k", self.k, 1, MAX_K)
        _int_in("offset", self.offset, 0, MAX_K - self.k)  # offset + k within MAX_K
        if self.order not in ORDERS:
            raise BadField("order", f"'{self.order}' is not one of {', '.join(ORDERS)}")
        if self.order != "relevance" and self.target != "images":
            raise BadField("order", f"texts have no date: order {self.order} is for images")
        if self.candidates is not None:
            _int_in("candidates", self.candidates, 1, MAX_K)
        if self.min_score is not None:
            _float_in("min_score", self.min_score, 0.0, 1.0)
        if self.dedup is not None:
            _float_in("dedup", self.dedup, 0.0, 1.0)
        where = SearchFilter.parse(self.under, self.after, self.before, self.ext)
        object.__setattr__(self, "where", where)

    # -- the strings of an HTTP request ----------------------------------------------------
    @classmethod
    def from_fields(cls, get: Callable[[str], list[str]], **query: Any) -> SearchRequest:
        """From a client's fields: `get(name)` -> every value sent under that name (query
        string or form). `query` holds what a route adds to the QueryInput (an upload)."""
        like = tuple(_int("like", v) for v in get("like"))
        asked = QueryInput(
            _one(get, "q"), like=like, add=tuple(get("add")), sub=tuple(get("sub")), **query
        )
        options: dict[str, Any] = {}
        for name, parse in _PARSERS.items():
            value = _one(get, name)
            if value is not None and value != "":
                options[name] = parse(name, value)
        return cls(query=asked, under=tuple(get("under")), **options)

    def as_fields(self) -> dict:
        """The fields `from_fields` reads back into this request (its query's text and
        ids, not a local image file: that travels as an upload)."""
        out = {
            "q": self.query.text,
            "like": list(self.query.like),
            "add": list(self.query.add),
            "sub": list(self.query.sub),
            "under": list(self.under),
        }
        for item in fields(self):
            if item.name in _PARSERS:
                value = getattr(self, item.name)
                out[item.name] = str(value).lower() if isinstance(value, bool) else value
        return {k: v for k, v in out.items() if v is not None}


def _one(get, name: str) -> str | None:
    values = get(name)
    if len(values) > 1:
        raise BadField(name, "give it once")
    return values[0] if values else None


def _int(name: str, text) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise BadField(name, f"'{text}' is not a whole number") from None
    return _int_in(name, value, -MAX_ID - 1, MAX_ID)


def _int_in(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadField(name, f"'{value}' is not a whole number")
    if not low <= value <= high:
        raise BadField(name, f"{value} is out of range ({low} to {high})")
    return value


def _float(name: str, text) -> float:
    try:
        return float(str(text).strip())
    except ValueError:
        raise BadField(name, f"'{text}' is not a number") from None


def _float_in(name: str, value, low: float, high: float) -> float:
    if not isinstance(value, int | float) or not math.isfinite(value) or not low <= value <= high:
        raise BadField(name, f"{value} must be a number from {low} to {high}")
    return value


def _bool(name: str, text) -> bool:
    word = str(text).strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise BadField(name, f"'{text}' is not true or false")


def _text(_name: str, text) -> str:
    return str(text)


# What each field a client sends means (the API's documentation shows this).
FIELD_DOCS = {
    "q": ("string", "a query expression: 'beach + 2:sunset - people'"),
    "like": ("integer", "an indexed image's id (repeatable)"),
    "add": ("string", "a term added whole (repeatable)"),
    "sub": ("string", "a term subtracted whole (repeatable)"),
    "target": ("string", "images (default) or texts"),
    "k": ("integer", f"how many results, 1 to {MAX_K} (default 10)"),
    "candidates": ("integer", f"stage-1 depth re-ranked, 1 to {MAX_K}"),
    "rerank": ("boolean", "false: stage 1 only"),
    "under": ("string", "only files at or below this folder (repeatable)"),
    "after": ("string", "only images taken or modified on or after YYYY-MM-DD"),
    "before": ("string", "only images taken or modified before YYYY-MM-DD"),
    "ext": ("string", "only these extensions, e.g. jpg,png"),
    "min_score": ("number", "leave out results whose score is below this (0 to 1)"),
    "dedup": ("number", "fold results at least this similar into one (0 to 1)"),
    "offset": ("integer", "skip this many results: a page of the same ranking (default 0)"),
    "order": (
        "string",
        "relevance (default), newest or oldest: images by date (EXIF, else modified) "
        "among the most relevant (see the answer's page.pool)",
    ),
}

_PARSERS = {
    "target": _text,
    "k": _int,
    "candidates": _int,
    "rerank": _bool,
    "after": _text,
    "before": _text,
    "ext": _text,
    "min_score": _float,
    "dedup": _float,
    "offset": _int,
    "order": _text,
}
