"""BLIP ITM as xmr's photo re-ranker on this CPU: the base architecture (transformers'
`BlipConfig()` defaults: ViT-B/16 at 384 px, 577 x 768 vision tokens, a 12-layer BERT
with cross-attention), random weights (no download; timing does not depend on them).

Measures, through the code a search runs (blip_rerank.BlipReranker.score):
  - per-query latency, text -> image, K = 16 / 64 / 128 candidates, with kept features
    (read from the index) and on demand (decode + vision pass per candidate, no cache);
  - the index-time feature pass (indexer/matcher_pass.py: decode, vision, write) in
    images/s, over photo-sized JPEG/PNG files indexed with a tiny encoder;
  - bytes per image of each kept form, and how far int8 / fp16 move the ITM logits and
    the ranking from the exact fp32 tokens.

    python benchmarks/bench_blip.py [--ks 16,64,128] [--repeats 1] [--images 16]

On-demand latency past --on-demand-max K is estimated as kept latency + K x the measured
per-image on-demand cost (said so in the results). GPU numbers need a GPU (none here).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import REPO, host, log, make_photos, median, publish, tiny_spec

WORDS = (
    "a the of on in with and dog cat man woman child street beach car red blue green "
    "white black sitting standing next to near tree table plate food building sky"
).split()
TEXTS = [
    "a black dog sitting on the beach next to a child",
    "a woman with a red car on the street near a building",
]


def build_matcher(folder: Path):
    """Base BLIP ITM, random init, in memory; a small BERT vocabulary for the tokenizer."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForImageTextRetrieval,
        BlipImageProcessor,
    )

    from xmr.retrieval.blip_itm import BlipMatcher
    from xmr.retrieval.matcher_names import MatcherSource

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]", *WORDS]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    config = BlipConfig()
    # BlipVisionConfig's default init (std 1e-10) makes degenerate tokens (|x| ~ 1e-6
    # after the last LayerNorm); 0.02, like the text side, gives tokens of a trained
    # model's magnitude, so the forms' errors mean something. Timing is the same.
    config.vision_config.initializer_range = 0.02
    model = BlipForImageTextRetrieval(config).eval()
    source = MatcherSource("folder", str(folder), "blip-itm-base (random)")
    return BlipMatcher(model, BertTokenizer(str(folder / "vocab.txt")), BlipImageProcessor(),
                       source, "bench-random", "cpu")  # fmt: skip


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ks", default="16,64,128")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--images", type=int, default=16, help="photos indexed")
    parser.add_argument("--on-demand-max", type=int, default=16)
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]

    from xmr.engine.writes import index_images
    from xmr.indexer.matcher_pass import keep_matcher_features
    from xmr.retrieval.blip_rerank import BlipReranker
    from xmr.retrieval.library import Library
    from xmr.retrieval.matcher_features import decode, encode, record_layout
    from xmr.retrieval.searcher import Query

    work = Path(tempfile.mkdtemp(prefix="bench-blip-"))
    log("building base BLIP ITM (random weights)")
    matcher = build_matcher(work / "tok")
    reranker = BlipReranker(matcher, cache_bytes=0)  # on demand means uncached here
    shape = matcher.feature_shape  # (577, 768)

    log(f"indexing {args.images} photos with a tiny encoder")
    make_photos(work / "photos", args.images)
    index = work / "idx"
    index_images(index, [work / "photos"], model=tiny_spec(work / "models"), reranker="none")

    log("index-time feature pass (fp32: exact, read back for the agreement check)")
    with Library.open(index, writable=True) as library:
        started = time.perf_counter()
        report = keep_matcher_features(library, matcher.source, form="fp32", matcher=matcher,
                                       batch_size=8, workers=2)  # fmt: skip
        seconds = time.perf_counter() - started
        rows = _rows(library)
        ids = np.asarray(sorted(rows))
        exact, found = library.images.kept.read(ids, np.array([rows[int(i)][1] for i in ids]))
        assert found.all()
        paths = [rows[int(i)][0] for i in ids]
    rate = report["filled"] / seconds

    query = Query(np.zeros(1, np.float32), None, None, "text", text=TEXTS[0])
    latency = {}
    for k in ks:
        take = np.arange(k) % len(ids)
        stage1 = np.linspace(0.3, 0.1, k).astype(np.float32)
        candidates = (ids[take], [paths[i] for i in take], [None] * k)
        kept_inputs = (exact[take], np.ones(k, bool))
        log(f"K={k}: kept")
        kept_ms = timed(
            lambda c=candidates, f=kept_inputs, s=stage1: _score(reranker, query, s, c, f, index),
            args.repeats,
        )
        entry = {"kept_ms": round(kept_ms, 1)}
        if k <= args.on_demand_max:
            nothing = (np.zeros((k, *shape), np.float32), np.zeros(k, bool))
            log(f"K={k}: on demand")
            entry["on_demand_ms"] = round(
                timed(
                    lambda c=candidates, f=nothing, s=stage1: _score(
                        reranker, query, s, c, f, index
                    ),
                    args.repeats,
                ),
                1,
            )
            entry["on_demand_per_image_ms"] = round((entry["on_demand_ms"] - kept_ms) / k, 1)
        latency[k] = entry
    per_image = next(e["on_demand_per_image_ms"] for e in latency.values() if "on_demand_ms" in e)
    for k, entry in latency.items():
        if "on_demand_ms" not in entry:
            entry["on_demand_ms_estimated"] = round(entry["kept_ms"] + k * per_image, 1)

    log("forms: bytes and agreement with fp32")
    forms = {}
    reference = {t: matcher.match_images(t, exact) for t in TEXTS}  # (M,) each
    for form in ("fp32", "fp16", "int8"):
        record, dtype = record_layout(form, shape)
        nbytes = int(np.prod(record)) * np.dtype(dtype).itemsize + 16  # + the key row
        entry = {"bytes_per_image": nbytes}
        if form != "fp32":
            approx = decode(form, encode(form, exact))
            deltas, top1, taus = [], [], []
            for text in TEXTS:
                logits = matcher.match_images(text, approx)
                deltas.append(np.abs(logits - reference[text]).max())
                top1.append(int(np.argmax(logits) == np.argmax(reference[text])))
                taus.append(_kendall(logits, reference[text]))
            error = np.linalg.norm(approx - exact) / np.linalg.norm(exact)
            entry.update(token_relative_error=round(float(error), 5),
                         max_logit_delta=round(float(max(deltas)), 5),
                         top1_agreement=float(np.mean(top1)),
                         kendall_tau=round(float(np.mean(taus)), 4))  # fmt: skip
        forms[form] = entry
    spread = max(float(np.ptp(v)) for v in reference.values())

    data = {
        "command": "python benchmarks/bench_blip.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "model": "BlipConfig() defaults (base: ViT-B/16 384 px, BERT-base), random weights",
        "vision_tokens": list(shape),
        "host": host(),
        "latency_ms_text_to_image": {str(k): v for k, v in latency.items()},
        "index_feature_pass": {
            "images": report["filled"],
            "seconds": round(seconds, 2),
            "images_per_s": round(rate, 3),
        },  # fmt: skip
        "forms": forms,
        # with random weights every candidate scores almost alike, so ranking agreement
        # between forms is not meaningful here; the token error is
        "itm_logit_spread_fp32": round(spread, 6),
        "gpu": "not measured: no GPU was available to this session",
    }
    lines = [
        "# BLIP ITM re-ranker on this CPU (base architecture, random weights)",
        "",
        f"Command: `{data['command']}` (from {REPO.name}/). Host: {data['host']}.",
        "",
        "| K | kept features (ms/query) | on demand, uncached (ms/query) |",
        "|---|---|---|",
    ]
    for k, e in latency.items():
        od = e.get("on_demand_ms")
        od_text = f"{od:,.0f}" if od is not None else f"~{e['on_demand_ms_estimated']:,.0f} (est.)"
        lines.append(f"| {k} | {e['kept_ms']:,.0f} | {od_text} |")
    lines += [
        "",
        f"Index-time feature pass: {report['filled']} photos in {seconds:.1f} s = "
        f"{rate:.2f} images/s (decode + vision + write, batch 8).",
        "",
        "| form | bytes per image | token error vs fp32 (relative L2) | max ITM logit change "
        "| top-1 agreement | Kendall tau |",
        "|---|---|---|---|---|---|",
    ]
    for form, e in forms.items():
        lines.append(
            f"| {form} | {e['bytes_per_image']:,} | {e.get('token_relative_error', 0)} | "
            f"{e.get('max_logit_delta', 0)} | {e.get('top1_agreement', 1.0)} | "
            f"{e.get('kendall_tau', 1.0)} |"
        )
    n = len(ids)
    lines += [
        "",
        f"Agreement: the ITM ranking of {n} candidates for each of {len(TEXTS)} texts, each "
        f"form's tokens against fp32's (random weights: the logits span {spread:.2g}; "
        "trained weights spread them further, so ties matter less). Bytes include the "
        "16-byte key row.",
    ]
    lines += ["", "GPU: not measured (no GPU in this session).", ""]
    return publish("bench_blip", data, lines)


def _score(reranker, query, stage1, candidates, features, index) -> None:
    """One text -> image query's stage 2, as the searcher runs it (features copied: the
    on-demand path fills them in place)."""
    from xmr.retrieval.blip_rerank import _Images

    vision, found = features
    reranker.score(query, stage1, _Images(*candidates, vision.copy(), found, index))


def _rows(library) -> dict:
    from xmr.retrieval.matcher_features import content_key

    return {i: (p, content_key(h)) for i, p, h in library.db.indexed_images()}


def _kendall(a: np.ndarray, b: np.ndarray) -> float:
    n = len(a)
    concordant = 0
    total = 0
    for i in range(n):
        for j in range(i + 1, n):
            total += 1
            concordant += np.sign(a[i] - a[j]) == np.sign(b[i] - b[j])
    return 2 * concordant / total - 1 if total else 1.0


if __name__ == "__main__":
    raise SystemExit(main())
