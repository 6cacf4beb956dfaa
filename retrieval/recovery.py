"""Repairs a writer makes when it opens an index, in the order of what can be re-derived:
a damaged or missing database is moved aside (never deleted) and the index rebuilt from
its folders, taking the files derived from the old one with it; and the one-line
translation of a disk or database failure into an XmrError.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from xmr.retrieval.db_file import DB_FILE, database_error
from xmr.retrieval.errors import DatabaseDamaged, XmrError
from xmr.retrieval.storage import disk_error, move_aside

if TYPE_CHECKING:
    from xmr.retrieval.db import Database

# Files derived from the database (or re-encodable): dropped when the database is rebuilt.
DERIVED_SUFFIXES = (".vec", ".tok", ".rrf", ".mvf", ".mvk", ".faiss", ".faiss.json")


def open_or_rebuild_database(directory: Path, verify: str, notices: list[str]) -> Database:
    """The writer's database; a damaged one is moved aside (never deleted) and replaced by
    an empty one, and so is a missing or emptied one of an existing index: the caller
    re-indexes. The files derived from the old one go with it (their ids meant its rows)."""
    from xmr.retrieval.db import Database

    try:
        db = Database(directory, verify=verify)
    except DatabaseDamaged as exc:
        path = directory / DB_FILE
        moved = move_aside(path)
        for suffix in ("-wal", "-shm"):  # the WAL belongs to the file it was moved with
            side = directory / (DB_FILE + suffix)
            if side.exists():
                os.replace(side, moved.with_name(moved.name + suffix))
        notices.append(
            f"{path} was damaged ({_reason(exc)}); moved it to {moved.name} and rebuilding "
            "the index from the image files (texts: run `xmr add-texts` again)"
        )
        db = Database(directory)
        remove_derived(directory)
        return db
    if db.created:
        notices.append(
            f"{db.path} was missing or empty; rebuilding the index from the image files "
            "(texts: run `xmr add-texts` again)"
        )
        remove_derived(directory)
    return db


def _reason(exc: Exception) -> str:
    text = str(exc)
    return text[text.find("(") + 1 : text.find(")")] if "(" in text else text


def remove_derived(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file() and path.name.endswith(DERIVED_SUFFIXES):
            path.unlink()


def translated_error(exc: BaseException, directory: Path) -> BaseException:
    """The one-line XmrError for a disk or database failure, else `exc` itself."""
    if isinstance(exc, XmrError):
        return exc
    error = database_error(exc, directory / DB_FILE)
    if error is None and isinstance(exc, OSError):
        error = disk_error(exc, exc.filename or directory)
    return exc if error is None else error


def raise_translated(exc: BaseException, directory: Path) -> NoReturn:
    translated = translated_error(exc, directory)
    if translated is exc:
        raise exc
    raise translated from exc
