"""BLIP ITM: a pretrained image-text matcher with its own vision tower, as a re-ranker.

transformers' `BlipForImageTextRetrieval` holds a ViT (`vision_model`), a BERT text encoder
whose layers cross-attend to the image's tokens (`text_encoder`) and a two-way head
(`itm_head`): logits (B, 2), of which [:, 1] says "this text describes this image". The
vision pass depends on the image alone: it runs once per image (kept at index time, or
computed on demand and cached, see matcher_features.py) and is shared by every query.

    pixels (B, 3, S, S) --vision_model--> vision tokens (B, N, V)   N = (S/patch)^2 + 1
    text ids (B, L) + vision tokens --text_encoder--> (B, L, H) --itm_head([:, 0])--> (B, 2)

The first text token: BLIP's own code (salesforce/BLIP models/blip_retrieval.py, LAVIS
blip_retrieval.py) replaces [CLS] with its [ENC] token before every ITM pass, and the
published checkpoints were fine-tuned that way; transformers' forward keeps [CLS]
(transformers issues #22732, #25629). The converted weights are BLIP's own (the conversion
script loads model_base_retrieval_coco.pth unchanged), so xmr follows training: [ENC] first
whenever the model knows one (see `enc_token_id`).

transformers is an optional extra: nothing imports this module unless a BLIP re-ranker is
asked for.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xmr.retrieval.errors import InvalidModelSpec, ModelNotAvailable
from xmr.retrieval.matcher_names import FAMILY, INSTALL_HINT, MatcherSource

if TYPE_CHECKING:
    import torch

    from xmr.retrieval.calibration import Logistic

# transformers' model, tokenizer and processor are typed Any: it is an optional extra, read
# as untyped ([tool.mypy] in pyproject.toml), and the tests pass stand-ins for them.

# The ITM logit spans about -8..8 on COCO (a sharp two-way head); stage-1 cosines of
# open_clip span about 0.1..0.4. 1.0 lets stage 1 break near-ties only (see the model card).
DEFAULT_STAGE1_WEIGHT = 1.0
MAX_TEXT_TOKENS = 35  # BLIP's retrieval setting (max_txt_len)
BLIP_VOCAB = 30524  # bert-base-uncased + [DEC] + [ENC]: BLIP's text vocabulary
SETTINGS_FILE = "xmr_matcher.json"  # in a matcher's folder: {"stage1_weight": ...}


@dataclass
class MatcherSettings:
    stage1_weight: float = DEFAULT_STAGE1_WEIGHT  # final = ITM logit + weight * cosine
    max_text_tokens: int = MAX_TEXT_TOKENS
    batch: int = 32  # (text, image) pairs per cross-attention pass
    vision_batch: int = 32  # images per vision pass


def folder_settings(folder: Path) -> MatcherSettings:
    """A folder's own settings (a calibrated stage-1 weight), else the defaults."""
    path = Path(folder) / SETTINGS_FILE
    if not path.is_file():
        return MatcherSettings()
    try:
        saved = json.loads(path.read_text())
        return MatcherSettings(**{k: v for k, v in saved.items() if k in _SETTING_NAMES})
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidModelSpec(f"{path} is not a matcher settings file ({exc})") from exc


_SETTING_NAMES = ("stage1_weight", "max_text_tokens", "batch", "vision_batch")


def import_transformers():
    """transformers, or a typed error saying how to install it."""
    try:
        import transformers
    except ImportError as exc:
        raise ModelNotAvailable(
            f"the BLIP re-ranker needs transformers, which is not installed: {INSTALL_HINT}",
            setting="reranker",
        ) from exc
    return transformers


def enc_token_id(tokenizer: Any, vocab_size: int) -> int | None:
    """The id of BLIP's [ENC] token, or None for a model that has none (then [CLS] stays).

    The tokenizer's own [ENC] when it has one; else BLIP's layout, where [ENC] is the last
    of bert-base-uncased's 30522 words + [DEC] + [ENC] (the hub checkpoints ship plain BERT
    tokenizer files, but a 30524-word text embedding)."""
    token = tokenizer.convert_tokens_to_ids("[ENC]")
    if isinstance(token, int) and token != tokenizer.unk_token_id and token < vocab_size:
        return token
    if vocab_size == BLIP_VOCAB and len(tokenizer) < BLIP_VOCAB:
        return BLIP_VOCAB - 1
    return None


