"""`xmr index` throughput against the encoder alone on the same images (its limit).

    python benchmarks/bench_pipeline.py --images 300                # tiny and ViT-B-32
    python benchmarks/bench_pipeline.py --models tiny --images 600  # just the tiny one
    python benchmarks/bench_pipeline.py --device cuda --models ViT-B-32:none

For each model (random weights: speed does not depend on them):
  encoder_ips   images/s of `encoder.encode_images` over batches decoded beforehand
                (decoding, hashing and storage excluded: the ceiling)
  index_ips     images/s of a whole `index_folders` run into a fresh index (scan, hash,
                parallel decode, encode, SQLite, vector/token stores, FAISS), with the
                model already loaded, as `xmr index` runs once started
  ratio         index_ips / encoder_ips (goal on CPU: >= 0.85)
  encode_share  the time the run spent inside the encoder / its wall time
The first call of each measurement is a warm-up batch, not timed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, host, log, make_photos, tiny_spec, write_results  # noqa: E402


def encoder_alone(encoder, paths: list[Path], batch_size: int) -> dict:
    """Decode everything first (untimed), then time the encoder over the same batches."""
    import torch

    from xmr.retrieval.imageio import decode_image

    pixels = [decode_image(str(p), encoder.preprocess)[0] for p in paths]
    batches = [torch.stack(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)]
    encoder.encode_images(batches[0])  # warm-up: allocation, kernels, autotuning
    _sync(encoder)
    started = time.perf_counter()
    for batch in batches:
        encoder.encode_images(batch)
    _sync(encoder)
    seconds = time.perf_counter() - started
    return {"images": len(paths), "seconds": round(seconds, 3), "ips": len(paths) / seconds}


def index_run(encoder, folder: Path, batch_size: int, workers: int) -> dict:
    """One `index_folders` run into a fresh index; the model is loaded and warm (it ran
    `encoder_alone` first)."""
    from xmr.indexer.images import IndexOptions, index_folders
    from xmr.retrieval.library import Library

    tmp = Path(tempfile.mkdtemp(prefix="xmr-bench-index-"))
    try:
        options = IndexOptions(batch_size=batch_size, workers=workers)
        with Library.open_or_create(tmp / "index", encoder) as library:
            started = time.perf_counter()
            summary = index_folders(library, encoder, [folder], options)
            seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "images": summary.encoded,
        "seconds": round(seconds, 3),
        "ips": summary.encoded / seconds,
        "encode_seconds": round(summary.encode_seconds, 3),
        "encode_share": round(summary.encode_seconds / seconds, 3),
        "workers": workers,
    }


def _sync(encoder) -> None:
    if str(getattr(encoder, "device", "cpu")).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def bench_model(spec: str, folder: Path, paths, device, batch_size: int, workers: int) -> dict:
    from xmr.retrieval.encoder import load_encoder

    log(f"{spec}: loading on {device}")
    encoder = load_encoder(spec, device)
    log(f"{spec}: encoder alone over {len(paths)} pre-decoded images")
    alone = encoder_alone(encoder, paths, batch_size)
    log(f"{spec}: encoder alone {alone['ips']:.1f} images/s; now a full index run")
    full = index_run(encoder, folder, batch_size, workers)
    ratio = full["ips"] / alone["ips"]
    log(f"{spec}: index {full['ips']:.1f} images/s = {ratio:.0%} of the encoder alone")
    return {
        "model": spec,
        "device": encoder.device,
        "batch_size": batch_size,
        "encoder": {**alone, "ips": round(alone["ips"], 2)},
        "index": {**full, "ips": round(full["ips"], 2)},
        "ratio": round(ratio, 3),
    }


def markdown(result: dict) -> str:
    lines = [
        "# Indexing pipeline vs encoder alone (benchmarks/bench_pipeline.py)",
        "",
        f"{result['images']} generated photos ({result['image_size'][0]}x"
        f"{result['image_size'][1]}, 70% JPEG); host {result['host']}.",
        "",
        "| model | device | encoder alone img/s | xmr index img/s | ratio | encoder share "
        "| decode workers |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["models"]:
        lines.append(
            f"| {Path(r['model']).name} | {r['device']} | {r['encoder']['ips']:.1f} "
            f"| {r['index']['ips']:.1f} | {r['ratio']:.0%} | {r['index']['encode_share']:.0%} "
            f"| {r['index']['workers']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from xmr.retrieval.imageio import default_workers

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--image-size", default="512x384", help="WxH of the generated photos")
    parser.add_argument("--models", default="tiny,ViT-B-32:none", help="'tiny' or specs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="[default: xmr's default]")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="bench_pipeline", help="result file name")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.image_size.lower().split("x"))
    workers = default_workers() if args.workers is None else args.workers

    work = Path(tempfile.mkdtemp(prefix="xmr-bench-pipeline-"))
    try:
        log(f"generating {args.images} photos of {size[0]}x{size[1]} in {work}")
        paths = make_photos(work / "photos", args.images, size)
        results = []
        for name in (m.strip() for m in args.models.split(",") if m.strip()):
            spec = tiny_spec(work / "models") if name == "tiny" else name
            results.append(
                bench_model(spec, work / "photos", paths, args.device, args.batch_size, workers)
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "images": args.images,
        "image_size": list(size),
        "host": host(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "models": results,
    }
    path = write_results(args.name, result, markdown(result), args.out)
    print(markdown(result))
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
