"""The models an engine uses, loaded on first need and once: the text tower, both towers,
and the re-ranker chosen by `auto | none | FOLDER`.

A text query builds only the text tower (retrieval/encoder.py `load_text_encoder`); the
first image query loads both towers, which then serve text queries too. Loading is
serialised here, so two first requests never build a model twice.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from xmr.retrieval.errors import InvalidModelSpec
from xmr.retrieval.library import Library
from xmr.retrieval.matcher_features import MANIFEST_KEY as MATCHER_KEY
from xmr.retrieval.matcher_names import DEFAULT_MATCHER, KNOWN, MatcherSource, matcher_source
from xmr.retrieval.modelspec import ModelSpec, parse_model_spec
from xmr.retrieval.reranker_compat import reranker_config_mismatch
from xmr.retrieval.reranker_files import (
    check_reranker_choice,
    folder_config,
    reranker_folder,
    reranker_name,
)
from xmr.retrieval.token_pooling import pooled_count

if TYPE_CHECKING:
    from xmr.retrieval.blip_rerank import BlipReranker
    from xmr.retrieval.encoder import Encoder, TextEncoder
    from xmr.retrieval.reranker import RerankerRuntime

if TYPE_CHECKING:
    import torch


def random_weights_notice(spec: ModelSpec) -> list[str]:
    """The warning every answer from a random-weights model carries."""
    if not spec.random_weights:
        return []
    return [
        f"{spec.canonical} has random weights; its results mean nothing (use it for tests "
        "and speed measurements only)"
    ]


@dataclass(frozen=True)
class RerankerChoice:
    """What `auto | none | FOLDER` means for one index: the folder to load (None: stage 1
    only) and, when the index's tokens do not suit the model's own re-ranker, why."""

    folder: Path | None
    notice: str | None = None
    matcher: MatcherSource | None = None  # a pretrained matcher instead (matcher_names.py)
    automatic: bool = False  # picked by auto: a failed load falls back to stage 1


def stage1_calibration(spec: ModelSpec):
    """The encoder's stage-1 score calibration (retrieval/calibration.py), kept in its
    folder for a shipped or folder model; None (the documented default) otherwise."""
    from xmr.retrieval.calibration import stage1_fit

    return stage1_fit(spec.name) if spec.kind in ("shipped", "folder") else None


def photo_reranker_notice() -> str:
    return (
        f"stage 1 only: re-rank photos with --reranker {DEFAULT_MATCHER} (BLIP ITM; needs "
        "pip install 'xmr[blip]'); `auto` picks it where a GPU is present or the index keeps "
        f"its features (xmr index --reranker {DEFAULT_MATCHER}), as on a CPU it costs seconds "
        "a query"
    )


def gpu_present() -> bool:
    """Whether CUDA can run here, without importing torch when it is not loaded yet."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        return bool(torch.cuda.is_available())
    return any(Path("/dev").glob("nvidia[0-9]*"))


def choose_matcher(choice: str, spec: ModelSpec, library: Library) -> RerankerChoice | None:
    """A pretrained matcher for `choice`: named, or under auto (no native re-ranker) the one
    whose features the index keeps, else the default where a GPU is present. A photo index
    on a CPU gets a notice saying how to turn it on. None: the native policy decides."""
    source = matcher_source(choice)
    if source is not None:
        return RerankerChoice(None, matcher=source)
    if choice != "auto" or reranker_folder("auto", spec) is not None:
        return None
    kept = library.manifest.get(MATCHER_KEY)
    if kept and kept.get("source"):
        return RerankerChoice(None, matcher=MatcherSource.from_dict(kept["source"]), automatic=True)
    if spec.kind != "openclip" or spec.random_weights:
        return None  # not photos: xmr-tiny's shapes, or a test model
    if gpu_present():
        name = DEFAULT_MATCHER
        return RerankerChoice(None, matcher=MatcherSource("hub", KNOWN[name], name), automatic=True)
    return RerankerChoice(None, photo_reranker_notice())


