"""The query-time models through ONNX Runtime: NumPy in, NumPy out, no torch import.

  OnnxTextEncoder   texts -> Encoded (as encoder.TextEncoder.encode_texts)
  OnnxImageTower    pixels (B, 3, H, W) float32 -> (vectors (B, D), tokens (B, N, D))
  OnnxReranker      a native re-ranker (matching.Matcher), from its stem and match exports

Each is built from an export folder (store.py) that export.py wrote and checked.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from xmr.retrieval.calibration import Logistic, rerank_fit, rerank_probability
from xmr.retrieval.encoded import Encoded
from xmr.retrieval.fusion import fused_score
from xmr.retrieval.matching import Scored, native_candidate_inputs
from xmr.retrieval.reranker_files import ADDABLE

if TYPE_CHECKING:
    from xmr.retrieval.onnx.preprocess import NumpyPreprocess


class OnnxUnavailable(Exception):
    """ONNX Runtime cannot be imported, or an export cannot be loaded."""


def session(path: Path, prepack: bool = True):
    """An ONNX Runtime CPU session for one export. `prepack`: lay the matrix weights out
    for its kernels at load time, which pays back over many runs; a process that runs the
    session once (a CLI query) loads faster without (a ViT-B-32 image tower: about 0.2 s
    instead of 0.6 s to load, 0.3 s instead of 0.24 s to run)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise OnnxUnavailable(f"onnxruntime cannot be imported ({exc})") from exc
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are not the user's business
    # The basic rewrites (constant folding, redundant nodes) only: the extended fusions
    # cost more at load time than they save on one query (a ViT-B-32 text tower loads in
    # about 0.2 s instead of 0.3 s and runs as fast).
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidProtobuf types
        raise OnnxUnavailable(f"{Path(path).name} cannot be loaded ({exc})") from exc


class OnnxTextEncoder:
    """The text tower export and the byte-pair tokenizer: `encode_texts` as TextEncoder's."""

    def __init__(
        self, path: Path, context_length: int, dim: int, trim: bool = False, prepack: bool = True
    ):
        from xmr.retrieval.onnx.tokenizer import ClipTokenizer

        self.session = session(path, prepack)
        self.tokenizer = ClipTokenizer(context_length)
        self.dim = dim
        self.trim = trim  # the export takes ids cut to the longest text (export.TextGraph)

    def encode_texts(self, texts: Sequence[str]) -> Encoded:
        ids = self.tokenizer(list(texts))  # (B, ctx) int64
        lengths = np.maximum((ids != 0).sum(axis=1), 1).astype(np.int32)  # zero padding
        run = ids[:, : int(lengths.max())] if self.trim else ids
        vectors, tokens = self.session.run(None, {"ids": run})  # (B, D), (B, L, D)
        # Tokens past a text's length are never read (the re-ranker masks or cuts them):
        # zeros stand in for them when the export ran on cut ids.
        full = np.zeros((len(ids), ids.shape[1], tokens.shape[2]), np.float16)
        full[:, : tokens.shape[1]] = tokens
        return Encoded(vectors.astype(np.float32), full, lengths)


