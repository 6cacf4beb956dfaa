"""xmr: cross-modal retrieval over image folders and text corpora.

The public Python API is the engine (see docs/python.md):

    from xmr import Engine

    with Engine("my-index") as engine:
        engine.index(["photos"])
        hits = engine.search(query="a dog on a beach", k=5).hits

Importing `xmr` is cheap: `Engine` and the error types load on first use, so the CLI's
`--help` never pays for PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Engine", "XmrError"]

if TYPE_CHECKING:
    from xmr.engine.engine import Engine
    from xmr.retrieval.errors import XmrError


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from xmr.engine.engine import Engine

        return Engine
    if name == "XmrError":
        from xmr.retrieval.errors import XmrError

        return XmrError
    raise AttributeError(f"module 'xmr' has no attribute {name!r}")
