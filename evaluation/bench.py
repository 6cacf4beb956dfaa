"""Recall@k benchmark of the whole retrieval stack on one dataset split.

Stages, side by side, on the same embeddings:
  exact   brute-force dual-encoder scores (the reference every paper reports)
  index   the same vectors through the FAISS index type xmr would use
  rerank  exact top-K candidates re-scored by the cross-attention re-ranker
plus ARO-style hard-negative accuracy when the data carries negatives, and timings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xmr.evaluation import metrics
from xmr.evaluation.embed_dataset import embed_dataset_cached, token_options
from xmr.evaluation.negatives import negative_accuracy

CURVE_KS = (1, 2, 3, 5, 7, 10, 15, 20, 30, 50)


@dataclass
class BenchOptions:
    candidates: int = 128  # stage-1 depth for re-ranking (ALBEF/BLIP: 128 Flickr, 256 COCO)
    index_type: str = "flat"
    batch_size: int = 128
    workers: int | None = None
    cache_dir: Path | None = None
    ks: tuple[int, ...] = metrics.DEFAULT_KS


def run_benchmark(
    dataset, encoder, reranker=None, options: BenchOptions | None = None, progress=None
) -> dict:
    """-> the JSON-ready result (schema in the README / `xmr bench --help`)."""
    options = options or BenchOptions()
    # a pretrained matcher (BLIP ITM) reads the image files itself, not the encoder's tokens
    blip = getattr(reranker, "family", "native") == "blip-itm"
    native = reranker if not blip else None
    embeddings, cached = embed_dataset_cached(
        encoder,
        dataset,
        options.cache_dir,
        batch_size=options.batch_size,
        workers=options.workers,
        with_tokens=native is not None,
        **token_options(native),  # the image tokens the re-ranker was trained on
        progress=progress,
    )
    t2i = np.asarray(dataset.text_to_image)
    images, texts = embeddings.image_vectors, embeddings.text_vectors  # (N, D), (T, D)
    timings = {
        "images_per_second": round(embeddings.images_per_second, 2),
        "texts_per_second": round(embeddings.texts_per_second, 2),
        "embeddings_cached": cached,
    }

    scores, exact_ranks, exact_ms = _exact_stage(images, texts, t2i)
    ranks = {"exact": exact_ranks}
    timings["exact_ms_per_query"] = round(exact_ms, 4)
    ranks["index"], index_ms = _index_stage(images, texts, t2i, options)
    timings["index_ms_per_query"] = round(index_ms, 4)
    compositional = {}
    if dataset.negatives is not None:
        compositional["exact"] = negative_accuracy(encoder, dataset, embeddings)
    fusion = None
    if blip:
        from xmr.evaluation.blip_eval import blip_stages

        stage_ranks, sweep, best, rerank_ms = blip_stages(
            reranker, dataset, scores, options.candidates
        )
        ranks.update(stage_ranks)
        timings["rerank_ms_per_query"] = round(rerank_ms, 3)
        fusion = {
            "stage1_weight": reranker.settings.stage1_weight,
            "sweep": sweep,  # R@1 both ways at each stage-1 weight
            "best_stage1_weight": best,
        }
    elif reranker is not None:
        fusion = {
            "stage1_weight": reranker.config.stage1_weight,
            "itc_weight": reranker.config.itc_weight,
        }
        stage_ranks, accuracies, rerank_ms = _rerank_stages(
            reranker, encoder, dataset, embeddings, scores, options.candidates
        )
        ranks.update(stage_ranks)
        compositional.update(accuracies)
        timings["rerank_ms_per_query"] = round(rerank_ms, 3)

    results = {stage: _recalls(r, options.ks) for stage, r in ranks.items()}
    curves = {s: _recalls(ranks[s], CURVE_KS) for s in ("exact", "index", "rerank") if s in ranks}
    if reranker is not None:
        results["rerank_ceiling"] = {
            d: {
                f"R@{options.candidates}": metrics.rerank_ceiling(
                    ranks["exact"][d], options.candidates
                )
            }
            for d in ("t2i", "i2t")
        }
    return {
        "dataset": dataset.name,
        "source": str(dataset.source_file),
        "split": dataset.split,
        "model": encoder.spec.canonical,
        "reranker": None if reranker is None else reranker.name,
        "n_images": len(images),
        "n_texts": len(texts),
        "candidates": options.candidates if reranker is not None else None,
        "index_type": options.index_type,
        # final score = logit + stage1_weight * stage-1 cosine (itc_weight: the encoder's scale)
        "fusion": fusion,
        "results": results,
        "compositional": compositional,
        "curves": curves,
        "timings": timings,
    }


def _rerank_stages(reranker, encoder, dataset, embeddings, scores, candidates: int):
    """Re-rank exact stage 1's top `candidates` once and rank by three final scores: the
    configured one ("rerank"), the logit alone ("rerank_itm") and the logit plus the stage-1
    logit ("rerank_itm_itc", BLIP's ITM + ITC). -> (ranks by stage, hard-negative accuracies
    by stage when the data has negatives, stage 2's milliseconds per query)."""
    from xmr.evaluation.rerank_eval import rerank_logits, reranked_ranks

    t2i = np.asarray(dataset.text_to_image)
    logits, rerank_ms = rerank_logits(reranker, embeddings, scores, candidates)
    weights = {
        "rerank": reranker.config.stage1_weight,
        "rerank_itm": 0.0,
        "rerank_itm_itc": reranker.config.itc_weight,
    }
    ranks, accuracies = {}, {}
    for stage, weight in weights.items():
        ranks[stage] = reranked_ranks(logits, t2i, weight)
        if dataset.negatives is not None:
            accuracies[stage] = negative_accuracy(encoder, dataset, embeddings, reranker, weight)
    return ranks, accuracies, rerank_ms


def _recalls(ranks: dict, ks) -> dict:
    return {d: metrics.recall_at_ks(r, ks) for d, r in ranks.items()}


def _exact_stage(images, texts, t2i):
    """Brute-force dual-encoder scores (T, N), the ranks they give, ms per query."""
    started = time.monotonic()
    scores = texts @ images.T  # (T, N)
    ms = (time.monotonic() - started) * 1000 / (len(texts) + len(images))
    ranks = {
        "t2i": metrics.text_to_image_ranks(scores, t2i),
        "i2t": metrics.image_to_text_ranks(scores.T, t2i),
    }
    return scores, ranks, ms


def _index_stage(images, texts, t2i, options: BenchOptions):
    """Recall through the FAISS index type in use (approximate types may lose some)."""
    from xmr.retrieval.index_types import build_index

    depth = max(max(options.ks), max(CURVE_KS))
    image_index = build_index(images, options.index_type)
    text_index = build_index(texts, options.index_type)
    started = time.monotonic()
    _, image_lists = image_index.search(texts, min(depth, len(images)))  # (T, depth)
    _, text_lists = text_index.search(images, min(depth, len(texts)))  # (N, depth)
    ms = (time.monotonic() - started) * 1000 / (len(texts) + len(images))
    ranks = {
        "t2i": metrics.text_to_image_ranks_from_lists(image_lists, t2i),
        "i2t": metrics.image_to_text_ranks_from_lists(text_lists, t2i),
    }
    return ranks, ms
