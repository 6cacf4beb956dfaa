"""The models an engine uses, loaded on first need and once: the text tower, both towers,
and the re-ranker chosen by `auto | none | FOLDER`.

On a CPU, queries run through ONNX Runtime exports of the towers and of the native
re-ranker (retrieval/onnx/), so a cold `xmr search` never imports torch or open_clip;
the exports are made on first need (index time, `xmr compact`, or the first query) and
kept in a cache keyed by the model's content. Where that is impossible (onnxruntime
missing, an export that fails or does not reproduce the model, a GPU to use, or
XMR_ONNX=0), queries run through PyTorch and the answer carries a notice saying why.

On the PyTorch path, a text query builds only the text tower (retrieval/encoder.py
`load_text_encoder`); the first image query loads both towers, which then serve text
queries too. Loading is serialised here, so two first requests never build a model twice.
"""

from __future__ import annotations

import os
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
    model_rerankers,
    reranker_folder,
    reranker_name,
)
from xmr.retrieval.token_pooling import pooled_count

if TYPE_CHECKING:
    from xmr.retrieval.blip_rerank import BlipReranker
    from xmr.retrieval.encoder import Encoder, TextEncoder
    from xmr.retrieval.onnx.runtime import OnnxImageTower, OnnxReranker, OnnxTextEncoder
    from xmr.retrieval.reranker import RerankerRuntime

ONNX_ENV = "XMR_ONNX"  # "0": queries through PyTorch even where ONNX Runtime could serve


