"""The dual encoder: open_clip models that turn images and texts into vectors and tokens.

`load_encoder(spec)` resolves a model spec (see `modelspec`), builds the open_clip model,
loads its weights without touching the network unless asked to, and wraps it in an
`Encoder` whose `encode_images` / `encode_texts` return
  - pooled, L2-normalised vectors  (B, D) float32  -> FAISS
  - projected token features       (B, L, D) float16 -> token store / re-ranker
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.errors import InputError, InvalidModelSpec, ModelNotAvailable
from retrieval.modelspec import RANDOM_WEIGHTS, ModelSpec, parse_model_spec

ALLOW_DOWNLOAD_ENV = "XMR_ALLOW_DOWNLOAD"
RANDOM_WEIGHTS_SEED = 0  # `:none` weights are seeded so every process builds the same model


def _import_open_clip():
    """Import open_clip offline unless downloads were asked for.

    huggingface_hub reads HF_HUB_OFFLINE once at import time, so it must be set first;
    offline, a missing cache entry fails at once instead of ~46 s of retries.
    """
    if not downloads_allowed():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", message=".*QuickGELU.*")
    import open_clip

    return open_clip


@dataclass
class Encoded:
    vectors: np.ndarray  # (B, D) float32, unit L2 norm
    tokens: np.ndarray | None  # (B, L, D) float16, projected into the joint space
    lengths: np.ndarray | None  # (B,) int32, valid tokens per row (texts; images use all)


def select_device(requested: str | None = None) -> str:
    import torch

    if requested in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidModelSpec(f"--device {requested} asked for, but no CUDA GPU is available")
    return requested


class Encoder:
    """An open_clip model in eval mode plus its preprocessing and tokenizer."""

    def __init__(self, spec: ModelSpec, model, preprocess, tokenizer, device: str):
        import torch

        self.spec = spec
        self.model = model
        self.preprocess = preprocess  # PIL.Image -> (3, H, W) float tensor
        self.tokenizer = tokenizer  # list[str] -> (B, ctx) int64
        self.device = device
        self.random_weights = spec.random_weights
        self._torch = torch
        with torch.inference_mode():
            probe = self.encode_texts(["probe"])
        self.dim = int(probe.vectors.shape[1])
        self.text_token_shape = None if probe.tokens is None else probe.tokens.shape[1:]
        size = self.image_size
        with torch.inference_mode():
            img = self.encode_images(torch.zeros(1, 3, size[0], size[1]))
        self.image_token_shape = None if img.tokens is None else img.tokens.shape[1:]

    @property
    def image_size(self) -> tuple[int, int]:
        size = getattr(self.model.visual, "image_size", 224)
        return (size, size) if isinstance(size, int) else tuple(size)

    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", 77))

    def identity(self) -> dict:
        """Stored in an index's manifest: an index only opens with the same encoder."""
        return {**self.spec.identity(), "dim": self.dim}

    @contextmanager
    def _autocast(self):
        torch = self._torch
        if self.device.startswith("cuda"):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield

    def encode_images(self, pixels, token_layer: int | None = None) -> Encoded:
        """pixels: (B, 3, H, W) float tensor from `preprocess`. The tokens are the output of
        vision block `token_layer` (0-based; None: the last) through the final norm and
        projection: earlier blocks keep more of each patch's own content, and a re-ranker
        names the block it was trained on. The vectors do not depend on it."""
        torch = self._torch
        visual = self.model.visual
        has_tokens = hasattr(visual, "output_tokens")
        with torch.inference_mode(), self._autocast():
            x = pixels.to(self.device, non_blocking=True)
            if has_tokens:
                hidden, hook = self._capture_block(visual, token_layer)
                visual.output_tokens = True
                try:
                    pooled, tokens = visual(x)  # (B, D), (B, N, width)
                finally:
                    visual.output_tokens = False
                    if hook is not None:
                        hook.remove()
                if hidden:
                    # the block's patch tokens through the same final norm: (B, N, width)
                    tokens = visual.ln_post(hidden[0][:, -tokens.shape[1] :])
                if getattr(visual, "proj", None) is not None:
                    tokens = tokens @ visual.proj  # (B, N, D)
            else:
                pooled, tokens = visual(x), None
            vectors = torch.nn.functional.normalize(pooled.float(), dim=-1)
        return Encoded(
            vectors=vectors.cpu().numpy().astype(np.float32),
            tokens=None if tokens is None else tokens.to(torch.float16).cpu().numpy(),
            lengths=None,
        )

    def _capture_block(self, visual, layer: int | None):
        """A hook that keeps vision block `layer`'s output, batch first: ([x], handle)."""
        if layer is None:
            return [], None
        blocks = visual.transformer.resblocks
        if not -len(blocks) <= layer < len(blocks):
            raise InputError(
                f"{self.spec.canonical} has {len(blocks)} vision blocks; "
                f"token layer {layer} does not exist"
            )
        batch_first = getattr(visual.transformer, "batch_first", True)
        kept: list = []

        def keep(_module, _inputs, output):
            kept.append(output if batch_first else output.transpose(0, 1))  # (B, 1+N, width)

        return kept, blocks[layer].register_forward_hook(keep)

    def encode_texts(self, texts: Sequence[str]) -> Encoded:
        torch = self._torch
        ids = self.tokenizer(list(texts))  # (B, ctx)
        with torch.inference_mode(), self._autocast():
            ids = ids.to(self.device)
            pooled, tokens = self._text_forward(ids)  # (B, D), (B, ctx, D)
            vectors = torch.nn.functional.normalize(pooled.float(), dim=-1)
        lengths = (ids != 0).sum(dim=1).clamp(min=1)  # SimpleTokenizer pads with 0
        return Encoded(
            vectors=vectors.cpu().numpy().astype(np.float32),
            tokens=None if tokens is None else tokens.to(torch.float16).cpu().numpy(),
            lengths=lengths.to(torch.int32).cpu().numpy(),
        )

    def _text_forward(self, ids):
        """Pooled text embedding and the projected ln_final token sequence."""
        model = self.model
        if hasattr(model, "token_embedding"):  # open_clip.CLIP keeps the text tower inline
            from open_clip.transformer import text_global_pool

            cast = model.transformer.get_cast_dtype()
            x = model.token_embedding(ids).to(cast) + model.positional_embedding.to(cast)
            x = model.transformer(x, attn_mask=model.attn_mask)
            x = model.ln_final(x)  # (B, ctx, width)
            pooled = text_global_pool(
                x, ids, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None)
            )
            return _project(pooled, model.text_projection), _project(x, model.text_projection)
        text = model.text
        if hasattr(text, "output_tokens") and getattr(text, "text_projection", None) is not None:
            text.output_tokens = True
            try:
                pooled, tokens = text(ids)
            finally:
                text.output_tokens = False
            return pooled, _project(tokens, text.text_projection)
        return model.encode_text(ids), None


