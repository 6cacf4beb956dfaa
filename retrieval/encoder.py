"""The dual encoder: open_clip models that turn images and texts into vectors and tokens.

`load_encoder(spec)` resolves a model spec (see `modelspec`), builds the open_clip model,
loads its weights (see `weights` for when the network may be used), and wraps it in an
`Encoder` whose `encode_images` / `encode_texts` return
  - pooled, L2-normalised vectors  (B, D) float32  -> FAISS
  - projected token features       (B, L, D) float16 -> token store / re-ranker

`load_text_encoder(spec)` builds the text tower alone when its weights can be read
without the image tower's (a safetensors file): a text query needs nothing else.

Neither ever changes the model after loading: an encoder is shared by the threads of a
server, so token outputs come from `forward_intermediates` and flags set once at load.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xmr.retrieval.encoded import Encoded
from xmr.retrieval.errors import InputError, InvalidModelSpec, ModelNotAvailable
from xmr.retrieval.image_tower import ImageTower, TorchImageTower
from xmr.retrieval.modelspec import (
    HUB_CONFIG_FILE,
    HUB_WEIGHTS_FILE,
    RANDOM_WEIGHTS,
    ModelSpec,
    parse_model_spec,
)
from xmr.retrieval.open_clip_import import import_open_clip, with_transformers_on_demand
from xmr.retrieval.weights import prepare_weights, unavailable_message

if TYPE_CHECKING:
    import torch
    from torch import nn

    from xmr.retrieval.imageio import Preprocess

    Tokenizer = Callable[[list[str]], torch.Tensor]  # texts -> (B, context) token ids

RANDOM_WEIGHTS_SEED = 0  # `:none` weights are seeded so every process builds the same model


def _import_open_clip():
    return import_open_clip()


def select_device(requested: str | None = None) -> str:
    import torch

    if requested in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidModelSpec(f"device {requested} asked for, but no CUDA GPU is available")
    return requested


class TextEncoder:
    """The text side of an open_clip model: tokenizer + text tower, in eval mode.

    `tower` is either a whole CLIP (whose text tower lives inline), a CustomTextCLIP's
    `text` module, or a standalone TextTransformer built with `output_tokens=True`.
    """

    load_seconds: float  # set by load_encoder / load_text_encoder

    def __init__(self, spec: ModelSpec, tower: nn.Module, tokenizer: Tokenizer, device: str):
        import torch

        self.spec = spec
        self.tokenizer = tokenizer  # list[str] -> (B, ctx) int64
        self.device = device
        self.random_weights = spec.random_weights
        self._torch = torch
        self._text = tower
        self.dim, self.text_token_shape = _text_shapes(tower, self.context_length)

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

    def encode_texts(self, texts: Sequence[str]) -> Encoded:
        torch = self._torch
        ids = self.tokenizer(list(texts))  # (B, ctx)
        with torch.inference_mode(), self._autocast():
            ids = ids.to(self.device)
            pooled, tokens = _text_forward(self._text, ids)  # (B, D), (B, ctx, D)
            vectors = torch.nn.functional.normalize(pooled.float(), dim=-1)
        lengths = (ids != 0).sum(dim=1).clamp(min=1)  # SimpleTokenizer pads with 0
        return Encoded(
            vectors=vectors.cpu().numpy().astype(np.float32),
            tokens=None if tokens is None else tokens.to(torch.float16).cpu().numpy(),
            lengths=lengths.to(torch.int32).cpu().numpy(),
        )


class Encoder(TextEncoder):
    """Both towers of an open_clip model in eval mode, its preprocessing and tokenizer."""

    def __init__(
        self,
        spec: ModelSpec,
        model: nn.Module,
        preprocess: Preprocess,
        tokenizer: Tokenizer,
        device: str,
    ):
        text = model if hasattr(model, "token_embedding") else getattr(model, "text", model)
        if text is not model and getattr(text, "text_projection", None) is not None:
            text.output_tokens = True  # once, at load: the tower now returns its tokens too
        super().__init__(spec, text, tokenizer, device)
        self.model: Any = model  # an open_clip CLIP (untyped): its towers are read by name
        self.preprocess = preprocess  # PIL.Image -> (3, H, W) float tensor
        self.image_token_shape = _image_token_shape(model.visual, self.dim)
        self.image_tower: ImageTower = TorchImageTower(
            model, device, self._block_index, self.image_token_shape is not None
        )

    @property
    def image_size(self) -> tuple[int, int]:
        size = getattr(self.model.visual, "image_size", 224)
        return (size, size) if isinstance(size, int) else tuple(size)

    def encode_images(self, pixels: torch.Tensor, token_layer: int | None = None) -> Encoded:
        """pixels: (B, 3, H, W) float tensor from `preprocess`. The tokens are the output of
        vision block `token_layer` (0-based; None: the last) through the final norm and
        projection: earlier blocks keep more of each patch's own content, and a re-ranker
        names the block it was trained on. The vectors do not depend on it. The work is
        `image_tower`'s (retrieval/image_tower.py: PyTorch unless another runtime was
        plugged in)."""
        return self.image_tower.encode(pixels, token_layer)

    def _block_index(self, layer: int | None) -> int:
        blocks = len(self.model.visual.transformer.resblocks)
        if layer is None:
            return blocks - 1
        if not -blocks <= layer < blocks:
            raise InputError(
                f"{self.spec.canonical} has {blocks} vision blocks; "
                f"token layer {layer} does not exist"
            )
        return layer % blocks


def _text_forward(text, ids):
    """Pooled text embedding (B, D) and the projected ln_final token sequence (B, ctx, D)."""
    if hasattr(text, "token_embedding") and hasattr(text, "text_pool_type"):
        # open_clip.CLIP keeps its text tower inline
        from open_clip.transformer import text_global_pool

        cast = text.transformer.get_cast_dtype()
        x = text.token_embedding(ids).to(cast) + text.positional_embedding.to(cast)
        x = text.transformer(x, attn_mask=text.attn_mask)
        x = text.ln_final(x)  # (B, ctx, width)
        pooled = text_global_pool(
            x, ids, text.text_pool_type, eos_token_id=getattr(text, "text_eos_id", None)
        )
        return _project(pooled, text.text_projection), _project(x, text.text_projection)
    if getattr(text, "output_tokens", False):  # a text tower built or set to give tokens
        pooled, tokens = text(ids)
        return pooled, _project(tokens, getattr(text, "text_projection", None))
    return text.encode_text(ids) if hasattr(text, "encode_text") else text(ids), None


def _project(x, projection):
    if projection is None:
        return x
    if hasattr(projection, "weight"):  # nn.Linear
        return projection(x)
    return x @ projection


def _text_shapes(text, context_length: int) -> tuple[int, tuple[int, int] | None]:
    """(D, token shape) read off the text tower's modules: no forward pass needed."""
    projection: Any = getattr(text, "text_projection", None)
    if hasattr(projection, "out_features"):
        dim = int(projection.out_features)
    elif projection is not None:
        dim = int(projection.shape[-1])
    else:
        dim = int(getattr(text, "output_dim", 0) or getattr(text, "embed_dim", 0))
    if not dim:
        raise ModelNotAvailable("cannot tell the embedding size of this model's text tower")
    has_tokens = hasattr(text, "token_embedding") or getattr(text, "output_tokens", False)
    return dim, ((context_length, dim) if has_tokens else None)


