"""What a person asked with: `QueryInput`, shared by the CLI, the server and the engine.

Light on purpose: `xmr search` builds one before it knows whether a running server will
answer it, so this module imports nothing heavy (no NumPy, FAISS or SQLAlchemy).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xmr.retrieval.errors import InputError
from xmr.retrieval.query_language import Term, parse, parse_term


@dataclass(frozen=True)
class QueryInput:
    """What a person asked with, in any combination: a text (a query expression, see
    retrieval/query_language.py), an image file, image bytes (an upload; `path_hint` is
    the sender's own path for it, compared with indexed paths but never opened), indexed
    images' ids, and whole terms to add or subtract (`--add`, `--sub`)."""

    text: str | None = None
    image_path: Path | None = None
    image_bytes: bytes | None = None
    image_name: str = "upload"
    path_hint: str | None = None
    like: tuple[int, ...] = ()
    add: tuple[str, ...] = ()
    sub: tuple[str, ...] = ()
    paths_allowed: bool = True  # False over HTTP: a server never opens a client's path

    def terms(self) -> list[Term]:
        """The query's terms; raises InputError naming what is wrong."""
        terms: list[Term] = []
        local = self.paths_allowed
        if self.text is not None:
            terms += parse(self.text, local)
        if self.image_path is not None:
            terms.append(Term(1.0, "image", str(self.image_path)))
        if self.image_bytes is not None:
            terms.append(Term(1.0, "upload", self.image_name))
        terms += [Term(1.0, "like", str(int(i))) for i in self.like]
        terms += [parse_term(t, 1.0, local) for t in self.add]
        terms += [parse_term(t, -1.0, local) for t in self.sub]
        if not terms:
            raise InputError("give a query: a text, an image file, an uploaded image or an id")
        if not self.paths_allowed and any(t.kind == "image" for t in terms):
            raise InputError(
                "image paths are not accepted here; upload the image, or name an indexed "
                "image with like=ID"
            )
        return terms
