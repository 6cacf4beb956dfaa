"""What a person asked with: `QueryInput`, shared by the CLI, the server and the engine.

Light on purpose: `xmr search` builds one before it knows whether a running server will
answer it, so this module imports nothing heavy (no NumPy, FAISS or SQLAlchemy).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xmr.retrieval.errors import InputError, ItemNotFound
from xmr.retrieval.query_language import Term, parse, parse_term

MAX_ID = 2**63 - 1  # SQLite's largest integer: ids beyond it name nothing
# Bounds on one query's work: the encoder reads at most 77 tokens a term, so longer
# texts buy nothing, and every term is one more pass of the model thread that all
# clients of a server share.
MAX_QUERY_BYTES = 4096
MAX_TERMS = 32
MAX_PATH_BYTES = 4096


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
        self._check_bounds()
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
        if len(terms) > MAX_TERMS:
            raise InputError(f"the query has {len(terms)} terms; at most {MAX_TERMS}, please")
        if not self.paths_allowed and any(t.kind == "image" for t in terms):
            raise InputError(
                "image paths are not accepted here; upload the image, or name an indexed "
                "image with like=ID"
            )
        return terms

    def _check_bounds(self) -> None:
        """Refuse what no search needs before any parsing or model work."""
        texts = [self.text or "", *self.add, *self.sub]
        size = sum(len(t.encode("utf-8", "surrogateescape")) for t in texts)
        if size > MAX_QUERY_BYTES:
            raise InputError(
                f"the query is {size:,} bytes long; at most {MAX_QUERY_BYTES:,}, please"
            )
        if len(self.like) + len(self.add) + len(self.sub) > MAX_TERMS:
            raise InputError(f"at most {MAX_TERMS} terms in one query, please")
        for image_id in self.like:
            if not 0 <= int(image_id) <= MAX_ID:
                raise ItemNotFound(f"no indexed image has id {image_id}")
        if self.path_hint is not None and (
            "\0" in self.path_hint
            or len(self.path_hint.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES
        ):
            raise InputError("path_hint is not a usable path (a NUL byte, or too long)")
