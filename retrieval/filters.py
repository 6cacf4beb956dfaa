"""Search filters: which items a search may answer with, as one SQL query -> ids
(the query itself: DatabaseReader.image_ids_matching / text_ids_under).

The ids go to FAISS inside the search (an id selector, or an exact scan of the allowed
vectors when the set is small; see vector_index.py), never as a post-filter, so k
results come back whenever k items match.

  --under PATH    images: the file lies at or below PATH;
                  texts: a corpus file at or below PATH holds the text
  --after DATE    images taken (EXIF date) or, without EXIF, modified on or after DATE
  --before DATE   ... strictly before DATE (so --after 2024-01-01 --before 2024-02-01
                  is January); DATE is ISO, YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS], local time
  --ext jpg,png   the file's extension, case-insensitive; jpg/jpeg and tif/tiff are one

Dates and extensions describe image files; on a text search they are refused.
EXIF dates carry no zone and are compared as written (camera local time); file mtimes
are compared in this machine's local time.

Bounds (a client of `xmr serve` types these too): at most MAX_UNDER folders, no NUL
byte and at most MAX_PATH_BYTES in a path, dates from year 1 to 9999 (a date past the
range of file times matches every file time on its side). Parsing needs only the
standard library; the database parts are imported when a filter runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from xmr.retrieval.errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from xmr.retrieval.db_read import DatabaseReader

MAX_UNDER = 64
MAX_PATH_BYTES = 4096
MAX_EXT_CHARS = 256
EXT_ALIASES = {"jpg": ("jpg", "jpeg"), "jpeg": ("jpg", "jpeg"), "tif": ("tif", "tiff")}
EXT_ALIASES["tiff"] = EXT_ALIASES["tif"]


@dataclass(frozen=True)
class SearchFilter:
    under: tuple[str, ...] = ()  # absolute, resolved paths
    after: datetime | None = None  # inclusive
    before: datetime | None = None  # exclusive
    exts: tuple[str, ...] = ()  # lower case, no dot, aliases expanded

    @classmethod
    def parse(
        cls,
        under: Iterable[str | Path] | None = (),
        after: str | None = None,
        before: str | None = None,
        ext: str | None = None,
    ) -> SearchFilter:
        """From the strings a person typed (CLI options, HTTP parameters of the same
        names); raises InputError naming the bad value."""
        paths = tuple(_folder(p) for p in _bounded(under or ()))
        if ext is not None and ("\0" in ext or len(ext) > MAX_EXT_CHARS):
            raise InputError(
                f"ext is not a list of extensions (at most {MAX_EXT_CHARS} characters)"
            )
        start, end = _parse_date(after, "after"), _parse_date(before, "before")
        if start is not None and end is not None and start >= end:
            raise InputError(f"after {after} is not earlier than before {before}: nothing matches")
        exts: list[str] = []
        for part in (ext or "").split(","):
            name = part.strip().lower().lstrip(".")
            if name:
                exts.extend(EXT_ALIASES.get(name, (name,)))
        if ext is not None and not exts:
            raise InputError(f"ext '{ext}' names no extension; write e.g. jpg,png")
        return cls(paths, start, end, tuple(dict.fromkeys(exts)))

    @property
    def active(self) -> bool:
        return bool(self.under or self.after or self.before or self.exts)

    def allowed_ids(self, db: DatabaseReader, target: str) -> np.ndarray | None:
        """Sorted ids of `target` ("images" | "texts") that pass; None when no filter."""
        import numpy as np

        if not self.active:
            return None
        if target == "images":
            ids = db.image_ids_matching(self.under, self.after, self.before, self.exts)
        elif self.after or self.before or self.exts:
            raise InputError(
                "after, before and ext filter image files; "
                "a text search takes only under (the corpus files)"
            )
        else:
            ids = db.text_ids_under(self.under)
        return np.asarray(ids, dtype=np.int64)


def _bounded(under) -> list:
    under = list(under)
    if len(under) > MAX_UNDER:
        raise InputError(f"{len(under)} under folders; at most {MAX_UNDER}, please")
    return under


def _folder(path) -> str:
    text = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    if "\0" in text:
        raise InputError("under: a path cannot contain a NUL byte")
    if len(text.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise InputError(f"under: a path of at most {MAX_PATH_BYTES} bytes, please")
    try:
        return str(Path(text).expanduser().resolve())
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long
        raise InputError(f"under {text!r} is not a usable path ({exc})") from None


def _parse_date(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InputError(
            f"{option} '{text}' is not a date; write YYYY-MM-DD (or YYYY-MM-DDTHH:MM)"
        ) from None
    if moment.tzinfo is None:
        return moment
    try:
        return moment.astimezone().replace(tzinfo=None)  # the same instant, local time
    except (OverflowError, ValueError, OSError):
        raise InputError(
            f"{option} '{text}' is outside the dates this machine's clock can represent"
        ) from None
