"""Re-ranker latency: one query against K candidates, K = 16, 64, 128, both directions.

Text -> images is measured twice: from the images' stored tokens, and from the image
features that `xmr index` keeps for the model's own re-ranker (retrieval/feature_cache.py),
which is what `xmr search` does on such an index; the difference is the image stem.

Side by side in one run: xmr-tiny's shipped re-ranker (when present), a plain re-ranker of
the same token shapes, and one of ViT-B-32's shapes (49 patch tokens and 77 text tokens,
projected to 512); the plain ones have random weights (latency does not depend on them).
Reports the median over repeats and writes
benchmarks/results/rerank_latency_<device>.{json,md}.

    python benchmarks/bench_rerank.py [--device cuda] [--repeats 30] [--reranker FOLDER ...]

`--reranker FOLDER` adds a trained re-ranker (an `xmr train-reranker --out` folder) to the
same run, to compare a candidate with the shipped one side by side.
"""

from __future__ import annotations

import argparse
import time

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


def _runtimes(device: str, folders=()):
    """(label, runtime) pairs: xmr-tiny's shipped re-ranker when present, the re-rankers in
    `folders`, beside a random plain one of xmr-tiny's token shapes (the default
    RerankerConfig), and ViT-B-32's."""
    import torch

    from xmr.retrieval.modelspec import SHIPPED_MODELS_DIR
    from xmr.retrieval.reranker import Reranker, RerankerConfig, RerankerRuntime, load_reranker

    shipped = SHIPPED_MODELS_DIR / "xmr-tiny" / "reranker"
    if shipped.is_dir():
        runtime = load_reranker(shipped, device=device)
        yield f"xmr-tiny (shipped: {_describe(runtime.config)})", runtime
    for folder in folders:
        runtime = load_reranker(folder, device=device)
        yield f"{runtime.name} ({_describe(runtime.config)})", runtime
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


def latency_ms(runtime, k: int, rng, repeats: int, text_length: int, warmup: int = 1) -> dict:
    """Per-call ms of one text against K images ("t2i"; "t2i_kept": from the images'
    kept features) and one image against K texts ("i2t"), `repeats` calls each after
    `warmup` unrecorded ones; random fp16 tokens, as the token store hands them over."""
    c = runtime.config
    # (K, N, D + any patch pixels a pixel stem reads)
    images = rng.normal(size=(k, c.image_tokens, c.image_token_dim)).astype(np.float16)
    texts = rng.normal(size=(k, c.text_len, c.token_dim)).astype(np.float16)  # (K, L, D)
    lengths = np.full(k, text_length)
    stage1 = np.zeros(k, np.float32)
    kept = runtime.image_features(images)  # (K, N', W) float16, as the index keeps them
    calls = {
        "t2i": lambda: runtime.rerank_images(texts[0], text_length, images, stage1),
        "t2i_kept": lambda: runtime.rerank_images(
            texts[0], text_length, None, stage1, features=kept
        ),
        "i2t": lambda: runtime.rerank_texts(images[0], texts, lengths, stage1),
    }
    times = {direction: [] for direction in calls}
    for i in range(warmup + repeats):
        for direction, call in calls.items():
            t0 = time.perf_counter()
            call()
            if i >= warmup:  # allocations and kernels settle first
                times[direction].append((time.perf_counter() - t0) * 1000)
    return times


def _measure(runtime, k: int, rng, repeats: int) -> dict[str, float]:
    """Median ms per direction (see latency_ms)."""
    length = min(runtime.config.text_len, 24)  # a typical caption's token count
    times = latency_ms(runtime, k, rng, repeats, length)
    return {direction: median(t) for direction, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--ks", default="16,64,128")
    parser.add_argument("--reranker", action="append", default=[], metavar="FOLDER")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for label, runtime in _runtimes(args.device, args.reranker):
        for k in (int(x) for x in args.ks.split(",")):
            ms = _measure(runtime, k, rng, args.repeats)
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
    lines = [
        f"Re-ranker latency on {args.device}, median of {args.repeats} (ms per query). "
        "Text → K images from the stored tokens, and from the image features `xmr index` "
        "keeps for the model's own re-ranker (what `xmr search` uses when they are there).",
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
    write_results(
        f"rerank_latency_{args.device.split(':')[0]}", {"rows": rows}, "\n".join(lines) + "\n"
    )


if __name__ == "__main__":
    main()
