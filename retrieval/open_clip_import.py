"""Importing open_clip without HuggingFace transformers, until a model needs it.

`import open_clip` imports transformers (for its HF text towers and CoCa's generation),
about a second of start-up here, although CLIP models with open_clip's own text tower
(xmr-tiny, ViT-B-32, every model xmr ships or tests) never touch it. open_clip's import
already works without transformers installed: it then marks HF towers unavailable. So
xmr imports open_clip with `transformers` held back, in the importing thread only, and
when a model turns out to need it (open_clip's "pip install transformers" error), lets
it in: `bring_back_transformers` re-runs open_clip's two modules that import it, in
place, so every class already handed out sees it from then on.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

HELD_BACK = "transformers"
_MODULES_THAT_IMPORT_IT = ("open_clip.hf_model", "open_clip.coca_model")
_lock = threading.Lock()


class _HoldBack(importlib.abc.MetaPathFinder):
    """Makes `import transformers` fail, for one thread, as if it were not installed."""

    def __init__(self, thread: int):
        self.thread = thread

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if threading.get_ident() == self.thread and name.split(".")[0] == HELD_BACK:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def import_open_clip() -> Any:
    """open_clip, imported without transformers unless something imported it before."""
    warnings.filterwarnings("ignore", message=".*QuickGELU.*")
    with _lock:
        if "open_clip" not in sys.modules and HELD_BACK not in sys.modules:
            finder = _HoldBack(threading.get_ident())
            sys.meta_path.insert(0, finder)
            try:
                import open_clip  # noqa: F401 - imported here for the finder's sake
            finally:
                sys.meta_path.remove(finder)
    import open_clip

    return open_clip


def transformers_held_back() -> bool:
    """True while open_clip runs without transformers that could be imported."""
    hf_model = sys.modules.get("open_clip.hf_model")
    return hf_model is not None and getattr(hf_model, "transformers", None) is None


def bring_back_transformers() -> bool:
    """Let open_clip use transformers from now on; False where it is not installed."""
    with _lock:
        try:
            importlib.import_module(HELD_BACK)
        except ImportError:
            return False
        for name in _MODULES_THAT_IMPORT_IT:
            if name in sys.modules:
                importlib.reload(sys.modules[name])
    return True


def with_transformers_on_demand(create: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`create(*args, **kwargs)` (an open_clip factory); where it fails only because
    transformers was held back, again with transformers."""
    try:
        return create(*args, **kwargs)
    except RuntimeError as exc:
        if "install transformers" not in str(exc) or not transformers_held_back():
            raise
        if not bring_back_transformers():
            raise
    return create(*args, **kwargs)
