"""Where a model's weights come from, decided before open_clip is imported.

Local or cached weights are read from disk with the hub offline (no network round trip).
Weights that are not on disk are downloaded on first use, with huggingface_hub's progress
bar, when the host answers a short reachability probe; offline, or with `XMR_OFFLINE=1`,
the load fails within a second with a message that says what to do instead (open_clip's
own retries would take about 46 s).

"Are this tag's weights on disk?" must be answered without `import open_clip` (seconds:
torchvision, coca), so `tag_weights_cached` reads open_clip's tag registry
(`open_clip/pretrained.py`, which needs two tiny sibling modules) without running the
package's `__init__`.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from xmr.retrieval.errors import ModelNotAvailable
from xmr.retrieval.modelspec import ModelSpec

OFFLINE_ENV = "XMR_OFFLINE"
PROBE_SECONDS = 3.0  # DNS + TCP connect to the weights' host

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
        sys.modules["safetensors.torch"] = None  # type: ignore[assignment]  # import then fails
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


def tag_host(model_name: str, tag: str) -> tuple[str, int] | None:
    """(host, port) a tag's weights download from (None when the registry does not say)."""
    try:
        registry = _registry()
        cfg = registry.get_pretrained_cfg(model_name, tag) if registry else None
    except Exception:
        return None
    if not cfg:
        return None
    if cfg.get("hf_hub"):
        url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    elif cfg.get("url"):
        url = urlparse(cfg["url"])
    else:
        return None
    if url.hostname is None:
        return None
    return url.hostname, url.port or (80 if url.scheme == "http" else 443)


def reachable(host: str, port: int = 443, seconds: float = PROBE_SECONDS) -> bool:
    """True when a TCP connection to host:port opens within `seconds` (DNS included; the
    lookup runs in a thread because getaddrinfo has no timeout of its own)."""

    def connect() -> bool:
        with socket.create_connection((host, port), timeout=seconds):
            return True

    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(connect).result(timeout=seconds)
    except Exception:  # DNS failure, refused, timed out
        return False
    finally:
        pool.shutdown(wait=False)


def downloads_forbidden() -> bool:
    return os.environ.get(OFFLINE_ENV, "").lower() in ("1", "true", "yes")


def prepare_weights(spec: ModelSpec) -> None:
    """Make loading `spec` use only the disk when its weights are there, or fail at once
    when they are not and cannot be downloaded (raises ModelNotAvailable)."""
    pretrained = spec.pretrained or ""  # always set for an openclip spec, the one kind read
    local = spec.kind != "openclip" or spec.random_weights or Path(pretrained).is_file()
    cached = None if local else tag_weights_cached(spec.name, pretrained)
    if local or cached is not False:
        _hub_offline()  # on disk (or an unknown tag, which open_clip refuses by name)
        return
    if downloads_forbidden():
        raise ModelNotAvailable(unavailable_message(spec, None, f"{OFFLINE_ENV} is set"))
    where = tag_host(spec.name, pretrained)
    if where is not None and not reachable(*where):
        _hub_offline()
        raise ModelNotAvailable(unavailable_message(spec, None, f"{where[0]} cannot be reached"))


def _hub_offline() -> None:
    """huggingface_hub reads HF_HUB_OFFLINE at import and consults its constant afterwards."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants: Any = sys.modules.get("huggingface_hub.constants")

    if constants is not None:
        constants.HF_HUB_OFFLINE = True


def unavailable_message(spec: ModelSpec, exc: Exception | None, why: str | None = None) -> str:
    if spec.kind == "openclip" and not Path(spec.pretrained or "").is_file():
        reason = f"not on this machine and {why}" if why else "not on this machine"
        if exc is not None and why is None:
            reason = f"the download failed: {_first_line(exc)}"
        return (
            f"cannot load weights for {spec.name}:{spec.pretrained} ({reason}). Use a local "
            f"checkpoint as the model ({spec.name}:/path/to/open_clip_model.safetensors), run "
            f"once on a machine with network (the weights are then cached), or use the "
            f"offline model xmr-tiny"
        )
    return f"cannot load model {spec.text}: {_first_line(exc)}"


def _first_line(exc: Exception | None) -> str:
    return str(exc).splitlines()[0] if exc is not None and str(exc) else repr(exc)
