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

The TorchScript-based exporter (`dynamo=False`) is used: it exports these models in
seconds (xmr-tiny's towers and re-ranker in about 10 s, ViT-B-32's towers in about 40 s
on two busy cores, checks included), and every export is checked against PyTorch. The
dynamo exporter (`dynamo=True`, which needs onnxscript) was not tried here.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
        trim = _export_text(encoder, folder / "text.onnx")
        info = {"context_length": tokenizer.context_length, "trim": trim}
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
    tokens = torch.randn(3, n, config.image_token_dim, generator=gen)
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
    """ids (B, L) -> vectors (B, D), tokens (B, L, D). With `trim`, L may be shorter than
    the context: a causal text tower pooled at its end token computes the same for the
    first L positions whatever follows them, so a query runs only as far as its longest
    text (a 7-token query in a 77-token context costs a tenth)."""

    def __init__(self, encoder: Encoder, trim: bool):
        super().__init__()
        self.text = encoder._text  # noqa: SLF001 - the tower the encoder encodes with
        self.trim = trim

    def forward(self, ids):  # (B, L) int64
        from xmr.retrieval.encoder import _project, _text_forward

        if not self.trim:
            pooled, tokens = _text_forward(self.text, ids)  # (B, D), (B, ctx, D)
            return F.normalize(pooled.float(), dim=-1), tokens.float()
        from open_clip.transformer import text_global_pool

        text: Any = self.text  # an open_clip CLIP (untyped): its text parts are read by name
        length = ids.shape[1]
        cast = text.transformer.get_cast_dtype()
        x = text.token_embedding(ids).to(cast) + text.positional_embedding[:length].to(cast)
        x = text.ln_final(text.transformer(x, attn_mask=text.attn_mask[:length, :length]))
        pooled = text_global_pool(x, ids, text.text_pool_type)  # (B, width)
        pooled = _project(pooled, text.text_projection)
        tokens = _project(x, text.text_projection)  # (B, L, D)
        return F.normalize(pooled.float(), dim=-1), tokens.float()


def trimmable(encoder: Encoder) -> bool:
    """An inline CLIP text tower with a causal mask, pooled at the end token."""
    text = encoder._text  # noqa: SLF001
    mask = getattr(text, "attn_mask", None)
    return (
        hasattr(text, "token_embedding")
        and getattr(text, "text_pool_type", None) == "argmax"
        and mask is not None
        and bool(torch.isinf(mask.triu(1)).all())
        and not bool(mask.tril().any())
    )


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
def _export_text(encoder: Encoder, path: Path) -> bool:
    """The text tower; True when the export takes ids cut to the longest text."""
    trim = trimmable(encoder)
    graph = TextGraph(encoder, trim).eval()
    ids = encoder.tokenizer(list(TOKENIZER_PROBES))  # (4, ctx)
    axes = {"ids": {0: "batch"}, "vectors": {0: "batch"}, "tokens": {0: "batch"}}
    if trim:
        axes["ids"] = {0: "batch", 1: "length"}
        axes["tokens"] = {0: "batch", 1: "length"}
    _export(graph, (ids,), path, ["ids"], ["vectors", "tokens"], axes)
    full = TextGraph(encoder, False).eval()  # what the PyTorch path computes
    _check(full, (ids,), path)
    if trim:  # cut to the longest of the first two (the fourth fills the context)
        longest = int((ids[:2] != 0).sum(1).max())
        _check(full, (ids[:2],), path, cut=longest)
    return trim


def _export_image(encoder: Encoder, path: Path, token_layer: int | None) -> None:
    graph = ImageGraph(encoder, token_layer).eval()
    h, w = encoder.image_size
    pixels = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    _export(graph, (pixels,), path, ["pixels"], ["vectors", "tokens"],
            {"pixels": {0: "batch"}, "vectors": {0: "batch"}, "tokens": {0: "batch"}})  # fmt: skip
    _check(graph, (torch.cat([pixels, -pixels[:1]]),), path)


def _export(module, args: tuple, path: Path, inputs, outputs, axes) -> None:
    """torch.onnx.export, then the graph saved as `path` and its weights beside it as
    `path`.data (ONNX external data: ONNX Runtime maps that file instead of parsing the
    weights out of the graph, which halves a large model's load time); both written in
    a temporary folder beside `path`, fsynced, then renamed (the weights first)."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        # MultiheadAttention's fused inference kernel has no ONNX form; its plain ops do.
        torch.backends.mha.set_fastpath_enabled(False)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, args, str(work / "graph.onnx"), input_names=inputs,
                output_names=outputs, dynamic_axes=axes, opset_version=OPSET, dynamo=False,
            )  # fmt: skip
        graph = onnx.load(str(work / "graph.onnx"))
        data = path.name + ".data"
        onnx.save_model(
            graph, str(work / path.name), save_as_external_data=True,
            all_tensors_to_one_file=True, location=data, size_threshold=1024,
        )  # fmt: skip
        for name in (data, path.name):
            with open(work / name, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(work / name, path.parent / name)
    except Exception as exc:
        raise ExportFailed(f"torch.onnx.export of {path.name} failed: {exc}") from exc
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        shutil.rmtree(work, ignore_errors=True)


def _check(module, args: tuple, path: Path, cut: int | None = None) -> None:
    """ONNX Runtime's outputs on `args` against the module's; removes the file if they
    differ (then ExportFailed). `cut`: the export gets the ids cut to that length, and
    its token output is compared with the first `cut` tokens of the module's."""
    import onnxruntime as ort

    with torch.no_grad():
        expected = module(*args)
    expected = expected if isinstance(expected, tuple) else (expected,)
    if cut is not None:
        args = (args[0][:, :cut],)
        expected = (expected[0], expected[1][:, :cut])
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
            Path(f"{path}.data").unlink(missing_ok=True)
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
    ids = encoder.tokenizer(probes)
    theirs = ids.numpy() if hasattr(ids, "numpy") else np.asarray(ids)
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
