"""`xmr index` on a local Ray (1 and 2 encoder actors) against the local path, side by side.

    python benchmarks/bench_ray.py --images 3200 --repeats 3         # ~15-25 min on 2 cores

The same generated photos are indexed into a fresh index by `index_folders` (model
loaded and warm in this process, as `xmr index` runs once started) with
  local     the shared decode -> encode step here, `--workers` decode processes
  ray-1     --executor ray, 1 actor   (Ray started once beforehand: ray.init(num_cpus))
  ray-2     --executor ray, 2 actors
Each configuration indexes a quarter of the photos and then all of them, configurations
alternating within each repeat; medians are reported, and every Ray rate as a ratio to
the local rate of the same repeat (Ray's overhead on one machine).
  wall_ips      images / wall time of the whole run on all photos (scan, hash, plan,
                pool start-up with each actor loading the model, embedding, writing)
  marginal_ips  (all - a quarter) / (its wall time - the quarter's): the rate once
                started, fixed costs cancelled
  fixed_s       wall time minus images / marginal_ips: what a run pays before it flows
                (Ray: actors starting and loading the model)
Also measured once: ray.init of a local Ray (what `xmr index --executor ray` without
an address pays on top). Model: the shipped xmr-tiny (64 px) by default.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import host, log, make_photos, publish  # noqa: E402


def one_run(encoder, folder: Path, executor, batch_size: int, workers: int) -> tuple[int, float]:
    """Index `folder` into a fresh index: (images encoded, wall seconds)."""
    from xmr.indexer.images import IndexOptions, index_folders
    from xmr.retrieval.library import Library

    tmp = Path(tempfile.mkdtemp(prefix="xmr-bench-ray-"))
    try:
        options = IndexOptions(batch_size=batch_size, workers=workers, executor=executor)
        with Library.open_or_create(tmp / "index", encoder) as library:
            started = time.perf_counter()
            summary = index_folders(library, encoder, [folder], options)
            return summary.encoded, time.perf_counter() - started
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure(encoder, folders: tuple[Path, Path], executor, batch_size, workers) -> dict:
    """Wall, marginal rate and fixed cost from a run on a quarter and one on everything."""
    small_n, small_s = one_run(encoder, folders[0], executor, batch_size, workers)
    n, seconds = one_run(encoder, folders[1], executor, batch_size, workers)
    # NaN when noise in the fixed cost hides the difference (left out of the medians)
    marginal = (n - small_n) / (seconds - small_s) if seconds > small_s else float("nan")
    return {
        "images": n,
        "wall_s": round(seconds, 3),
        "quarter_wall_s": round(small_s, 3),
        "wall_ips": n / seconds,
        "marginal_ips": marginal,
        "fixed_s": seconds - n / marginal,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="xmr-tiny")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="local decode processes")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import ray
    import torch

    from xmr.indexer.executor import Executor
    from xmr.retrieval.encoder import load_encoder

    torch.set_num_threads(max(1, args.cpus))
    work = Path(tempfile.mkdtemp(prefix="xmr-bench-ray-photos-"))
    try:
        log(f"generating {args.images} photos")
        quarter = args.images // 4
        make_photos(work / "all", args.images, size=(320, 240))
        (work / "quarter").mkdir()
        for photo in sorted((work / "all").iterdir())[:quarter]:
            shutil.copy(photo, work / "quarter" / photo.name)
        folders = (work / "quarter", work / "all")
        encoder = load_encoder(args.model, "cpu")
        started = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        ray_init_s = time.perf_counter() - started
        configs = {
            "local": Executor("local"),
            "ray-1": Executor("ray", actors=1),
            "ray-2": Executor("ray", actors=2),
        }
        runs: dict[str, list[dict]] = {name: [] for name in configs}
        for repeat in range(args.repeats):
            for name, executor in configs.items():
                workers = args.workers if name == "local" else 0
                result = measure(encoder, folders, executor, args.batch_size, workers)
                runs[name].append(result)
                log(f"repeat {repeat + 1} {name}: {result}")
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    summary = {}
    for name, results in runs.items():
        summary[name] = {
            key: round(float(np.nanmedian([r[key] for r in results])), 2)
            for key in ("wall_ips", "marginal_ips", "fixed_s", "wall_s")
        }
    for name in ("ray-1", "ray-2"):
        for key in ("wall_ips", "marginal_ips"):
            ratios = [r[key] / b[key] for r, b in zip(runs[name], runs["local"], strict=True)]
            summary[name][f"{key}_vs_local"] = round(float(np.nanmedian(ratios)), 3)
    data = {
        "images": args.images,
        "model": args.model,
        "batch_size": args.batch_size,
        "local_workers": args.workers,
        "ray_cpus": args.cpus,
        "ray_init_s": round(ray_init_s, 2),
        "summary": summary,
        "runs": runs,
        "host": host(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python benchmarks/bench_ray.py " + " ".join(argv or sys.argv[1:]),
    }
    lines = [
        "# Local vs Ray indexing (benchmarks/bench_ray.py)",
        "",
        f"{args.images} generated 320x240 photos, {args.model}, batch {args.batch_size}, "
        f"{args.repeats} repeats alternating, medians; local Ray with {args.cpus} CPUs "
        f"(ray.init {ray_init_s:.1f} s, paid once per `xmr index --executor ray` without "
        f"an address); load average {data['host']['load_avg']}.",
        "",
        "| run | wall images/s | vs local | marginal images/s | vs local | fixed cost s |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {s['wall_ips']} | {s.get('wall_ips_vs_local', 1.0)} "
            f"| {s['marginal_ips']} | {s.get('marginal_ips_vs_local', 1.0)} | {s['fixed_s']} |"
        )
    lines.append("")
    return publish("bench_ray", data, lines, args.out)


if __name__ == "__main__":
    sys.exit(main())