def choose_reranker(choice: str, spec: ModelSpec, library: Library) -> RerankerChoice:
    """Decided from the re-ranker's config alone (no torch): `auto` falls back to stage 1
    with a notice when the index cannot feed it; an explicit folder is refused instead."""
    check_reranker_choice(choice)
    matcher = choose_matcher(choice, spec, library)
    if matcher is not None:
        return matcher
    folder = reranker_folder(choice, spec)
    if folder is None or library.images.tokens is None:
        return RerankerChoice(None)
    config = folder_config(folder)
    reason = reranker_config_mismatch(library, config, reranker_name(folder))
    reason = reason or _token_shape_mismatch(library, config, reranker_name(folder))
    if reason is None:
        return RerankerChoice(folder)
    if choice == "auto":
        return RerankerChoice(None, f"{reason}; stage 1 only")
    raise InvalidModelSpec(f"{reason}; or search without re-ranking")


def _token_shape_mismatch(library: Library, config: dict, name: str) -> str | None:
    """The re-ranker reads tokens of another shape than the index stores (another model)."""
    stored = library.manifest.get("image_tokens")
    pool = library.token_pool
    wanted = [pooled_count(int(config.get("image_tokens", 0)), pool), config.get("token_dim")]
    if stored is None or list(stored) == wanted:
        return None
    return (
        f"re-ranker {name} reads image tokens of shape {tuple(wanted)}, but index "
        f"{library.directory} stores {tuple(stored)} (another model's)"
    )


class Models:
    """The encoder towers and re-rankers of one model spec on one device."""

    def __init__(self, spec: str | ModelSpec, device: str | None = None):
        self.spec = parse_model_spec(spec) if isinstance(spec, str) else spec
        self.device = device
        self._lock = threading.Lock()
        self._text: TextEncoder | None = None  # the text tower alone, until both are loaded
        self._full: Encoder | None = None
        self._rerankers: dict[Path, RerankerRuntime] = {}
        self._matchers: dict[MatcherSource, BlipReranker] = {}

    @property
    def loaded(self) -> list[str]:
        """What is in memory: "text tower", "both towers", re-ranker names."""
        towers = ["both towers"] if self._full else ["text tower"] if self._text else []
        names = [r.name for r in self._rerankers.values()]
        return towers + names + [m.name for m in self._matchers.values()]

    def text_encoder(self):
        with self._lock:
            if self._full is None and self._text is None:
                from xmr.retrieval.encoder import Encoder, load_text_encoder

                encoder = load_text_encoder(self.spec, self.device)
                if isinstance(encoder, Encoder):  # random weights: drawn as the whole model
                    self._full = encoder
                else:
                    self._text = encoder
            return self._full or self._text

    def encoder(self):
        with self._lock:
            if self._full is None:
                from xmr.retrieval.encoder import load_encoder

                self._full = load_encoder(self.spec, self.device)
                self._text = None  # both towers now serve text queries too
            return self._full

    def reranker(self, folder: Path):
        with self._lock:
            if folder not in self._rerankers:
                from xmr.retrieval.reranker import load_reranker

                self._rerankers[folder] = load_reranker(folder, None, self.device)
            return self._rerankers[folder]

    def matcher(self, source: MatcherSource, cache_bytes: int | None = None):
        """A pretrained matcher (blip_rerank.BlipReranker), loaded once per source."""
        with self._lock:
            if source not in self._matchers:
                from xmr.retrieval.blip_itm import load_matcher
                from xmr.retrieval.blip_rerank import BlipReranker
                from xmr.retrieval.matcher_cache import DEFAULT_CACHE_BYTES

                matcher = load_matcher(source, self.device)
                cap = DEFAULT_CACHE_BYTES if cache_bytes is None else cache_bytes
                self._matchers[source] = BlipReranker(matcher, cap)
            return self._matchers[source]


class QueryEncoder:
    """The encoder as a Searcher sees it, loading only the tower a query uses."""

    def __init__(self, models: Models):
        self.models = models

    def encode_texts(self, texts: Sequence[str]):
        return self.models.text_encoder().encode_texts(texts)

    def encode_images(self, pixels: torch.Tensor, token_layer: int | None = None):
        return self.models.encoder().encode_images(pixels, token_layer)

    @property
    def preprocess(self):
        return self.models.encoder().preprocess
