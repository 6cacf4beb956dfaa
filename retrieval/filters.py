"""Search filters: which items a search may answer with, as one SQL query -> ids.

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
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from sqlalchemy import and_, exists, func, or_, select

from xmr.retrieval.db import Database, ImageRow, TextRow
from xmr.retrieval.errors import InputError

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
        paths = tuple(str(Path(p).expanduser().resolve()) for p in (under or ()))
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

    def allowed_ids(self, db: Database, target: str) -> np.ndarray | None:
        """Sorted ids of `target` ("images" | "texts") that pass; None when no filter."""
        if not self.active:
            return None
        query = self._image_query() if target == "images" else self._text_query()
        with db.session() as session:
            return np.fromiter(session.scalars(query), dtype=np.int64)

    def _image_query(self):
        conditions = [ImageRow.state == "indexed"]
        if self.under:
            conditions.append(or_(*(_at_or_below(ImageRow.path, p) for p in self.under)))
        if self.after is not None:
            conditions.append(_when(ImageRow, ">=", self.after))
        if self.before is not None:
            conditions.append(_when(ImageRow, "<", self.before))
        if self.exts:
            lower = func.lower(ImageRow.path)
            conditions.append(or_(*(lower.endswith("." + e, autoescape=True) for e in self.exts)))
        return select(ImageRow.id).where(and_(*conditions)).order_by(ImageRow.id)

    def _text_query(self):
        if self.after or self.before or self.exts:
            raise InputError(
                "after, before and ext filter image files; "
                "a text search takes only under (the corpus files)"
            )
        from xmr.retrieval.db import TextSource

        held = exists().where(
            TextSource.text_id == TextRow.id,
            or_(*(_at_or_below(TextSource.source, p) for p in self.under)),
        )
        own = or_(*(_at_or_below(TextRow.source, p) for p in self.under))
        return select(TextRow.id).where(or_(own, held)).order_by(TextRow.id)


def _at_or_below(column, path: str):
    return or_(column == path, column.startswith(path.rstrip(os.sep) + os.sep, autoescape=True))


def _when(table, op: str, moment: datetime):
    """EXIF date if the image has one, else its mtime, compared with `moment`."""
    ns = int(moment.timestamp() * 1_000_000_000)  # naive -> local time, like mtimes shown
    if op == ">=":
        return or_(
            and_(table.taken_at.is_not(None), table.taken_at >= moment),
            and_(table.taken_at.is_(None), table.mtime_ns >= ns),
        )
    return or_(
        and_(table.taken_at.is_not(None), table.taken_at < moment),
        and_(table.taken_at.is_(None), table.mtime_ns < ns),
    )


def _parse_date(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InputError(
            f"{option} '{text}' is not a date; write YYYY-MM-DD (or YYYY-MM-DDTHH:MM)"
        ) from None
    return moment.replace(tzinfo=None) if moment.tzinfo is None else _local_naive(moment)


def _local_naive(moment: datetime) -> datetime:
    """An aware datetime -> the same instant as naive local time."""
    return moment.astimezone().replace(tzinfo=None)