class BlipPreprocess:
    """PIL image -> (3, S, S) float tensor, as the model's image processor prepares it."""

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, image):
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]


class BlipMatcher:
    """A loaded BLIP ITM model on one device: vision features and fused scores."""

    family = FAMILY

    def __init__(self, model: Any, tokenizer: Any, processor: Any, source: MatcherSource,
                 fingerprint: str, device: str = "cpu",
                 settings: MatcherSettings | None = None):  # fmt: skip
        import torch

        self.torch = torch
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.preprocess = BlipPreprocess(processor)
        self.source = source
        self.name = source.name
        self.fingerprint = fingerprint
        self.device = device
        # final score -> probability of a match (calibration.py); None: the default
        self.calibration: Logistic | None = None
        # a GPU takes K = 128 pairs in one pass
        self.settings = settings or MatcherSettings(
            **({"batch": 128, "vision_batch": 64} if str(device).startswith("cuda") else {})
        )
        config = model.config
        self.enc_token_id = enc_token_id(tokenizer, config.text_config.vocab_size)
        vision = config.vision_config
        self.image_size = int(vision.image_size)
        # (N, V): 1 + patches, vision width
        self.feature_shape = ((vision.image_size // vision.patch_size) ** 2 + 1, vision.hidden_size)

    # -- the image side: once per image -------------------------------------------------
    def vision_features(self, pixels: torch.Tensor | np.ndarray) -> np.ndarray:
        """pixels (B, 3, S, S) -> vision tokens (B, N, V) float32 numpy."""
        torch = self.torch
        parts = []
        with torch.inference_mode():
            for start in range(0, len(pixels), self.settings.vision_batch):
                chunk = torch.as_tensor(pixels[start : start + self.settings.vision_batch])
                with _autocast(torch, self.device):
                    out = self.model.vision_model(pixel_values=chunk.to(self.device).float())
                parts.append(out.last_hidden_state.float().cpu().numpy())
        return np.concatenate(parts) if parts else np.zeros((0, *self.feature_shape), np.float32)

    # -- the text side -------------------------------------------------------------------
    def text_inputs(self, texts: list[str]):
        """texts -> input_ids (B, L) with [ENC] first where the model has one, mask (B, L)."""
        encoded = self.tokenizer(
            list(texts),
            padding="longest",
            truncation=True,
            max_length=self.settings.max_text_tokens,
            return_tensors="pt",
        )
        ids = encoded["input_ids"].clone()
        if self.enc_token_id is not None:
            ids[:, 0] = self.enc_token_id  # BLIP's ITM convention (module docstring)
        return ids, encoded["attention_mask"]

    def itm_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        vision: torch.Tensor | np.ndarray,
    ) -> np.ndarray:
        """input_ids, attention_mask (P, L) and vision tokens (P, N, V) -> match logits (P,)."""
        torch = self.torch
        out = []
        with torch.inference_mode():
            for start in range(0, len(input_ids), self.settings.batch):
                part = slice(start, start + self.settings.batch)
                image = torch.as_tensor(vision[part]).to(self.device).float()  # (b, N, V)
                ids = input_ids[part].to(self.device)
                mask = attention_mask[part].to(self.device)
                with _autocast(torch, self.device):
                    hidden = self.model.text_encoder(
                        input_ids=ids,
                        attention_mask=mask,
                        encoder_hidden_states=image,
                        encoder_attention_mask=torch.ones(
                            image.shape[:-1], dtype=torch.long, device=self.device
                        ),
                    ).last_hidden_state  # (b, L, H)
                    logits = self.model.itm_head(hidden[:, 0, :])  # (b, 2)
                out.append(logits[:, 1].float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def match_images(self, text: str, vision: np.ndarray) -> np.ndarray:
        """One text against K images' vision tokens (K, N, V) -> ITM logits (K,)."""
        ids, mask = self.text_inputs([text])
        k = len(vision)
        return self.itm_logits(ids.expand(k, -1), mask.expand(k, -1), vision)

    def match_texts(self, vision: np.ndarray, texts: list[str]) -> np.ndarray:
        """One image's vision tokens (N, V) against K texts -> ITM logits (K,); the image
        side is one array shared by all K (a broadcast view, not K copies)."""
        ids, mask = self.text_inputs(texts)
        image = self.torch.as_tensor(np.ascontiguousarray(vision))[None]  # (1, N, V)
        return self.itm_logits(ids, mask, image.expand(len(texts), -1, -1))

    def final_scores(self, logits: np.ndarray, stage1: np.ndarray) -> np.ndarray:
        from xmr.retrieval.fusion import fused_score

        return fused_score(logits, stage1, self.settings.stage1_weight)


def _autocast(torch, device: str):
    if str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def folder_fingerprint(folder: Path) -> str:
    """Names the vision features a folder's model computes: its config, preprocessor and
    weight files (stat-free: their bytes), so a retrained folder never serves old ones."""
    digest = hashlib.sha256()
    folder = Path(folder)
    for name in ("config.json", "preprocessor_config.json"):
        path = folder / name
        digest.update(name.encode())
        digest.update(_canonical_json(path))
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _canonical_json(path: Path) -> bytes:
    try:
        return json.dumps(json.loads(path.read_text()), sort_keys=True).encode()
    except (OSError, ValueError):
        return b""


def hub_fingerprint(repo_id: str) -> str:
    """A cached hub repository's fingerprint: its weights' commit hash in the cache."""
    from huggingface_hub import try_to_load_from_cache

    for name in ("model.safetensors", "pytorch_model.bin", "config.json"):
        path = try_to_load_from_cache(repo_id, name)
        if isinstance(path, str):
            return hashlib.sha256(f"{repo_id}@{Path(path).parent.name}".encode()).hexdigest()[:16]
    return hashlib.sha256(repo_id.encode()).hexdigest()[:16]


def load_matcher(source: MatcherSource, device: str | None = None,
                 settings: MatcherSettings | None = None) -> BlipMatcher:  # fmt: skip
    """Build the matcher `source` names: resolve -> load weights -> move to device."""
    transformers = import_transformers()
    import torch

    from xmr.retrieval.hub_weights import prepare_repo

    if device in (None, "", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if source.kind == "folder":
        from xmr.retrieval.weights import _hub_offline

        _hub_offline()  # a local folder never touches the network
        context, where = None, source.ref
    else:
        context, where = prepare_repo(source.ref, source.name), source.ref
    try:
        if context is not None:
            with context:
                model, tokenizer, processor = _from_pretrained(transformers, where)
        else:
            model, tokenizer, processor = _from_pretrained(transformers, where)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise InvalidModelSpec(
            f"{source.name} is not a BLIP ITM model in Hugging Face layout ({first}); a folder "
            "needs config.json, the weights, tokenizer files and preprocessor_config.json "
            "(save_pretrained of model, tokenizer and image processor)",
            setting="reranker",
        ) from exc
    fingerprint = (
        folder_fingerprint(Path(where)) if source.kind == "folder" else hub_fingerprint(where)
    )
    if settings is None and source.kind == "folder":
        settings = folder_settings(Path(where))
    matcher = BlipMatcher(model, tokenizer, processor, source, fingerprint, device, settings)
    if source.kind == "folder":  # a score calibration kept beside the weights, if any
        from xmr.retrieval.calibration import rerank_fit

        matcher.calibration = rerank_fit(where, matcher.settings.stage1_weight, fingerprint)
    return matcher


def _from_pretrained(transformers, where: str):
    # Its per-load progress bar and config warnings are noise on a search's stderr (a
    # download's bar is huggingface_hub's own and still shows).
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    model = transformers.BlipForImageTextRetrieval.from_pretrained(where)
    tokenizer = transformers.AutoTokenizer.from_pretrained(where)
    processor = transformers.BlipImageProcessor.from_pretrained(where)
    return model, tokenizer, processor
