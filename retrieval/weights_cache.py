"""Answer "are this tag's weights on disk?" in well under a second, before importing open_clip.

`import open_clip` alone costs 4-6 s here (torchvision, coca). A model whose weights are
neither cached nor downloadable must fail fast, so the check reads open_clip's tag
registry (`open_clip/pretrained.py`, which only needs two tiny sibling modules) without
running the package's `__init__`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

_LIGHT_PACKAGE = "_xmr_open_clip_registry"
HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _registry():
    """open_clip.pretrained, loaded under a private package name (no torch import)."""
    if f"{_LIGHT_PACKAGE}.pretrained" in sys.modules:
        return sys.modules[f"{_LIGHT_PACKAGE}.pretrained"]
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = types.ModuleType(_LIGHT_PACKAGE)
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules[_LIGHT_PACKAGE] = package
    # pretrained.py tries `import safetensors.torch` (which imports torch, ~2 s); a None
    # entry makes that import fail fast inside its try/except, and is removed again after.
    blocked = "safetensors.torch" not in sys.modules
    if blocked:
        sys.modules["safetensors.torch"] = None
    try:
        return importlib.import_module(f"{_LIGHT_PACKAGE}.pretrained")
    finally:
        if blocked:
            del sys.modules["safetensors.torch"]


def tag_weights_cached(model_name: str, tag: str) -> bool | None:
    """True/False when the tag is known and its file is / is not cached; None when unsure."""
    try:
        registry = _registry()
        cfg = registry.get_pretrained_cfg(model_name, tag) if registry else None
    except Exception:  # a changed open_clip layout: let the slow path decide
        return None
    if not cfg:
        return None
    if cfg.get("file"):
        return Path(cfg["file"]).is_file()
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(cfg["hf_hub"].rstrip("/"))
        if cfg["hf_hub"].endswith("/"):
            repo_id, filename = cfg["hf_hub"].rstrip("/"), ""
        candidates = (filename,) if filename else HF_WEIGHT_FILES
        return any(isinstance(try_to_load_from_cache(repo_id, f), str) for f in candidates)
    if cfg.get("url"):
        cache = Path(os.path.expanduser("~/.cache/clip"))
        return (cache / os.path.basename(cfg["url"])).is_file()
    return None