def _image_token_shape(visual, dim: int) -> tuple[int, int] | None:
    """(N, D) of a ViT's patch tokens from its grid; None for towers without one."""
    if not hasattr(visual, "forward_intermediates") or not hasattr(visual, "grid_size"):
        return None
    if getattr(visual, "attn_pool", None) is not None or getattr(
        visual, "final_ln_after_pool", False
    ):
        return None  # tokens of these poolings are not the normalised block outputs
    rows, cols = visual.grid_size
    width = dim if getattr(visual, "proj", None) is not None else int(visual.transformer.width)
    return int(rows) * int(cols), width


class LazyEncoder:
    """An encoder that loads its model on first use.

    `xmr index` on an unchanged folder, or a re-run of `add-texts`, needs no model at all;
    this saves the seconds of importing open_clip for those runs.
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
    """Resolve, build and load both towers. Raises InvalidModelSpec / ModelNotAvailable."""
    if isinstance(spec, str):
        spec = parse_model_spec(spec)
    prepare_weights(spec)  # before select_device: a refusal should not cost torch's import
    device = select_device(device)
    started = time.monotonic()
    model, preprocess, tokenizer = build_open_clip(spec)
    model = model.to(device).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    encoder = Encoder(spec, model, preprocess, tokenizer, device)
    encoder.load_seconds = time.monotonic() - started
    return encoder


def load_text_encoder(spec: str | ModelSpec, device: str | None = None) -> TextEncoder:
    """The text tower alone, loaded from the text weights of a safetensors file; the whole
    model where that is not possible (random weights must be drawn as the whole model
    draws them, other checkpoint formats hold both towers in one pickle)."""
    if isinstance(spec, str):
        spec = parse_model_spec(spec)
    prepare_weights(spec)
    if spec.random_weights:
        return load_encoder(spec, device)
    open_clip = _import_open_clip()
    source = _text_tower_source(open_clip, spec)
    if source is None:
        return load_encoder(spec, device)
    model_cfg, weights, tokenizer_ref = source
    device = select_device(device)
    started = time.monotonic()
    tower = _build_text_tower(open_clip, model_cfg, weights)
    if tower is None:
        return load_encoder(spec, device)
    tower = tower.to(device).eval()
    encoder = TextEncoder(spec, tower, open_clip.get_tokenizer(tokenizer_ref), device)
    encoder.load_seconds = time.monotonic() - started
    return encoder


def _text_tower_source(open_clip, spec: ModelSpec):
    """(model config, safetensors weights, tokenizer name) for a text-only build, or None."""
    if spec.kind in ("shipped", "folder"):
        data = json.loads((Path(spec.name) / HUB_CONFIG_FILE).read_text())
        model_cfg = data.get("model_cfg", data)
        weights: str | None = spec.pretrained or str(Path(spec.name) / HUB_WEIGHTS_FILE)
        tokenizer_ref = f"local-dir:{spec.name}"
    elif spec.kind == "config":
        name, _ = _register_config(open_clip, Path(spec.name))
        model_cfg, weights, tokenizer_ref = open_clip.get_model_config(name), spec.pretrained, name
    else:
        model_cfg = open_clip.get_model_config(spec.name)
        assert spec.pretrained is not None  # an openclip spec always names its weights
        weights, tokenizer_ref = spec.pretrained, spec.name
        if model_cfg is not None and not Path(weights).is_file():
            tag = open_clip.get_pretrained_cfg(spec.name, spec.pretrained)
            try:
                weights = open_clip.download_pretrained(tag) if tag else None
            except Exception:  # not cached after all: the whole-model path reports it
                weights = None
    text_cfg = (model_cfg or {}).get("text_cfg", {})
    custom = (model_cfg or {}).get("custom_text") or "hf_model_name" in text_cfg
    if model_cfg is None or custom or not weights or not str(weights).endswith(".safetensors"):
        return None
    return model_cfg, str(weights), tokenizer_ref


def _build_text_tower(open_clip, model_cfg: dict, weights: str):
    """A TextTransformer as CLIP builds it, with the checkpoint's text weights; None when
    the checkpoint's keys do not fit (the whole-model path then reports the problem)."""
    import torch
    from safetensors import safe_open

    text_cfg = {**model_cfg["text_cfg"], "output_tokens": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tower = open_clip.model._build_text_tower(  # noqa: SLF001 - CLIP's own text builder
            model_cfg["embed_dim"], text_cfg, model_cfg.get("quick_gelu", False), None
        )
    wanted = set(tower.state_dict())
    with safe_open(weights, framework="pt") as checkpoint:
        state = {k: checkpoint.get_tensor(k) for k in checkpoint.keys() if k in wanted}
    if set(state) != wanted:
        return None
    tower.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    for param in tower.parameters():
        param.requires_grad_(False)
    return tower


def build_open_clip(spec: str | ModelSpec):
    """(model, preprocess, tokenizer) for a spec, trainable as built (used by training too).

    `:none` weights are drawn from a fixed seed, so every process builds the same model.
    """
    if isinstance(spec, str):
        spec = parse_model_spec(spec)
    prepare_weights(spec)
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
            model, _, preprocess = with_transformers_on_demand(
                open_clip.create_model_and_transforms, ref, load_weights=load_weights
            )
        except Exception as exc:  # weights that do not fit the config, a broken config
            raise ModelNotAvailable(unavailable_message(spec, exc)) from exc
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
    assert pretrained is not None  # config and openclip specs always name their weights
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
        model, _, preprocess = with_transformers_on_demand(
            open_clip.create_model_and_transforms,
            name,
            pretrained=None if pretrained == RANDOM_WEIGHTS else pretrained,
            require_pretrained=pretrained != RANDOM_WEIGHTS,
            **kwargs,
        )
    except Exception as exc:  # open_clip raises RuntimeError / OSError / HF errors
        raise ModelNotAvailable(unavailable_message(spec, exc)) from exc
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
