"""Re-ranker latency: one query against K candidates, K = 16, 64, 128, both directions.

Text -> images is measured twice: from the images' stored tokens, and from the image
features that `xmr index` keeps for the model's own re-ranker (retrieval/feature_cache.py),
which is what `xmr search` does on such an index; the difference is the image stem.

Side by side in one run: xmr-tiny's shipped re-ranker (when present), a plain re-ranker of
the same token shapes, and one of ViT-B-32's shapes (49 patch tokens and 77 text tokens,
projected to 512); the plain ones have random weights (latency does not depend on them).
Each round calls every re-ranker once, in a rotating order; reports the median over
rounds and writes benchmarks/results/rerank_latency_<device>.{json,md}
(rerank_latency_onnx with --onnx: the trained re-rankers through ONNX Runtime, as `xmr
search` runs them on a CPU).

    python benchmarks/bench_rerank.py [--device cuda] [--repeats 30] [--reranker FOLDER ...]
        [--onnx]

`--reranker FOLDER` adds a trained re-ranker (an `xmr train-reranker --out` folder) to the
same run, to compare a candidate with the shipped one side by side.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from common import log, median, write_results

SHAPES = {
    # name: (token_dim, text_len, image_tokens, image_pool)
    "xmr-tiny": (128, 48, 64, 2),
    "ViT-B-32": (512, 77, 49, 2),
}


def _describe(config) -> str:
    stem = "conv stem" if config.image_stem == "conv" else "attention stem"
    extras = ", token alignment" if config.token_alignment else ""
    extras += ", relation term" if getattr(config, "relation_readout", False) else ""
    extras += ", pixel stem" if getattr(config, "pixel_patch", 0) else ""
    return f"width {config.width}, {stem}{extras}"


def _runtimes(device: str, folders=(), onnx: bool = False):
    """(label, runtime) pairs: xmr-tiny's shipped re-ranker when present, the re-rankers in
    `folders`, beside a random plain one of xmr-tiny's token shapes (the default
    RerankerConfig), and ViT-B-32's. `onnx`: the trained ones through ONNX Runtime, as
    `xmr search` runs them on a CPU (the plain ones have no folder to export)."""
    import torch

    from xmr.engine.models import Models
    from xmr.retrieval.modelspec import SHIPPED_MODELS_DIR
    from xmr.retrieval.onnx.runtime import OnnxReranker
    from xmr.retrieval.reranker import Reranker, RerankerConfig, RerankerRuntime, load_reranker

    shipped = SHIPPED_MODELS_DIR / "xmr-tiny" / "reranker"
    trained = ([shipped] if shipped.is_dir() else []) + [Path(f) for f in folders]
    models = Models("xmr-tiny", "cpu") if onnx else None
    for folder in trained:
        runtime = models.reranker(folder) if models else load_reranker(folder, device=device)
        if models and not isinstance(runtime, OnnxReranker):  # PyTorch answered instead
            raise SystemExit(f"{folder}: no ONNX export ({'; '.join(models.notices)})")
        name = "xmr-tiny (shipped: " if folder == shipped else f"{runtime.name} ("
        yield f"{name}{_describe(runtime.config)})", runtime
    if onnx:
        return
    for name, (dim, text_len, image_tokens, pool) in SHAPES.items():
        torch.manual_seed(0)
        config = RerankerConfig(
            token_dim=dim,
            text_len=text_len,
            image_tokens=image_tokens,
            image_pool=pool,
            image_layers=0,
        )
        label = f"{name} (plain: width {config.width}, random weights)"
        yield label, RerankerRuntime(Reranker(config), f"{name}-random", device)


def timed_calls(runtime, k: int, rng, text_length: int) -> dict[str, Callable[[], object]]:
    """One text against K images ("t2i"; "t2i_kept": from the images' kept features) and
    one image against K texts ("i2t"), through the searcher's interface (`score`), so a
    PyTorch and an ONNX Runtime re-ranker are timed alike; random fp16 tokens, as the token
    store hands them over."""
    c = runtime.config
    # (K, N, D + any patch pixels a pixel stem reads)
    images = rng.normal(size=(k, c.image_tokens, c.image_token_dim)).astype(np.float16)
    texts = rng.normal(size=(k, c.text_len, c.token_dim)).astype(np.float16)  # (K, L, D)
    lengths = np.full(k, text_length)
    stage1 = np.zeros(k, np.float32)
    kept = runtime.image_features(images)  # (K, N', W), as the index keeps them
    text = SimpleNamespace(kind="text", tokens=texts[0], length=text_length)
    image = SimpleNamespace(kind="image", tokens=images[0])
    return {
        "t2i": lambda: runtime.score(text, stage1, (images, None)),
        "t2i_kept": lambda: runtime.score(text, stage1, (None, kept)),
        "i2t": lambda: runtime.score(image, stage1, (texts, lengths)),
    }


def interleaved_ms(calls: dict[str, dict[str, Callable]], repeats: int, warmup: int = 1):
    """{label: {direction: [ms per call]}}: each round calls every runtime once, starting
    from the next one each round, so a runtime's place in the order (a warmer cache, a
    busier core) does not bias the comparison; `warmup` rounds are not recorded."""
    labels = list(calls)
    times = {label: {d: [] for d in calls[label]} for label in labels}
    for i in range(warmup + repeats):
        for label in labels[i % len(labels) :] + labels[: i % len(labels)]:
            for direction, call in calls[label].items():
                t0 = time.perf_counter()
                call()
                if i >= warmup:  # allocations and kernels settle first
                    times[label][direction].append((time.perf_counter() - t0) * 1000)
    return times


def latency_ms(runtime, k: int, rng, repeats: int, text_length: int, warmup: int = 1) -> dict:
    """Per-call ms of one runtime alone (timed_calls), `repeats` calls each."""
    calls = timed_calls(runtime, k, rng, text_length)
    return interleaved_ms({"": calls}, repeats, warmup)[""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--ks", default="16,64,128")
    parser.add_argument("--reranker", action="append", default=[], metavar="FOLDER")
    parser.add_argument("--onnx", action="store_true", help="through ONNX Runtime")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    runtimes = list(_runtimes(args.device, args.reranker, args.onnx))
    rows = []
    for k in (int(x) for x in args.ks.split(",")):
        calls = {
            label: timed_calls(runtime, k, rng, min(runtime.config.text_len, 24))
            for label, runtime in runtimes  # 24: a typical caption's token count
        }
        for label, times in interleaved_ms(calls, args.repeats).items():
            ms = {direction: median(t) for direction, t in times.items()}
            log(
                f"{label} K={k}: text->images {ms['t2i']:.2f} ms ({ms['t2i_kept']:.2f} ms "
                f"from kept features), image->texts {ms['i2t']:.2f} ms"
            )
            rows.append(
                {
                    "reranker": label,
                    "K": k,
                    "text_to_images_ms": round(ms["t2i"], 3),
                    "text_to_images_kept_features_ms": round(ms["t2i_kept"], 3),
                    "image_to_texts_ms": round(ms["i2t"], 3),
                }
            )
    rows.sort(key=lambda r: [label for label, _ in runtimes].index(r["reranker"]))
    runs_on = "ONNX Runtime" if args.onnx else f"PyTorch ({args.device})"
    lines = [
        f"Re-ranker latency through {runs_on}, median of {args.repeats} interleaved rounds "
        "(ms per query). Text → K images from the stored tokens, and from the image "
        "features `xmr index` keeps for the model's own re-ranker (what `xmr search` uses "
        "when they are there).",
        "",
        "| re-ranker (token shapes) | K | text → K images | … from kept features "
        "| image → K texts |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['reranker']} | {r['K']} | {r['text_to_images_ms']:.1f} | "
        f"{r['text_to_images_kept_features_ms']:.1f} | {r['image_to_texts_ms']:.1f} |"
        for r in rows
    ]
    name = "onnx" if args.onnx else args.device.split(":")[0]
    write_results(f"rerank_latency_{name}", {"rows": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
