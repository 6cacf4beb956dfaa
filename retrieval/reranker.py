"""The cross-attention re-ranker: reads a query and each candidate's tokens together.

Dual encoders squeeze a sentence into one vector and behave like bags of words: "a red
circle left of a blue square" and "a blue circle left of a red square" land together.
Here, as in ALBEF/BLIP's matching head, the text tokens attend to each other (binding
"red" to "circle") and to the image's patch tokens (finding a red circle, and where it
is), and a head turns the result into one matching logit per (text, image) pair.

Inputs are the frozen encoder's projected token features from the token store:
  text  (B, L, D) float + mask (B, L) bool      image (B, N, D) float
One model scores both directions: one text against K images, or one image against K texts,
batched in one pass.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xmr.retrieval.calibration import Logistic, rerank_fit, rerank_probability
from xmr.retrieval.fusion import fused_score  # noqa: F401 (the final score, for both families)
from xmr.retrieval.pixel_stem import PixelStem
from xmr.retrieval.reranker_files import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    config_digest,
    folder_fingerprint,
    reranker_folder,
    reranker_name,
)
from xmr.retrieval.token_pooling import pool_patch_tokens, pooled_count, pooled_side

if TYPE_CHECKING:
    from xmr.retrieval.encoder import Encoder, LazyEncoder
    from xmr.retrieval.matching import Scored

Scores = TypeVar("Scores", np.ndarray, torch.Tensor)  # fused_score takes either


IMAGE_STEMS = ("attention", "conv")
# Position signals added to the patch tokens besides the learned per-patch table:
# "sincos": fixed 2-D sin-cos codes of each patch's row and column (half the channels each,
# as in MAE) through a linear map that starts at zero (Reranker.grid_position).
PATCH_POSITIONS = ("none", "sincos")
# The relation term's directions start at zero and the weights move about one learning
# rate per step (AdamW): the gain brings the term to the logit's scale within a few hundred
# steps at a fine-tuning rate, without speeding up the weights it starts from.
RELATION_GAIN = 10.0


@dataclass
class RerankerConfig:
    token_dim: int  # D of the encoder's projected tokens
    text_len: int  # L: the encoder's context length
    image_tokens: int  # N: patch tokens per image
    width: int = 128
    layers: int = 2
    heads: int = 4
    image_layers: int = 1  # image blocks over patches before matching
    # "attention": self-attention blocks; "conv": 3x3 convolutions over the patch grid, whose
    # locality lets a word find "its" object's patches far sooner in training.
    image_stem: str = "attention"
    # Adds each word's best-matching patch score to the logit (see Reranker.align): binding
    # gets a direct path instead of one through cross-attention, values and the CLS token.
    token_alignment: bool = False
    image_pool: int = 1  # average k x k patch tokens first: k^2 fewer tokens to attend to
    # The vision block whose output the image tokens are (Encoder.encode_images; None:
    # the last). An index must store tokens from this block for the re-ranker to read them.
    image_token_layer: int | None = None
    # An explicit row/column signal on the patch tokens, before the image blocks (see
    # PATCH_POSITIONS): where each object is, which relations ("left of") need.
    patch_position: str = "none"
    # Adds a relation term to the logit (see Reranker.relate): where each word looks (its
    # own word-patch attention, which training can supervise: grounding.py), compared
    # between word pairs. Built on token_alignment's place in the model.
    relation_readout: bool = False
    # Side p of the pixel patch each image token also carries (0: none). With p > 0 the
    # tokens are (N, token_dim + 3 p^2): a convolutional stem reads the pixels beside the
    # encoder's features (retrieval/pixel_stem.py), for the shape those features lack.
    pixel_patch: int = 0
    mlp_ratio: float = 4.0
    stage1_weight: float = 0.0  # final score = logit + stage1_weight * stage-1 similarity
    itc_weight: float = 0.0  # the encoder's logit scale: stage 1 as a contrastive logit (BLIP)
    encoder: str = ""  # the encoder spec these tokens come from

    def __post_init__(self):
        if self.image_stem not in IMAGE_STEMS:
            raise ValueError(f"image_stem must be one of {IMAGE_STEMS}, not {self.image_stem!r}")
        if self.patch_position not in PATCH_POSITIONS:
            raise ValueError(
                f"patch_position must be one of {PATCH_POSITIONS}, not {self.patch_position!r}"
            )
        if self.relation_readout and not self.token_alignment:
            raise ValueError("relation_readout is added beside token_alignment: turn both on")
        if self.pixel_patch and self.image_pool != 1:
            raise ValueError("a pixel stem reads every patch: image_pool must be 1")

    @property
    def image_token_dim(self) -> int:
        """The features of one stored image token: the encoder's, then any patch pixels."""
        return self.token_dim + 3 * self.pixel_patch**2


