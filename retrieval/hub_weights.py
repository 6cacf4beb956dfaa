"""A Hugging Face repository's files, under the same policy as encoder weights (weights.py):
cached -> read from disk with the hub offline; not cached -> downloaded (huggingface_hub's
progress bar) once the host answers the reachability probe; unreachable, or with
`XMR_OFFLINE=1`, a ModelNotAvailable within seconds saying what to do instead."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from xmr.retrieval.errors import ModelNotAvailable
from xmr.retrieval.weights import OFFLINE_ENV, _hub_offline, downloads_forbidden, reachable

if TYPE_CHECKING:
    from xmr.retrieval.matcher_names import MatcherSource

# A model's weights, in the names save_pretrained / the hub use.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def repo_cached(repo_id: str) -> bool:
    """True when the repository's config and weights are in the local hub cache."""
    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> bool:
        return isinstance(try_to_load_from_cache(repo_id, name), str)

    return cached("config.json") and any(cached(name) for name in WEIGHT_FILES)


def hub_host() -> tuple[str, int]:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def check_available(source: MatcherSource) -> None:
    """Raise now, before any long work, when the matcher `source` (matcher_names.py)
    cannot be loaded: transformers missing, or hub files neither cached nor downloadable.
    Imports neither transformers nor torch."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        from xmr.retrieval.matcher_names import INSTALL_HINT

        raise ModelNotAvailable(
            f"the BLIP re-ranker needs transformers, which is not installed: {INSTALL_HINT}",
            setting="reranker",
        )
    if source.kind == "hub" and not repo_cached(source.ref):
        if downloads_forbidden():
            raise ModelNotAvailable(unavailable(source.ref, source.name, f"{OFFLINE_ENV} is set"))
        host, port = hub_host()
        if not reachable(host, port):
            raise ModelNotAvailable(
                unavailable(source.ref, source.name, f"{host} cannot be reached")
            )


def prepare_repo(repo_id: str, name: str):
    """A context for loading `repo_id` (shown as `name`) with from_pretrained: offline when
    it is cached, online when it may be downloaded; raises ModelNotAvailable otherwise."""
    if repo_cached(repo_id):
        _hub_offline()
        return contextlib.nullcontext()
    if downloads_forbidden():
        raise ModelNotAvailable(unavailable(repo_id, name, f"{OFFLINE_ENV} is set"))
    host, port = hub_host()
    if not reachable(host, port):
        raise ModelNotAvailable(unavailable(repo_id, name, f"{host} cannot be reached"))
    return _hub_online()


@contextlib.contextmanager
def _hub_online():
    """Downloads allowed for the duration (an encoder loaded from disk earlier in this
    process may have set the hub offline)."""
    from huggingface_hub import constants

    before_env, before = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ.pop("HF_HUB_OFFLINE", None)
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        if before_env is not None:
            os.environ["HF_HUB_OFFLINE"] = before_env
        constants.HF_HUB_OFFLINE = before
        if "transformers" in sys.modules and before:
            _hub_offline()


def unavailable(repo_id: str, name: str, why: str) -> str:
    return (
        f"cannot load re-ranker {name} ({repo_id} is not on this machine and {why}). Run "
        f"once where huggingface.co can be reached (the files are then cached), or save the "
        f"model, its tokenizer and image processor with save_pretrained into a folder and "
        f"pass that folder as --reranker"
    )