class OnnxImageTower:
    """An image tower export: `encode(pixels (B, 3, H, W) float32) -> (vectors (B, D) unit
    norm, tokens (B, N, D) float32)`, with `preprocess` (PIL image -> (3, H, W) float32)
    equal to open_clip's for the model. Usable by indexing as well as by queries."""

    def __init__(self, path: Path, preprocess: dict | NumpyPreprocess, prepack: bool = True):
        from xmr.retrieval.onnx.preprocess import NumpyPreprocess  # PIL: image queries only

        self.session = session(path, prepack)
        self.preprocess = (
            preprocess
            if isinstance(preprocess, NumpyPreprocess)
            else NumpyPreprocess.from_dict(preprocess)
        )

    def encode(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        vectors, tokens = self.session.run(None, {"pixels": pixels})
        return vectors, tokens


class OnnxReranker:
    """A native re-ranker (reranker.RerankerRuntime's searcher interface) through its stem
    and match exports; scores are fused from the logits by fusion.py, as there."""

    family = "native"

    def __init__(
        self, folder: Path, name: str, fingerprint: str, config: dict, prepack: bool = True
    ):
        self.name = name
        self.fingerprint = fingerprint
        # a config saved before an ADDABLE option existed has it off
        self.config = SimpleNamespace(**{**ADDABLE, **config})
        self.folder = Path(folder)
        self._stem = session(self.folder / "stem.onnx", prepack)
        # the features per token the exported stem takes (only its batch axis is dynamic),
        # as RerankerConfig.image_token_dim says for the PyTorch re-ranker
        self.config.image_token_dim = int(self._stem.get_inputs()[0].shape[2])
        self._match = session(self.folder / "match.onnx", prepack)
        # the fused score -> probability fit kept with the re-ranker (calibration.py)
        self.calibration: Logistic | None = None

    @classmethod
    def from_folder(
        cls,
        export: Path,
        reranker_folder: Path,
        name: str,
        fingerprint: str,
        prepack: bool = True,
    ):
        from xmr.retrieval.reranker_files import CONFIG_FILE

        config = json.loads((Path(reranker_folder) / CONFIG_FILE).read_text())
        runtime = cls(export, name, fingerprint, config, prepack)
        runtime.calibration = rerank_fit(reranker_folder, runtime.config.stage1_weight, fingerprint)
        return runtime

    def probability(self, final: np.ndarray) -> np.ndarray:
        """Final (fused) scores -> the shown score, as RerankerRuntime.probability."""
        return rerank_probability(final, self.calibration)

    def reads(self, query: Any, collection: Any) -> bool:
        return collection.tokens is not None and query.tokens is not None

    def candidate_inputs(self, library: Any, query: Any, collection: Any, ids: np.ndarray):
        return native_candidate_inputs(self, library, query, collection, ids)

    def image_features(self, tokens: np.ndarray, batch: int = 256) -> np.ndarray:
        """(M, N, D) tokens -> (M, N', W) float32, the re-ranker's image stem. Patch pixels
        an index keeps for a pixel stem this re-ranker lacks are left out."""
        tokens = tokens[..., : self.config.image_token_dim]
        parts = [
            self._stem.run(None, {"tokens": np.asarray(tokens[s : s + batch], np.float32)})[0]
            for s in range(0, len(tokens), batch)
        ]
        return np.concatenate(parts)

    def logits(
        self, text: np.ndarray, lengths: np.ndarray, features: np.ndarray, batch: int = 512
    ) -> np.ndarray:
        """P pairs: text (P, L, D), lengths (P,), features (P, N', W) -> (P,). Each batch
        is cut to its longest text, as RerankerRuntime.score_pairs does."""
        out = []
        for s in range(0, len(text), batch):
            part = np.asarray(lengths[s : s + batch], np.int64)
            longest = int(part.max())
            inputs = {
                "text": np.ascontiguousarray(text[s : s + batch, :longest], np.float32),
                "lengths": part,
                "features": np.ascontiguousarray(features[s : s + batch], np.float32),
            }
            out.append(self._match.run(None, inputs)[0])
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def score(self, query: Any, stage1: np.ndarray, inputs: tuple[Any, Any]) -> Scored:
        tokens, extra = inputs
        k = len(stage1)
        if query.kind == "text":  # one text against K images
            features = extra if extra is not None else self.image_features(tokens)
            text = np.repeat(query.tokens[None], k, axis=0)  # (K, L, D)
            logits = self.logits(text, np.full(k, query.length), features)
        else:  # one image against K texts
            features = self.image_features(query.tokens[None])  # (1, N', W)
            logits = self.logits(tokens, extra, np.repeat(features, k, axis=0))
        logits = logits.astype(np.float32)  # (K,)
        final = fused_score(logits, stage1, self.config.stage1_weight)
        return Scored(final, logits=logits)