def grid_coordinates(side: int) -> torch.Tensor:
    """(side*side, 2) each patch's (column, row) centre on [-1, 1], row-major: x grows to the
    right, y downwards, as in image coordinates."""
    centres = (torch.arange(side, dtype=torch.float32) + 0.5) / side * 2 - 1  # (S,)
    rows, columns = torch.meshgrid(centres, centres, indexing="ij")  # (S, S) each
    return torch.stack([columns, rows], dim=-1).reshape(side * side, 2)


def grid_sincos(side: int, width: int) -> torch.Tensor:
    """(side*side, width) fixed codes of a square patch grid, row-major: the first half of
    the channels encode the row, the second half the column, each as sin and cos of
    width/4 frequencies (MAE's 2-D sin-cos embedding). Every entry is in [-1, 1]."""
    quarter = width // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / max(1, quarter))
    position = torch.arange(side, dtype=torch.float64)[:, None] * frequencies[None]  # (S, W/4)
    codes = torch.cat([position.sin(), position.cos()], dim=1)  # (S, W/2)
    rows = codes[:, None, :].expand(side, side, -1)  # (S, S, W/2): varies down the grid
    columns = codes[None, :, :].expand(side, side, -1)  # varies across it
    table = torch.cat([rows, columns], dim=-1).reshape(side * side, -1)
    return F.pad(table, (0, width - table.shape[1])).float()  # width not a multiple of 4


