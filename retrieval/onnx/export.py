"""Export the query-time models to ONNX with `torch.onnx.export`, and check each export
against the PyTorch model before keeping it.

  text.onnx          ids (B, ctx) int64 -> vectors (B, D) unit norm, tokens (B, ctx, D)
  image-L<k>.onnx    pixels (B, 3, H, W) -> vectors (B, D) unit norm, tokens (B, N, D)
                     (tokens of vision block k, "last" for the last, as the index keeps)
  stem.onnx          a native re-ranker's image stem: tokens (B, N, D) -> features (B, N', W)
  match.onnx         text (B, L, D), lengths (B,), features (B, N', W) -> logits (B,)

The outputs are what encoder.py / reranker.py compute (tokens projected, vectors
normalised); the fused score is computed from the logits by fusion.py, as on the PyTorch
path. Batch and text length are dynamic axes. An export is kept only when ONNX Runtime
reproduces the PyTorch outputs on sample inputs (cosine >= 0.99999), and, for the towers,
only when tokenizer.py and preprocess.py give open_clip's ids and pixels: otherwise
ExportFailed, and queries stay on PyTorch.

The TorchScript-based exporter (`dynamo=False`) is used: it exports these models
correctly in a few seconds, where the dynamo exporter needs onnxscript and takes longer.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xmr.retrieval.onnx import store
from xmr.retrieval.onnx.store import image_file

if TYPE_CHECKING:
    from xmr.retrieval.encoder import Encoder
    from xmr.retrieval.reranker import RerankerRuntime

OPSET = 17
MIN_COSINE = 0.99999
TOKENIZER_PROBES = (
    "a red circle left of a blue square",
    "Two DOGS, running; on the beach!!",
    "café naïve Zürich 東京 🐶 don't &amp; “quotes”",
    "photo " * 90,  # longer than any context: cut, and ended with the end token
)


class ExportFailed(Exception):
    """The model cannot be exported, or its export does not reproduce it."""


def export_towers(encoder: Encoder, folder: Path, token_layer: int | None = None) -> None:
    """Export the text tower and the image tower (tokens of `token_layer`) of `encoder`
    into `folder` (store.model_folder of its spec)."""
    from xmr.retrieval.onnx.preprocess import UnsupportedPreprocess, describe

    folder = Path(folder)
    tokenizer = _check_tokenizer(encoder)
    common = {"spec": encoder.spec.canonical, "dim": encoder.dim}
    if store.present(folder, store.read_meta(folder), "text.onnx") is None:
        _export_text(encoder, folder / "text.onnx")
        info = {"context_length": tokenizer.context_length}
        store.add_to_meta(folder, "text.onnx", info, common)
    name = image_file(token_layer)
    if store.present(folder, store.read_meta(folder), name) is None:
        try:
            preprocess = describe(encoder.preprocess)
        except UnsupportedPreprocess as exc:
            raise ExportFailed(f"its image preprocessing is not reproduced here ({exc})") from exc
        _check_preprocess(encoder, preprocess)
        _export_image(encoder, folder / name, token_layer)
        info = {"preprocess": preprocess.as_dict(), "tokens": encoder.image_token_shape}
        store.add_to_meta(folder, name, info, common)


def export_reranker(runtime: RerankerRuntime, folder: Path) -> None:
    """Export a native re-ranker's image stem and its matching pass into `folder`."""
    folder = Path(folder)
    model = copy.deepcopy(runtime.model).float().cpu().eval()  # the runtime may be shared
    config = runtime.config
    n = config.image_tokens
    feats = runtime.feature_shape  # (N', W)
    common = {"name": runtime.name, "fingerprint": runtime.fingerprint}
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, n, config.token_dim, generator=gen)
    if store.present(folder, store.read_meta(folder), "stem.onnx") is None:
        stem = StemGraph(model)
        _export(stem, (tokens,), folder / "stem.onnx", ["tokens"], ["features"],
                {"tokens": {0: "batch"}, "features": {0: "batch"}})  # fmt: skip
        _check(stem, (tokens,), folder / "stem.onnx")
        store.add_to_meta(folder, "stem.onnx", {"features": list(feats)}, common)
    if store.present(folder, store.read_meta(folder), "match.onnx") is None:
        match = MatchGraph(model)
        text = torch.randn(3, config.text_len, config.token_dim, generator=gen)
        lengths = torch.tensor([config.text_len, 5, 1])
        features = torch.randn(3, *feats, generator=gen)
        _export(match, (text, lengths, features), folder / "match.onnx",
                ["text", "lengths", "features"], ["logits"],
                {"text": {0: "batch", 1: "length"}, "lengths": {0: "batch"},
                 "features": {0: "batch"}, "logits": {0: "batch"}})  # fmt: skip
        _check(match, (text[:, :7], torch.tensor([7, 5, 1]), features), folder / "match.onnx")
        store.add_to_meta(folder, "match.onnx", {"text_len": config.text_len}, common)


# -- the graphs: what each export computes, as the PyTorch path computes it -------------
class TextGraph(nn.Module):
    def __init__(self, encoder: Encoder):
        super().__init__()
        self.text = encoder._text  # noqa: SLF001 - the tower the encoder encodes with

    def forward(self, ids):  # (B, ctx) int64
        from xmr.retrieval.encoder import _text_forward

        pooled, tokens = _text_forward(self.text, ids)  # (B, D), (B, ctx, D)
        return F.normalize(pooled.float(), dim=-1), tokens.float()


