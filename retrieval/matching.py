"""What the searcher asks of a re-ranker, whichever family it is.

Two families implement it:
  native    (reranker.py RerankerRuntime): reads the dual encoder's token features from the
            token store; an index may keep its image-stem output (feature_cache.py).
  blip-itm  (blip_rerank.py BlipReranker): a pretrained matcher with its own vision tower;
            reads the query's text or image itself and the candidates' vision tokens,
            kept at index time (matcher_features.py) or computed on demand from the files
            and cached (matcher_cache.py).

The searcher (searcher.py) calls three things, in this order:
  reads(query, collection)   can this re-ranker score this query against this collection?
  candidate_inputs(library, query, collection, ids)
                             what stage 2 needs of the K candidates, copied out of the
                             index's stores and database (short: under the index's lock)
  score(query, stage1, inputs) -> Scored
                             the final scores (K,) through reranker.fused_score (on the
                             model thread), and notices about candidates it could not read
  probability(final)         final scores -> the scores shown, calibrated probabilities of
                             a match from 0 to 1 (calibration.py)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass
class Scored:
    final: np.ndarray  # (K,) final scores, the re-ranker's logit + weight * stage-1 cosine
    notices: list[str] = field(default_factory=list)
    logits: np.ndarray | None = None  # (K,) the re-ranker's own logits, NaN where unread


class Matcher(Protocol):
    family: str  # "native" | "blip-itm"
    name: str  # how answers name it

    @property
    def fingerprint(self) -> str: ...

    # query (searcher.Query), collection (library.Collection) and library (library.Library)
    # are Any: searcher.py imports this module, and tests/test_layering.py counts imports
    # under TYPE_CHECKING too, so naming them here would close an import circle. inputs:
    # whatever the family's own candidate_inputs returned.
    def reads(self, query: Any, collection: Any) -> bool: ...

    def candidate_inputs(
        self, library: Any, query: Any, collection: Any, ids: np.ndarray
    ) -> Any: ...

    def score(self, query: Any, stage1: np.ndarray, inputs: Any) -> Scored: ...

    def probability(self, final: np.ndarray) -> np.ndarray: ...


def native_candidate_inputs(
    reranker: Matcher, library: Any, query: Any, collection: Any, ids: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """What a native re-ranker (PyTorch or ONNX) reads of K candidates:
    text->image (tokens (K, N', D) or kept features (K, N', W), None),
    image->text (tokens (K, L, D), their valid lengths (K,))."""

    if query.kind == "text":
        kept = collection.features
        if kept is not None and kept.serves(reranker):  # the stem ran at index time
            return None, kept.read(ids)
        return collection.tokens.read(ids), None
    tokens = collection.tokens.read(ids)  # (K, L, D)
    rows = library.db.rows_by_ids("texts", ids.tolist())
    return tokens, np.array([rows[int(i)].n_tokens if int(i) in rows else 1 for i in ids])