class Attention(nn.Module):
    """Multi-head attention through PyTorch's scaled_dot_product_attention."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """context (B, Lk, W) -> keys, values (B, h, Lk, W/h); cacheable per image."""
        b, lk, w = context.shape
        k, v = self.kv(context).view(b, lk, 2, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        return k, v

    def attend(
        self,
        x: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # x (B, Lq, W); k, v (B, h, Lk, W/h); context_mask (B, Lk) bool: True = attend
        b, lq, w = x.shape
        q = self.q(x).view(b, lq, self.heads, w // self.heads).transpose(1, 2)  # (B, h, Lq, W/h)
        mask = None if context_mask is None else context_mask[:, None, None, :]  # (B, 1, 1, Lk)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, Lq, W/h)
        return self.out(y.transpose(1, 2).reshape(b, lq, w))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.attend(x, *self.project_kv(context), context_mask)


class MLP(nn.Sequential):
    def __init__(self, width: int, ratio: float):
        hidden = int(width * ratio)
        super().__init__(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))


class SelfBlock(nn.Module):
    """Pre-norm transformer block: self-attention, MLP."""

    def __init__(self, width: int, heads: int, ratio: float):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(width), Attention(width, heads)
        self.ln2, self.mlp = nn.LayerNorm(width), MLP(width, ratio)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, mask)
        return x + self.mlp(self.ln2(x))


class CrossBlock(nn.Module):
    """Pre-norm: text self-attention, text -> image cross-attention, MLP."""

    def __init__(self, width: int, heads: int, ratio: float):
        super().__init__()
        self.ln1, self.self_attn = nn.LayerNorm(width), Attention(width, heads)
        self.ln2, self.cross_attn = nn.LayerNorm(width), Attention(width, heads)
        self.ln_image = nn.LayerNorm(width)
        self.ln3, self.mlp = nn.LayerNorm(width), MLP(width, ratio)

    def image_kv(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The image side of cross-attention: depends on the image only, so it is computed
        once per image and shared by every text it is matched with."""
        return self.cross_attn.project_kv(self.ln_image(image))

    def forward(
        self, text: torch.Tensor, text_mask: torch.Tensor, image_kv: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        h = self.ln1(text)
        text = text + self.self_attn(h, h, text_mask)  # (B, 1+L, W)
        text = text + self.cross_attn.attend(self.ln2(text), *image_kv)
        return text + self.mlp(self.ln3(text))


class ConvBlock(nn.Module):
    """Pre-norm local mixing over the patch grid: 3x3 conv, GELU, 1x1 conv, then MLP."""

    def __init__(self, width: int, ratio: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.mix = nn.Conv2d(width, width, 1)
        self.ln2, self.mlp = nn.LayerNorm(width), MLP(width, ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape  # (B, N, W), N a square grid
        side = int(round(int(n) ** 0.5))  # int(n): a constant when traced for ONNX export
        grid = self.ln1(x).transpose(1, 2).reshape(b, w, side, side)  # (B, W, S, S)
        x = x + self.mix(F.gelu(self.conv(grid))).flatten(2).transpose(1, 2)
        return x + self.mlp(self.ln2(x))


class Reranker(nn.Module):
    patch_xy: torch.Tensor  # (N', 2) buffer: each patch's centre, with relation_readout

    def __init__(self, config: RerankerConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.text_in = nn.Linear(config.token_dim, w)
        self.image_in = nn.Linear(config.token_dim, w)
        # Positions matter: word order binds attributes, patch position gives "left of".
        self.text_pos = nn.Parameter(torch.zeros(1, 1 + config.text_len, w))
        self.image_pos = nn.Parameter(
            torch.zeros(1, pooled_count(config.image_tokens, config.image_pool), w)
        )
        self.cls = nn.Parameter(torch.zeros(1, 1, w))
        if config.patch_position == "sincos":
            side = pooled_side(config.image_tokens, config.image_pool)
            # Derived from the config, so not saved with the weights.
            self.register_buffer("grid_codes", grid_sincos(side, w)[None], persistent=False)
            # Zero at the start: a re-ranker trained without it (--init-from) scores exactly
            # as before until training moves it; the fixed codes still give it a gradient.
            self.grid_position = nn.Linear(w, w, bias=False)
            nn.init.zeros_(self.grid_position.weight)
        if config.pixel_patch:
            self.pixel_stem = PixelStem(config.pixel_patch, w)
        nn.init.normal_(self.text_pos, std=0.02)
        nn.init.normal_(self.image_pos, std=0.02)
        nn.init.normal_(self.cls, std=0.02)
        self.image_blocks = nn.ModuleList(
            SelfBlock(w, config.heads, config.mlp_ratio)
            if config.image_stem == "attention"
            else ConvBlock(w, config.mlp_ratio)
            for _ in range(config.image_layers)
        )
        self.blocks = nn.ModuleList(
            CrossBlock(w, config.heads, config.mlp_ratio) for _ in range(config.layers)
        )
        self.ln_out = nn.LayerNorm(w)
        self.head = nn.Linear(w, 1)
        # Zero head: an untrained re-ranker adds nothing to stage 1's score, so training
        # starts from the dual encoder's ranking instead of from noise.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        if config.token_alignment:
            self.align_ln_text, self.align_query = nn.LayerNorm(w), nn.Linear(w, w)
            self.align_ln_image, self.align_key = nn.LayerNorm(w), nn.Linear(w, w)
            self.align_gate = nn.Linear(w, 1)  # how much each word's match counts
            # 1, not 0 like the head: at 0 the query and key projections get no gradient.
            self.align_scale = nn.Parameter(torch.tensor(1.0))
        if config.relation_readout:
            side = pooled_side(config.image_tokens, config.image_pool)
            self.register_buffer("patch_xy", grid_coordinates(side), persistent=False)
            # Where each word looks: its own attention over the patches.
            self.relation_ln_image, self.relation_key = nn.LayerNorm(w), nn.Linear(w, w)
            self.relation_ln, self.relation_query = nn.LayerNorm(w), nn.Linear(w, w)
            # Each word as a relation: which words are its subject and its object
            # (queries), against each word as an operand (keys); and whether it is one.
            self.relation_roles = nn.Linear(w, 3 * w)
            self.relation_gate = nn.Linear(w, 1)
            # The direction (x, y) a relation word states. Zero at the start: the relation
            # term is 0, so a re-ranker trained without it (--init-from) scores exactly as
            # before until training moves it.
            self.relation_direction = nn.Linear(w, 2)
            nn.init.zeros_(self.relation_direction.weight)
            nn.init.zeros_(self.relation_direction.bias)

    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, N, D) tokens -> (B, N', W): the image stem's output, the costly part of
        the image side that depends on the image alone (an index can keep it, see
        feature_cache.py, so text->image search skips it)."""
        if image.shape[1] == self.config.image_tokens:  # (a token store may hold them pooled)
            image = pool_patch_tokens(image, self.config.image_pool)  # (B, N', D)
        d = self.config.token_dim
        img = self.image_in(image[..., :d]) + self.image_pos  # (B, N', W)
        if self.config.pixel_patch:
            if image.shape[-1] != self.config.image_token_dim:
                raise ValueError(
                    f"image tokens of width {image.shape[-1]} lack the patch pixels this "
                    f"re-ranker's pixel stem reads (width {self.config.image_token_dim}); "
                    "embed them with with_pixels=True"
                )
            img = img + self.pixel_stem(image[..., d:])  # (B, N, 3 p^2) pixels -> (B, N, W)
        if self.config.patch_position == "sincos":
            img = img + self.grid_position(self.grid_codes)
        for block in self.image_blocks:
            img = block(img)
        return img

    def encode_images(
        self, image: torch.Tensor | None = None, features: torch.Tensor | None = None
    ) -> list[tuple[torch.Tensor, ...]]:
        """image (B, N, D), or its image_features (B, N', W) -> image states: per cross
        block (keys, values), each (B, h, N', W/h), then (alignment keys (B, N', W),) when
        token_alignment is on, then (relation keys (B, N', W),) when relation_readout is.
        Every state is indexed by image along dim 0 (take_states)."""
        img = features
        if img is None:
            assert image is not None  # image tokens or their features
            img = self.image_features(image)
        states: list[tuple[torch.Tensor, ...]]
        states = [cast(CrossBlock, block).image_kv(img) for block in self.blocks]

        if self.config.token_alignment:
            states.append((self.align_key(self.align_ln_image(img)),))  # (B, N', W)
        if self.config.relation_readout:
            states.append((self.relation_key(self.relation_ln_image(img)),))  # (B, N', W)
        return states

    def match(
        self,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        image_kv: Sequence[tuple[torch.Tensor, ...]],
    ) -> torch.Tensor:
        """text (B, L, D), text_mask (B, L) bool, image states from encode_images -> (B,)."""
        x = self.text_states(text, text_mask, image_kv)  # (B, 1+L, W)
        logits = self.head(self.ln_out(x[:, 0])).squeeze(-1)  # (B,)
        if self.config.token_alignment:
            words = x[:, 1:]  # (B, L, W)
            alignment_keys = image_kv[len(self.blocks)][0]
            logits = logits + self.align(words, text_mask, alignment_keys)
            if self.config.relation_readout:
                looks = self.word_looks(words, image_kv)
                logits = logits + self.relate(words, text_mask, looks)
        return logits

    def text_states(
        self,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        image_kv: Sequence[tuple[torch.Tensor, ...]],
    ) -> torch.Tensor:
        """text (B, L, D), text_mask (B, L) bool -> (B, 1+L, W): the [CLS] state, then each
        word's, after the cross blocks."""
        b, length, _ = text.shape
        x = self.text_in(text) + self.text_pos[:, 1 : 1 + length]  # (B, L, W)
        x = torch.cat([self.cls.expand(b, -1, -1) + self.text_pos[:, :1], x], dim=1)
        mask = torch.cat([text_mask.new_ones(b, 1), text_mask], dim=1)  # (B, 1+L)
        for block, kv in zip(self.blocks, image_kv[: len(self.blocks)], strict=True):
            x = block(x, mask, kv)
        return x

    def word_looks(
        self, words: torch.Tensor, image_kv: Sequence[tuple[torch.Tensor, ...]]
    ) -> torch.Tensor:
        """words (B, L, W) states after the cross blocks (text_states), image states from
        encode_images -> (B, L, N') logits of where each word looks: what the relation term
        compares, and what grounding (training/reranker_training/grounding.py) teaches."""
        keys = image_kv[len(self.blocks) + 1][0]  # (B, N', W): the relation keys
        query = self.relation_query(self.relation_ln(words))  # (B, L, W)
        return query @ keys.transpose(1, 2) / query.shape[-1] ** 0.5

    def align(
        self, words: torch.Tensor, text_mask: torch.Tensor, keys: torch.Tensor
    ) -> torch.Tensor:
        """Token-wise late interaction (as in FILIP/ColBERT), on the re-ranker's own states.

        words (B, L, W) text states after the cross blocks; keys (B, N', W) per patch.
        Each word scores its best-matching patch; a learned gate weighs the words. The max
        makes binding cheap to learn: "red circle" scores high only where one patch is both.
        """
        query = self.align_query(self.align_ln_text(words))  # (B, L, W)
        sims = query @ keys.transpose(1, 2) / query.shape[-1] ** 0.5  # (B, L, N')
        gate = self.align_gate(words).squeeze(-1).masked_fill(~text_mask, float("-inf"))
        return self.align_scale * (gate.softmax(-1) * sims.amax(-1)).sum(-1)  # (B,)

    def relate(
        self, words: torch.Tensor, text_mask: torch.Tensor, looks: torch.Tensor
    ) -> torch.Tensor:
        """The relation term: for each word read as a relation ("left"), where its subject
        is against where its object is, along the direction it states.

        Each word's place is the mean patch centre under the softmax of its looks
        (B, L, N', from word_looks): (B, L, 2). A word r points at its subject and its
        object (relation_roles_of: distributions over the words) and states a direction
        d_r; the term is sum_r gate_r * d_r . (subject place_r - object place_r). It is
        linear in the operands' displacement, so exchanging their places ("the circle
        left of the square" read against a square left of a circle) negates it.
        -> (B,) logit term.
        """
        place = looks.softmax(-1) @ self.patch_xy  # (B, L, 2)
        gate, subject, obj = self.relation_roles_of(words, text_mask)
        apart = (subject - obj) @ place  # (B, L, 2): subject place - object place, per word
        direction = RELATION_GAIN * self.relation_direction(self.relation_ln(words))  # (B, L, 2)
        return (gate * (direction * apart).sum(-1)).sum(-1)  # (B,)

    def relation_roles_of(
        self, words: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """words (B, L, W), text_mask (B, L) -> the gate (B, L): how much each word counts
        as a relation (a distribution over the words); and for each word r, its subject
        and its object (B, L, L), distributions over the words j. What relation-pair
        training teaches (training/reranker_training/relation_pairs.py)."""
        h = self.relation_ln(words)
        subject_query, object_query, key = self.relation_roles(h).chunk(3, dim=-1)
        scale = key.shape[-1] ** 0.5
        padding = ~text_mask[:, None, :]  # (B, 1, L): padding is nobody's operand
        subject = (subject_query @ key.transpose(1, 2) / scale).masked_fill(padding, -torch.inf)
        obj = (object_query @ key.transpose(1, 2) / scale).masked_fill(padding, -torch.inf)
        gate = self.relation_gate(h).squeeze(-1).masked_fill(~text_mask, -torch.inf)
        return gate.softmax(-1), subject.softmax(-1), obj.softmax(-1)  # (B, L), 2 x (B, L, L)

    def forward(
        self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor
    ) -> torch.Tensor:
        """text (B, L, D), text_mask (B, L) bool, image (B, N, D) -> logits (B,)."""
        return self.match(text, text_mask, self.encode_images(image))

    def neutral_parameters(self) -> set[str]:
        """Weights that start at a value leaving the logits unchanged: a re-ranker saved
        without them (trained before the option existed, or with it off) loads into this
        model with these at their initial value and scores as it did (start_weights)."""
        neutral = {"grid_position.weight"} if self.config.patch_position != "none" else set()
        return neutral | self.relation_parameters() | self.pixel_parameters()

    def pixel_parameters(self) -> set[str]:
        """The pixel stem's weights (pixel_patch; none without it)."""
        return {n for n, _ in self.named_parameters() if n.startswith("pixel_stem.")}

    def relation_parameters(self) -> set[str]:
        """The relation term's weights (relation_readout; none without it)."""
        if not self.config.relation_readout:
            return set()
        return {n for n, _ in self.named_parameters() if n.startswith("relation_")}


def start_weights(model: Reranker, state: dict[str, torch.Tensor]) -> list[str]:
    """Load `state` into `model`; weights the state lacks may only be the model's
    neutral_parameters, which keep their initial value. -> the names kept at that value.
    Raises ValueError for any other missing or unexpected weight."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    wrong = sorted(set(missing) - model.neutral_parameters()) + sorted(unexpected)
    if wrong:
        raise ValueError(f"weights do not fit this re-ranker: {', '.join(wrong)}")
    return sorted(missing)


def take_states(
    states: Sequence[tuple[torch.Tensor, ...]], rows: torch.Tensor
) -> list[tuple[torch.Tensor, ...]]:
    """The image states (from encode_images) of the images at `rows`, in that order."""
    return [tuple(t[rows] for t in state) for state in states]


def text_mask(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """(B,) valid token counts -> (B, length) bool mask."""
    return torch.arange(length, device=lengths.device)[None, :] < lengths[:, None]


class RerankerRuntime:
    """A trained re-ranker ready for search: device, bf16 autocast on CUDA, batching."""

    def __init__(
        self, model: Reranker, name: str, device: str = "cpu", fingerprint: str | None = None
    ):
        self.model = model.to(device).eval()
        self.name = name
        self.device = device
        self.config = model.config
        if fingerprint is not None:  # loaded from a folder: the hash of its files
            self.__dict__["fingerprint"] = fingerprint
        # Maps a final score to the probability of a match (calibration.py); None: the
        # documented default. load_reranker sets the fit kept in the re-ranker's folder.
        self.calibration: Logistic | None = None

    @functools.cached_property
    def fingerprint(self) -> str:
        """Names the image features this re-ranker computes (feature_cache.py). Hashes every
        weight, so only when asked (not for training validation, or a search of an index
        that keeps no features)."""
        return fingerprint(self.model)

    @property
    def feature_shape(self) -> tuple[int, int]:
        """(N', W): one image's image_features."""
        c = self.config
        return pooled_count(c.image_tokens, c.image_pool), c.width

    @torch.inference_mode()
    def image_features(self, image_tokens: np.ndarray, batch: int = 256) -> np.ndarray:
        """(M, N, D) tokens -> (M, N', W) float16 image_features, for an index to keep."""
        parts = []
        for start in range(0, len(image_tokens), batch):
            image = torch.as_tensor(image_tokens[start : start + batch], device=self.device)
            with autocast(self.device):
                features = self.model.image_features(image.float())
            parts.append(features.to(torch.float16).cpu().numpy())
        return np.concatenate(parts) if parts else np.zeros((0, *self.feature_shape), np.float16)

    @torch.inference_mode()
    def image_states(
        self,
        image_tokens: np.ndarray | None = None,
        batch: int = 256,
        features: np.ndarray | None = None,
    ) -> list[tuple[torch.Tensor, ...]]:
        """(M, N, D) numpy tokens, or their (M, N', W) image_features -> image states (see
        Reranker.encode_images) of M images, once."""
        given = image_tokens if features is None else features
        assert given is not None  # image tokens or their features
        parts = []
        for start in range(0, len(given), batch):
            chunk = torch.as_tensor(given[start : start + batch], device=self.device).float()
            with autocast(self.device):
                if features is None:
                    parts.append(self.model.encode_images(chunk))
                else:
                    parts.append(self.model.encode_images(features=chunk))
        return [
            tuple(torch.cat([p[s][i] for p in parts]) for i in range(len(parts[0][s])))
            for s in range(len(parts[0]))
        ]

    @torch.inference_mode()
    def score_pairs(
        self,
        text_tokens: np.ndarray,
        text_lengths: np.ndarray,
        states: Sequence[tuple[torch.Tensor, ...]],
        image_index: np.ndarray,
        batch: int = 512,
    ) -> np.ndarray:
        """Logits of P pairs: text_tokens (P, L, D), text_lengths (P,), image_index (P,) into
        `states` (from image_states). Texts are trimmed to the batch's longest real length."""
        out = []
        index = torch.as_tensor(np.asarray(image_index), device=self.device)
        for start in range(0, len(text_tokens), batch):
            lengths = torch.as_tensor(text_lengths[start : start + batch], device=self.device)
            longest = int(lengths.max())  # attention cost follows the real length
            text = torch.as_tensor(
                text_tokens[start : start + batch, :longest], device=self.device
            ).float()
            rows = index[start : start + batch]
            with autocast(self.device):
                logits = self.model.match(
                    text, text_mask(lengths, longest), take_states(states, rows)
                )
            out.append(logits.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def final_scores(self, logits: np.ndarray, stage1: np.ndarray) -> np.ndarray:
        return fused_score(logits, stage1, self.config.stage1_weight)

    def probability(self, final: np.ndarray) -> np.ndarray:
        """Final (fused) scores -> the shown score, a calibrated probability of a match."""
        return rerank_probability(final, self.calibration)

    # -- the searcher's interface (matching.py) -------------------------------------------
    family = "native"

    # query (searcher.Query), collection and library (library.Collection, Library) are Any:
    # library.py imports this module (under TYPE_CHECKING, which tests/test_layering.py
    # counts), and searcher.py imports library.py, so naming them would close a circle.
    def reads(self, query: Any, collection: Any) -> bool:
        """The encoder's tokens of both sides: the query's and the store's."""
        return collection.tokens is not None and query.tokens is not None

    def candidate_inputs(
        self, library: Any, query: Any, collection: Any, ids: np.ndarray
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """See matching.native_candidate_inputs (shared with the ONNX re-ranker)."""
        from xmr.retrieval.matching import native_candidate_inputs

        return native_candidate_inputs(self, library, query, collection, ids)

    # inputs: candidate_inputs' pair, whose None follows query.kind (text: tokens or kept
    # features; image: tokens and lengths, both set), which its type cannot say: Any.
    def score(self, query: Any, stage1: np.ndarray, inputs: tuple[Any, Any]) -> Scored:
        from xmr.retrieval.matching import Scored

        tokens, extra = inputs
        if query.kind == "text":
            final = self.rerank_images(query.tokens, query.length, tokens, stage1, features=extra)
        else:
            final = self.rerank_texts(query.tokens, tokens, extra, stage1)
        logits = final - self.config.stage1_weight * stage1  # fused_score, undone
        return Scored(final, logits=logits)

    def rerank_images(
        self,
        text_tokens: np.ndarray,
        text_length: int,
        image_tokens: np.ndarray | None,
        stage1: np.ndarray,
        features: np.ndarray | None = None,
    ) -> np.ndarray:
        """One text (L, D) against K images (K, N, D) -> final scores (K,). `features`
        (K, N', W): the images' image_features kept by the index, used instead of tokens."""
        k = len(stage1)
        states = self.image_states(image_tokens, features=features)
        text = np.repeat(text_tokens[None], k, axis=0)
        logits = self.score_pairs(text, np.full(k, text_length), states, np.arange(k))
        return self.final_scores(logits, stage1)

    def rerank_texts(
        self,
        image_tokens: np.ndarray,
        text_tokens: np.ndarray,
        text_lengths: np.ndarray,
        stage1: np.ndarray,
    ) -> np.ndarray:
        """One image (N, D) against K texts (K, L, D) -> final scores (K,)."""
        states = self.image_states(image_tokens[None])  # computed once, shared by K texts
        logits = self.score_pairs(
            text_tokens, text_lengths, states, np.zeros(len(text_tokens), dtype=np.int64)
        )
        return self.final_scores(logits, stage1)


def fingerprint(model: Reranker) -> str:
    """Identifies an in-memory re-ranker by its config and weights: an index keeps
    image_features only for the re-ranker with this fingerprint, and any other recomputes
    them. (One loaded from a folder goes by reranker_files.folder_fingerprint.) The
    stage-1 weight is left out: calibration changes it, not the features."""
    digest = config_digest(asdict(model.config))
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def autocast(device: str):
    """bf16 autocast on CUDA (tensor cores); full precision on the CPU."""
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def save_reranker(model: Reranker, folder: Path, dtype: torch.dtype | None = None) -> None:
    """Config JSON + safetensors. `dtype=torch.float16` halves the file (to ship or copy
    it); the model itself is left as it is, and load_reranker reads the weights back as
    float32."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            k: v.detach()
            .to("cpu", dtype if dtype and v.is_floating_point() else v.dtype)
            .contiguous()
            for k, v in model.state_dict().items()
        },
        str(folder / WEIGHTS_FILE),
    )
    (folder / CONFIG_FILE).write_text(json.dumps(asdict(model.config), indent=2))


def load_reranker(
    folder: Path, encoder: Encoder | LazyEncoder | None = None, device: str | None = None
) -> RerankerRuntime:
    from safetensors.torch import load_file

    from xmr.retrieval.errors import InvalidModelSpec

    folder = Path(folder)
    try:
        config = RerankerConfig(**json.loads((folder / CONFIG_FILE).read_text()))
        state = load_file(str(folder / WEIGHTS_FILE))
    except (OSError, TypeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise InvalidModelSpec(f"{folder} is not an xmr re-ranker ({exc})") from exc
    shape = getattr(encoder, "image_token_shape", None)  # None: no encoder, or no image tower
    if encoder is not None and shape is not None:
        expected = (config.image_tokens, config.token_dim)
        if tuple(shape) != expected:
            raise InvalidModelSpec(
                f"re-ranker {folder} reads tokens of shape {expected}, but the encoder "
                f"{encoder.spec.canonical} gives {tuple(shape)}"
            )
    model = Reranker(config)
    model.load_state_dict(state)
    if device in (None, "", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    files = folder_fingerprint(folder)
    runtime = RerankerRuntime(model, reranker_name(folder), device, files)
    runtime.calibration = rerank_fit(folder, config.stage1_weight, files)
    return runtime


def resolve_reranker(choice: str | None, encoder: Encoder | LazyEncoder, device: str | None = None):
    """The re-ranker `choice` names: xmr's own (a RerankerRuntime), or a pretrained
    matcher (blip_itm.BlipMatcher, for `xmr bench`); None when there is none to use;
    raises when an explicit one is unusable."""
    from xmr.retrieval.matcher_names import matcher_source

    source = matcher_source(choice)
    if source is not None:
        from xmr.retrieval.blip_itm import load_matcher

        return load_matcher(source, device)
    folder = reranker_folder(choice, encoder)
    if folder is None:
        return None
    return load_reranker(folder, encoder, device)