class ImageGraph(nn.Module):
    def __init__(self, encoder: Encoder, token_layer: int | None):
        super().__init__()
        self.visual = encoder.model.visual
        self.has_tokens = encoder.image_token_shape is not None
        self.block = encoder._block_index(token_layer) if self.has_tokens else 0  # noqa: SLF001

    def forward(self, pixels):  # (B, 3, H, W)
        if not self.has_tokens:  # no patch grid: vectors, and an empty token output
            pooled = self.visual(pixels)
            return F.normalize(pooled.float(), dim=-1), pooled[:, None, :0].float()
        out = self.visual.forward_intermediates(
            pixels, indices=[self.block], normalize_intermediates=True, output_fmt="NLC"
        )
        tokens = out["image_intermediates"][0]  # (B, N, width), after ln_post
        if getattr(self.visual, "proj", None) is not None:
            tokens = tokens @ self.visual.proj  # (B, N, D)
        return F.normalize(out["image_features"].float(), dim=-1), tokens.float()


class StemGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens):  # (B, N, D) -> (B, N', W)
        return self.model.image_features(tokens)


class MatchGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, text, lengths, features):  # (B, L, D), (B,), (B, N', W) -> (B,)
        mask = torch.arange(text.shape[1])[None, :] < lengths[:, None]  # (B, L)
        return self.model.match(text, mask, self.model.encode_images(features=features))


# -- export, check, keep -----------------------------------------------------------------
def _export_text(encoder: Encoder, path: Path) -> None:
    graph = TextGraph(encoder).eval()
    ids = encoder.tokenizer(list(TOKENIZER_PROBES[:3]))  # (3, ctx)
    _export(graph, (ids,), path, ["ids"], ["vectors", "tokens"],
            {"ids": {0: "batch"}, "vectors": {0: "batch"}, "tokens": {0: "batch"}})  # fmt: skip
    _check(graph, (ids[:2],), path)


def _export_image(encoder: Encoder, path: Path, token_layer: int | None) -> None:
    graph = ImageGraph(encoder, token_layer).eval()
    h, w = encoder.image_size
    pixels = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    _export(graph, (pixels,), path, ["pixels"], ["vectors", "tokens"],
            {"pixels": {0: "batch"}, "vectors": {0: "batch"}, "tokens": {0: "batch"}})  # fmt: skip
    _check(graph, (torch.cat([pixels, -pixels[:1]]),), path)


def _export(module, args: tuple, path: Path, inputs, outputs, axes) -> None:
    """torch.onnx.export into a temporary file beside `path`, fsynced, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        # MultiheadAttention's fused inference kernel has no ONNX form; its plain ops do.
        torch.backends.mha.set_fastpath_enabled(False)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, args, tmp, input_names=inputs, output_names=outputs,
                dynamic_axes=axes, opset_version=OPSET, dynamo=False,
            )  # fmt: skip
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ExportFailed(f"torch.onnx.export of {path.name} failed: {exc}") from exc
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _check(module, args: tuple, path: Path) -> None:
    """ONNX Runtime's outputs on `args` against the module's; removes the file if they
    differ (then ExportFailed)."""
    import onnxruntime as ort

    with torch.no_grad():
        expected = module(*args)
    expected = expected if isinstance(expected, tuple) else (expected,)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, {n: a.numpy() for n, a in zip(names, args, strict=True)})
    for want, have in zip(expected, got, strict=True):
        want = want.float().numpy().reshape(len(have), -1)
        have = have.reshape(len(have), -1)
        if want.size == 0:
            continue
        cosine = _cosine(want, have)
        if want.shape != have.shape or cosine < MIN_COSINE:
            path.unlink(missing_ok=True)
            raise ExportFailed(f"{path.name} does not reproduce the model (cosine {cosine:.6f})")


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest row-wise cosine; exact zeros on both sides count as equal."""
    if a.shape[1] == 1:  # scalars (logits): compare as one vector per batch
        a, b = a.T, b.T
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    same = np.where(den == 0, np.abs(a - b).max(1) == 0, num / np.maximum(den, 1e-30))
    return float(np.min(same))


def _check_tokenizer(encoder: Encoder):
    from xmr.retrieval.onnx.tokenizer import ClipTokenizer, TokenizerUnavailable

    try:
        ours = ClipTokenizer(encoder.context_length)
    except TokenizerUnavailable as exc:
        raise ExportFailed(str(exc)) from exc
    probes = list(TOKENIZER_PROBES)
    theirs = encoder.tokenizer(probes)
    theirs = theirs.numpy() if hasattr(theirs, "numpy") else np.asarray(theirs)
    if theirs.shape != (len(probes), ours.context_length) or not (ours(probes) == theirs).all():
        raise ExportFailed("its tokenizer is not CLIP's byte-pair tokenizer")
    return ours


def _check_preprocess(encoder: Encoder, preprocess) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for size in ((97, 61), (40, 120), encoder.image_size[::-1]):
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        want = encoder.preprocess(image).numpy()
        have = preprocess(image)
        if want.shape != have.shape or float(np.abs(want - have).max()) > 1e-4:
            raise ExportFailed("its image preprocessing is not reproduced here")
