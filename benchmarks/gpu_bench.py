"""GPU measurements for an H100 machine (run through benchmarks/gpu_h100.sh).

  1. generate --images photo-sized JPEGs (640x480) with every core
  2. ViT-B-32 (random weights, `:none`) encoder alone on pre-decoded batches, CUDA
  3. `xmr index --device cuda` end to end in a subprocess, as a user runs it: images/s
     of the run itself (from its --json summary) and of the wall time with start-up
  4. re-ranker latency for K = 16, 64, 128 candidates with ViT-B-32 token shapes
     (49 image tokens and 77 text tokens of width 512, projected), random weights,
     both directions, tokens handed over as numpy fp16 as the token store gives them
Writes gpu_bench.json and gpu_bench.md to --out.
Everything is bounded to a few minutes; each step prints as it goes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, host, log, make_photos, median, write_results  # noqa: E402

MODEL = "ViT-B-32:none"


def _make_share(job) -> int:
    folder, start, n = job
    return len(make_photos(folder, n, (640, 480), jpeg_share=1.0, start=start))


def generate(folder: Path, n: int) -> None:
    """n JPEGs, drawn in parallel shares (one sub-folder per share, distinct seeds)."""
    workers = max(1, min(16, os.cpu_count() or 1))
    per = -(-n // workers)
    jobs = [(folder / f"part{i:02d}", i * per, min(per, n - i * per)) for i in range(workers)]
    jobs = [j for j in jobs if j[2] > 0]
    # spawn, not fork: safe whatever this process has started (torch thread pools).
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_make_share, jobs))


def encoder_alone(paths: list[Path], batch_size: int, device: str) -> dict:
    import torch

    from xmr.retrieval.encoder import load_encoder
    from xmr.retrieval.imageio import decode_batches

    encoder = load_encoder(MODEL, device)
    log(f"decoding {len(paths)} images for the encoder-alone run (untimed)")
    # xmr's own decoder (a DataLoader with worker processes); a plain fork pool after
    # torch has started its thread pools can hang.
    workers = min(16, os.cpu_count() or 1)
    decoded = decode_batches([str(p) for p in paths], encoder.preprocess, 64, workers, 10**9)
    pixels = [d.pixels for batch in decoded for d in batch if d.pixels is not None]
    batches = [torch.stack(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)]
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(2):
        encoder.encode_images(batches[0])  # warm-up: cuDNN/cuBLAS choices, allocator
    sync()
    started = time.perf_counter()
    for batch in batches:
        encoder.encode_images(batch)  # returns numpy: includes the copy back, as indexing does
    sync()
    seconds = time.perf_counter() - started
    # Upper bound: the vision tower alone on a batch already on the device.
    on_device = batches[0].to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    with torch.inference_mode(), autocast:
        encoder.model.visual(on_device)
        sync()
        t0 = time.perf_counter()
        for _ in range(3):
            encoder.model.visual(on_device)
        sync()
    model_only = 3 * len(on_device) / (time.perf_counter() - t0)
    return {
        "images": len(paths),
        "batch_size": batch_size,
        "seconds": round(seconds, 3),
        "ips": round(len(paths) / seconds, 1),
        "model_only_ips": round(model_only, 1),
    }


def index_cli(photos: Path, batch_size: int, workers: int | None, device: str) -> dict:
    index = Path(tempfile.mkdtemp(prefix="xmr-gpu-index-")) / "index"
    args = [sys.executable, "-m", "cli.main", "index", str(photos), "--index", str(index)]
    args += ["--model", MODEL, "--device", device, "--batch-size", str(batch_size), "--json", "-q"]
    if workers is not None:
        args += ["--workers", str(workers)]
    log("running: " + " ".join(args[2:]))
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"xmr index failed ({done.returncode}): {done.stderr[-2000:]}")
    summary = json.loads(done.stdout)
    return {
        "images": summary["encoded"],
        "workers": workers,
        "run_seconds": summary["seconds"],
        "run_ips": round(summary["encoded"] / summary["seconds"], 1),
        "encode_seconds": summary["encode_seconds"],
        "wall_seconds": round(wall, 2),
        "wall_ips": round(summary["encoded"] / wall, 1),
    }


def reranker_latency(device: str, ks=(16, 64, 128), repeats: int = 50) -> dict:
    import torch
    from bench_rerank import latency_ms

    from xmr.retrieval.reranker import Reranker, RerankerConfig, RerankerRuntime

    config = RerankerConfig(token_dim=512, text_len=77, image_tokens=49)
    torch.manual_seed(0)
    runtime = RerankerRuntime(Reranker(config), "random", device)
    rng = np.random.default_rng(0)
    out = {"config": {"token_dim": 512, "text_len": 77, "image_tokens": 49}, "k": {}}
    for k in ks:
        timings = latency_ms(runtime, k, rng, repeats, text_length=77, warmup=5)
        out["k"][str(k)] = {
            d: {
                "median_ms": round(median(t), 3),
                "p90_ms": round(float(np.percentile(t, 90)), 3),
            }
            for d, t in timings.items()
        }
        log(f"re-ranker K={k}: {out['k'][str(k)]}")
    return out


def markdown(result: dict) -> str:
    e, i, r = result["encoder"], result["index"], result["reranker"]
    lines = [
        "# GPU benchmark (benchmarks/gpu_h100.sh)",
        "",
        f"{result['images']} generated 640x480 JPEGs, {MODEL}; host {result['host']}.",
        "",
        "| measure | images/s |",
        "|---|---|",
        f"| encoder alone (pre-decoded, batch {e['batch_size']}) | {e['ips']} |",
        f"| model forward only (batch on GPU, bf16) | {e['model_only_ips']} |",
        f"| `xmr index --device cuda`, run itself | {i['run_ips']} "
        f"({i['run_ips'] / e['ips']:.0%} of encoder alone) |",
        f"| `xmr index --device cuda`, wall incl. start-up | {i['wall_ips']} |",
        "",
    ]
    if "k" in r:
        lines += ["| re-ranker K | text->image median ms | image->text median ms |"]
        lines += ["|---|---|---|"]
        for k, v in r["k"].items():
            lines.append(f"| {k} | {v['t2i']['median_ms']} | {v['i2t']['median_ms']} |")
    else:
        lines.append(f"re-ranker: {r.get('error')}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=None, help="xmr index --workers")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "results-gpu")))
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script")
    parser.add_argument("--repeats", type=int, default=50, help="re-ranker timings per K")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        log("no CUDA device: this script is for the GPU machine (--device cpu: a dry run)")
        return 2
    work = Path(tempfile.mkdtemp(prefix="xmr-gpu-"))
    log(f"generating {args.images} JPEGs in {work}")
    generate(work / "photos", args.images)
    paths = sorted((work / "photos").rglob("*.jpg"))
    result = {"images": len(paths), "host": host(), "date": time.strftime("%Y-%m-%d %H:%M")}
    log("encoder alone")
    result["encoder"] = encoder_alone(paths, args.batch_size, args.device)
    log(f"encoder alone: {result['encoder']}")
    result["index"] = index_cli(work / "photos", args.batch_size, args.workers, args.device)
    log(f"xmr index: {result['index']}")
    result["reranker"] = reranker_latency(args.device, repeats=args.repeats)
    path = write_results("gpu_bench", result, markdown(result), args.out)
    print(markdown(result))
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
