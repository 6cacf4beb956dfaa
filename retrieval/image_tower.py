"""The image tower as indexing runs it: a batch of preprocessed pixels in, index entries out.

`Encoder.encode_images` hands every batch to `encoder.image_tower`, any object with

    encode(pixels, token_layer) -> Encoded
        pixels       (B, 3, H, W) float32, a torch tensor from the model's `preprocess`
        token_layer  the vision block whose output the kept tokens are (None: the last)
        returns      vectors (B, D) float32 unit-norm; tokens (B, N, D) float16 or None

so another runtime (ONNX Runtime, a compiled graph) replaces PyTorch by assignment:

    encoder.image_tower = OtherTower(...)

It must give the same vectors as `TorchImageTower` (cosine >= 0.9999 for every image,
tests/test_image_tower.py checks the rule on real pictures), or one index would hold two
different answers for one picture. `TorchImageTower` is the reference: open_clip's
`forward_intermediates` in inference mode.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch

    from xmr.retrieval.encoded import Encoded

SAME_VECTORS_COSINE = 0.9999  # the least cosine another runtime may differ from PyTorch by


class ImageTower(Protocol):
    def encode(self, pixels: torch.Tensor, token_layer: int | None = None) -> Encoded: ...


class TorchImageTower:
    """An open_clip model's vision tower in PyTorch (the reference runtime)."""

    def __init__(self, model: Any, device: str, block_index, has_tokens: bool):
        import torch

        self._torch = torch
        self.visual = model.visual
        self.device = device
        self._block_index = block_index  # token_layer -> 0-based block (raises InputError)
        self._has_tokens = has_tokens  # a ViT with a patch grid (see encoder._image_token_shape)

    def encode(self, pixels: torch.Tensor, token_layer: int | None = None) -> Encoded:
        from xmr.retrieval.encoded import Encoded

        torch = self._torch
        visual = self.visual
        cuda = self.device.startswith("cuda")
        autocast = torch.autocast("cuda", torch.bfloat16) if cuda else nullcontext()
        with torch.inference_mode(), autocast:
            x = pixels.to(self.device, non_blocking=True)
            if not self._has_tokens:  # no patch grid (ResNet, timm towers)
                pooled, tokens = visual(x), None
            else:
                block = self._block_index(token_layer)
                out = visual.forward_intermediates(
                    x, indices=[block], normalize_intermediates=True, output_fmt="NLC"
                )
                pooled = out["image_features"]  # (B, D)
                tokens = out["image_intermediates"][0]  # (B, N, width), after ln_post
                if getattr(visual, "proj", None) is not None:
                    tokens = tokens @ visual.proj  # (B, N, D)
            vectors = torch.nn.functional.normalize(pooled.float(), dim=-1)
        return Encoded(
            vectors=vectors.cpu().numpy().astype(np.float32),
            tokens=None if tokens is None else tokens.to(torch.float16).cpu().numpy(),
            lengths=None,
        )