def _project(x, projection):
    if projection is None:
        return x
    if hasattr(projection, "weight"):  # nn.Linear
        return projection(x)
    return x @ projection


class LazyEncoder:
    """An encoder that loads its model on first use.

    `xmr index` on an unchanged folder, or a re-run of `add-texts`, needs no model at all;
    this saves the 4-6 s of importing open_clip for those runs.
    """

    def __init__(self, spec: str | ModelSpec, device: str | None = None):
        self.spec = parse_model_spec(spec) if isinstance(spec, str) else spec
        self.device_request = device
        self._encoder: Encoder | None = None

    @property
    def loaded(self) -> bool:
        return self._encoder is not None

    def load(self) -> Encoder:
        if self._encoder is None:
            self._encoder = load_encoder(self.spec, self.device_request)
        return self._encoder

    def __getattr__(self, name: str):
        return getattr(self.load(), name)


def load_encoder(spec: str | ModelSpec, device: str | None = None) -> Encoder:
    """Resolve, build and load an encoder. Raises InvalidModelSpec / ModelNotAvailable."""
    if isinstance(spec, str):
        spec = parse_model_spec(spec)
    _fail_fast_if_not_cached(spec)  # before select_device: it imports torch (~2 s)
    device = select_device(device)
    started = time.monotonic()
    model, preprocess, tokenizer = build_open_clip(spec)
    model = model.to(device).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    encoder = Encoder(spec, model, preprocess, tokenizer, device)
    encoder.load_seconds = time.monotonic() - started
    return encoder


def downloads_allowed() -> bool:
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "").lower() in ("1", "true", "yes")