def onnx_wanted(device: str | None) -> bool:
    """ONNX Runtime serves queries on the CPU unless XMR_ONNX=0; a GPU, named or present
    under `auto`, is used through PyTorch."""
    if os.environ.get(ONNX_ENV, "1").strip() == "0":
        return False
    if device not in (None, "", "auto"):
        return device == "cpu"
    return not gpu_present()


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
    only) and, when the index's tokens do not suit the model's current re-ranker, why."""

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
    """Decided from the re-ranker's config alone (no torch): `auto` takes the model's
    re-ranker that the index can feed (auto_reranker); an explicit folder the index cannot
    feed is refused."""
    check_reranker_choice(choice)
    matcher = choose_matcher(choice, spec, library)
    if matcher is not None:
        return matcher
    if choice == "auto":
        return auto_reranker(spec, library)
    folder = reranker_folder(choice, spec)
    if folder is None or library.images.tokens is None:
        return RerankerChoice(None)
    reason = index_mismatch(library, folder)
    if reason is None:
        return RerankerChoice(folder)
    raise InvalidModelSpec(f"{reason}; or search without re-ranking")


def auto_reranker(
    spec: ModelSpec, library: Library, fallback: str = "stage 1 only"
) -> RerankerChoice:
    """The model's current re-ranker where the index's tokens suit it. An index built for
    a re-ranker the model shipped before (its tokens lack what the current one reads)
    keeps that one, with a notice saying how to move on: its results stay re-ranked, not
    dropped to stage 1. None with the reason and `fallback` (what follows) when none fits."""
    folders = model_rerankers(spec)
    if not folders or library.images.tokens is None:
        return RerankerChoice(None)
    current_reason = index_mismatch(library, folders[0])
    if current_reason is None:
        return RerankerChoice(folders[0])
    for earlier in folders[1:]:
        if index_mismatch(library, earlier) is None:
            return RerankerChoice(
                earlier,
                f"index {library.directory} was built for {reranker_name(earlier)}, which "
                f"re-ranks it; to re-rank with the current {reranker_name(folders[0])}, "
                "re-index into a new index folder",
            )
    return RerankerChoice(None, f"{current_reason}; {fallback}")


def index_mismatch(library: Library, folder: Path) -> str | None:
    """Why the re-ranker in `folder` cannot read the index's stored image tokens, with the
    fix; None when it can."""
    config, name = folder_config(folder), reranker_name(folder)
    return reranker_config_mismatch(library, config, name) or _token_shape_mismatch(
        library, config, name
    )


def _token_shape_mismatch(library: Library, config: dict, name: str) -> str | None:
    """The re-ranker reads tokens of another shape than the index stores (another model)."""
    stored = library.manifest.get("image_tokens")
    pool = library.token_pool
    wanted = [pooled_count(int(config.get("image_tokens", 0)), pool), config.get("token_dim")]
    if stored is None:
        return None
    stored = [stored[0], stored[1] - 3 * library.token_pixels**2]  # the encoder's part
    if stored == wanted:
        return None
    return (
        f"re-ranker {name} reads image tokens of shape {tuple(wanted)}, but index "
        f"{library.directory} stores {tuple(stored)} (another model's)"
    )


class Models:
    """The encoder towers and re-rankers of one model spec on one device."""

    def __init__(self, spec: str | ModelSpec, device: str | None = None, short_lived: bool = False):
        """`short_lived`: the process answers one query and ends (see Engine)."""
        self.spec = parse_model_spec(spec) if isinstance(spec, str) else spec
        self.device = device
        # ONNX Runtime lays weights out for its kernels at load, which pays back over many
        # queries only (runtime.session).
        self.prepack = not short_lived
        self.token_layer: int | None = None  # the vision block the index stores tokens of
        self._lock = threading.Lock()
        self._text: TextEncoder | None = None  # the text tower alone, until both are loaded
        self._full: Encoder | None = None
        self._rerankers: dict[Path, RerankerRuntime | OnnxReranker] = {}
        self._matchers: dict[MatcherSource, BlipReranker] = {}
        self.onnx = onnx_wanted(device)
        self._onnx_text: OnnxTextEncoder | None = None
        self._onnx_images: dict[int | None, OnnxImageTower] = {}
        self.notices: list[str] = []  # why a query went through PyTorch after all

    @property
    def loaded(self) -> list[str]:
        """What is in memory: "text tower", "both towers", re-ranker names."""
        towers = ["both towers"] if self._full else ["text tower"] if self._text else []
        towers += ["text tower (ONNX)"] if self._onnx_text else []
        towers += ["image tower (ONNX)"] if self._onnx_images else []
        names = [r.name for r in self._rerankers.values()]
        return towers + names + [m.name for m in self._matchers.values()]

    # -- ONNX Runtime (retrieval/onnx/) ---------------------------------------------------
    def _onnx_failed(self, what: str, exc: Exception) -> None:
        """Turn ONNX off for this engine, with the one notice its answers carry."""
        self.onnx = False
        self.notices.append(f"{what} through PyTorch: the ONNX path is unavailable ({exc})")

    def onnx_text(self) -> OnnxTextEncoder | None:
        """The text tower through ONNX Runtime (exported first if need be), or None."""
        with self._lock:
            if self._onnx_text is None and self.onnx:
                try:
                    self._onnx_text = self._load_onnx_text()
                except Exception as exc:  # any failure: PyTorch answers, never a wrong one
                    self._onnx_failed("queries run", exc)
            return self._onnx_text

    def onnx_image(self, token_layer: int | None) -> OnnxImageTower | None:
        """The image tower giving the tokens of block `token_layer`, or None."""
        with self._lock:
            if token_layer not in self._onnx_images and self.onnx:
                try:
                    self._onnx_images[token_layer] = self._load_onnx_image(token_layer)
                except Exception as exc:
                    self._onnx_failed("queries run", exc)
            return self._onnx_images.get(token_layer)

    def _towers_folder(self, name: str, token_layer: int | None) -> tuple[Path, dict]:
        """The export folder of this model holding `name`, exported now if it lacks it
        (the towers, the image tower giving the tokens of block `token_layer`)."""
        from xmr.retrieval.onnx import store

        folder = store.model_folder(self.spec)
        meta = store.read_meta(folder)
        if store.present(folder, meta, name) is None:
            from xmr.retrieval.encoder import load_encoder
            from xmr.retrieval.onnx.export import export_towers

            if self._full is None or self._full.device != "cpu":
                self._full = load_encoder(self.spec, "cpu")
                self._text = None
            export_towers(self._full, folder, token_layer)
            meta = store.read_meta(folder)
            if store.present(folder, meta, name) is None:
                raise RuntimeError(f"the export {name} was not kept")
        assert meta is not None  # present() found the file in it
        return folder, meta

    def _load_onnx_text(self) -> OnnxTextEncoder:
        from xmr.retrieval.onnx.runtime import OnnxTextEncoder

        folder, meta = self._towers_folder("text.onnx", self.token_layer)
        info = meta["files"]["text.onnx"]
        return OnnxTextEncoder(
            folder / "text.onnx",
            info["context_length"],
            meta["dim"],
            bool(info.get("trim")),
            prepack=self.prepack,
        )

    def _load_onnx_image(self, token_layer: int | None) -> OnnxImageTower:
        from xmr.retrieval.onnx.runtime import OnnxImageTower
        from xmr.retrieval.onnx.store import image_file

        name = image_file(token_layer)
        folder, meta = self._towers_folder(name, token_layer)
        preprocess = meta["files"][name]["preprocess"]
        return OnnxImageTower(folder / name, preprocess, prepack=self.prepack)

    def _reranker_export(self, folder: Path) -> tuple[Path, str] | None:
        """(export folder, fingerprint) of a native re-ranker's ONNX export, exported now
        if the cache lacks it; None where that path does not serve it (pooled tokens)."""
        if int(folder_config(folder).get("image_pool") or 1) != 1:
            return None
        from xmr.retrieval.onnx import store
        from xmr.retrieval.reranker_files import folder_fingerprint

        fingerprint = folder_fingerprint(folder)
        export = store.reranker_export_folder(fingerprint)
        meta = store.read_meta(export)
        if any(store.present(export, meta, n) is None for n in ("stem.onnx", "match.onnx")):
            from xmr.retrieval.onnx.export import export_reranker
            from xmr.retrieval.reranker import load_reranker

            export_reranker(load_reranker(folder, None, "cpu"), export)
        return export, fingerprint

    def _onnx_reranker(self, folder: Path) -> OnnxReranker | None:
        """A native re-ranker through ONNX Runtime; None where that path does not serve it
        or failed (with a notice)."""
        if not self.onnx:
            return None
        from xmr.retrieval.onnx.runtime import OnnxReranker

        try:
            made = self._reranker_export(folder)
            if made is None:
                return None
            name = reranker_name(folder)
            return OnnxReranker.from_folder(made[0], folder, name, made[1], self.prepack)
        except Exception as exc:  # any failure: PyTorch answers, never a wrong one
            self._onnx_failed(f"re-ranking by {reranker_name(folder)} runs", exc)
            return None

    def prepare_onnx(self, reranker: Path | None) -> list[str]:
        """Make the exports this model's queries use (at index time, `xmr compact`) unless
        the cache holds them, loading no session: the first query is then a cold one
        without torch. Notices for what failed."""
        from xmr.retrieval.onnx.store import image_file

        with self._lock:
            try:
                self._towers_folder("text.onnx", self.token_layer)
                self._towers_folder(image_file(self.token_layer), self.token_layer)
            except Exception as exc:
                self._onnx_failed("queries run", exc)
            if reranker is not None and self.onnx:
                try:
                    self._reranker_export(reranker)
                except Exception as exc:
                    self._onnx_failed(f"re-ranking by {reranker_name(reranker)} runs", exc)
        return list(self.notices)

    def adopt(self, encoder) -> None:
        """Keep an encoder of this model that is already loaded on the CPU (the one an
        index run just used), so an export needs no second build of the model."""
        with self._lock:
            if self._full is None and encoder.spec == self.spec and encoder.device == "cpu":
                self._full = encoder
                self._text = None

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
                onnx = self._onnx_reranker(folder)
                if onnx is not None:
                    self._rerankers[folder] = onnx
                else:
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
    """The encoder as a Searcher sees it, loading only the tower a query uses: through
    ONNX Runtime where it serves, else PyTorch."""

    def __init__(self, models: Models):
        self.models = models

    def encode_texts(self, texts: Sequence[str]):
        onnx = self.models.onnx_text()
        if onnx is not None:
            return onnx.encode_texts(texts)
        return self.models.text_encoder().encode_texts(texts)

    def encode_images(self, pixels, token_layer: int | None = None):
        """pixels (B, 3, H, W) from `preprocess`: a NumPy array or a tensor."""
        onnx = self.models.onnx_image(token_layer)
        if onnx is not None:
            import numpy as np

            from xmr.retrieval.encoded import Encoded

            vectors, tokens = onnx.encode(np.asarray(pixels))
            return Encoded(vectors, tokens.astype(np.float16) if tokens.size else None, None)
        if not hasattr(pixels, "to"):  # NumPy pixels (the same values: export.py checks)
            import torch

            pixels = torch.from_numpy(pixels)
        return self.models.encoder().encode_images(pixels, token_layer)

    @property
    def preprocess(self):
        onnx = self.models.onnx_image(self.models.token_layer)
        return onnx.preprocess if onnx is not None else self.models.encoder().preprocess