def _fail_fast_if_not_cached(spec: ModelSpec) -> None:
    """Refuse an uncached open_clip tag before paying for `import open_clip`."""
    from retrieval.weights_cache import tag_weights_cached

    if spec.kind != "openclip" or spec.random_weights or Path(spec.pretrained).is_file():
        return
    if downloads_allowed():
        return
    if tag_weights_cached(spec.name, spec.pretrained) is False:
        raise ModelNotAvailable(_unavailable_message(spec, None))


def build_open_clip(spec: str | ModelSpec):
    """(model, preprocess, tokenizer) for a spec, trainable as built (used by training too).

    `:none` weights are drawn from a fixed seed, so every process builds the same model.
    """
    if isinstance(spec, str):
        spec = parse_model_spec(spec)
    _fail_fast_if_not_cached(spec)
    open_clip = _import_open_clip()
    import torch

    if not spec.random_weights:
        return _build(open_clip, spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        return _build(open_clip, spec)


def _build(open_clip, spec: ModelSpec):
    if spec.kind in ("shipped", "folder"):
        ref = f"local-dir:{spec.name}"
        load_weights = spec.pretrained is None
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                ref, load_weights=load_weights
            )
        except Exception as exc:  # weights that do not fit the config, a broken config
            raise ModelNotAvailable(_unavailable_message(spec, exc)) from exc
        tokenizer = open_clip.get_tokenizer(ref)
        if spec.pretrained not in (None, RANDOM_WEIGHTS):
            _load_checkpoint(open_clip, model, spec)
        return model, preprocess, tokenizer

    if spec.kind == "config":
        name, preprocess_cfg = _register_config(open_clip, Path(spec.name))
        kwargs = {
            "image_mean": preprocess_cfg.get("mean"),
            "image_std": preprocess_cfg.get("std"),
        }
    else:
        name, kwargs = spec.name, {}
        if name not in open_clip.list_models():
            raise InvalidModelSpec(
                f"Unknown model '{name}'. Available: {', '.join(open_clip.list_models())}"
            )
    pretrained = spec.pretrained
    if (
        spec.kind == "openclip"
        and pretrained not in (RANDOM_WEIGHTS,)
        and not Path(pretrained).is_file()
    ):
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise InvalidModelSpec(
                f"Unknown pretrained tag '{pretrained}' for {name}. "
                f"Available: {', '.join(tags) or '(none)'}, a checkpoint path, or 'none'"
            )
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name,
            pretrained=None if pretrained == RANDOM_WEIGHTS else pretrained,
            require_pretrained=pretrained != RANDOM_WEIGHTS,
            **kwargs,
        )
    except Exception as exc:  # open_clip raises RuntimeError / OSError / HF errors
        raise ModelNotAvailable(_unavailable_message(spec, exc)) from exc
    return model, preprocess, open_clip.get_tokenizer(name)


def _load_checkpoint(open_clip, model, spec: ModelSpec) -> None:
    try:
        open_clip.load_checkpoint(model, spec.pretrained)
    except Exception as exc:
        raise ModelNotAvailable(
            f"checkpoint {spec.pretrained} does not fit model {spec.name}: {exc}"
        ) from exc


def _register_config(open_clip, path: Path) -> tuple[str, dict]:
    """Make a config JSON known to open_clip under a name unique to its contents.

    open_clip only builds registered names; registering under the file stem could
    shadow a built-in model, so the name carries a content hash instead.
    """
    data = json.loads(path.read_text())
    model_cfg = data.get("model_cfg", data)
    preprocess_cfg = data.get("preprocess_cfg", {})
    digest = hashlib.sha1(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:12]
    name = f"xmr-config-{digest}"
    from open_clip import factory

    factory._MODEL_CONFIGS[name] = model_cfg  # noqa: SLF001 - see docstring
    return name, preprocess_cfg


def _unavailable_message(spec: ModelSpec, exc: Exception | None) -> str:
    if spec.kind == "openclip" and not Path(spec.pretrained or "").is_file():
        return (
            f"cannot load weights for {spec.name}:{spec.pretrained} (not in the local cache and "
            f"downloads are off). Give a local checkpoint: --model "
            f"{spec.name}:/path/to/open_clip_model.safetensors, set {ALLOW_DOWNLOAD_ENV}=1 on a "
            f"machine with network, or use the offline demo model: --model xmr-tiny"
        )
    detail = str(exc).splitlines()[0] if exc is not None and str(exc) else repr(exc)
    return f"cannot load model {spec.text}: {detail}"
