"""Cold `xmr search` (a new process, no server) before and after ONNX Runtime, side by side.

    python benchmarks/bench_cold_search.py                  # 5 runs each, interleaved
    python benchmarks/bench_cold_search.py --repeats 3 --images 100
    python benchmarks/bench_cold_search.py --baseline-python /old/checkout/.venv/bin/python

1. Builds (once, kept in --work) an xmr-tiny index of generated photos (its re-ranker's
   image features kept, as `xmr index` does by default) and a ViT-B-32 index with random
   weights; `xmr index` also makes the ONNX exports, into a cache inside --work
   (XMR_CACHE_DIR), whose size on disk is reported.
2. For each case, `xmr search --no-server --json` as a new process, after (ONNX Runtime,
   the default) and before (XMR_ONNX=0: PyTorch and open_clip, as xmr did until now),
   interleaved, --repeats times: the median wall time of each, and `xmr --help`.
   With --baseline-python, the same cases through another install of xmr (an earlier
   commit's venv) on the same indexes and cache, as a third column.
3. Checks that the two paths return the same top-10 ids, and (one `python -X importtime`
   run per case) which heavy packages the ONNX path imported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

QUERY = "a red circle left of a blue square"
Completed = subprocess.CompletedProcess
HEAVY = ("torch", "open_clip", "torchvision", "timm", "transformers", "onnxruntime")


def xmr(
    *args: str, env: dict, importtime: bool = False, python: str = sys.executable
) -> tuple[float, Completed]:
    command = [python, *(["-X", "importtime"] if importtime else []), "-m", "xmr"]
    started = time.perf_counter()
    result = subprocess.run([*command, *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"xmr {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return seconds, result


def build(work: Path, images: int, b32_images: int, env: dict) -> dict:
    """The two indexes (kept between runs), and the seconds each `xmr index` took."""
    built = {}
    for name, model, n in (("tiny", "xmr-tiny", images), ("b32", "ViT-B-32:none", b32_images)):
        index = work / f"index-{name}"
        if (index / "manifest.json").is_file():
            continue
        photos = work / f"photos-{name}"
        common.make_photos(photos, n, size=(320, 240))
        common.log(f"indexing {n} photos with {model}")
        seconds, _ = xmr("index", str(photos), "--index", str(index), "--model", model, env=env)
        built[name] = round(seconds, 2)
    return built


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/xmr-bench-cold"))
    parser.add_argument("--images", type=int, default=200, help="xmr-tiny index size")
    parser.add_argument("--b32-images", type=int, default=16, help="ViT-B-32 index size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    parser.add_argument(
        "--baseline-python",
        help="the Python of another xmr install (an earlier commit), timed beside",
    )
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    cache = args.work / "cache"
    env = common.user_env(XMR_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1")
    env.pop("XMR_ONNX", None)
    env.pop("XMR_INDEX", None)
    started_load = [round(v, 2) for v in os.getloadavg()]
    index_seconds = build(args.work, args.images, args.b32_images, env)

    tiny, b32 = str(args.work / "index-tiny"), str(args.work / "index-b32")
    query_photo = str(common.make_photos(args.work / "query", 1, size=(640, 480))[0])
    common_args = ["--no-server", "--json", "-k", "10"]
    cases = {
        "xmr-tiny re-ranked K=16": ["search", QUERY, "--index", tiny, "-K", "16"],
        "xmr-tiny stage 1": ["search", QUERY, "--index", tiny, "--no-rerank"],
        "ViT-B-32 (random weights) stage 1": ["search", QUERY, "--index", b32, "--no-rerank"],
        "ViT-B-32 image->image (a new photo)": ["search", "--image", query_photo, "--index", b32],
    }
    python = sys.executable
    paths = {
        "after (ONNX Runtime)": (env, python),
        "before (PyTorch, XMR_ONNX=0)": ({**env, "XMR_ONNX": "0"}, python),
    }
    if args.baseline_python:
        paths["earlier xmr (ONNX Runtime)"] = (env, args.baseline_python)
    times: dict[str, dict[str, list[float]]] = {c: {p: [] for p in paths} for c in cases}
    answers: dict[str, dict[str, list[int]]] = {c: {} for c in cases}
    help_times = []
    for case_args in cases.values():  # a first, unmeasured run: file caches warm
        for path_env, path_python in paths.values():
            xmr(*case_args, *common_args, env=path_env, python=path_python)
    for rep in range(args.repeats):
        common.log(f"round {rep + 1} of {args.repeats}")
        for case, case_args in cases.items():
            for path, (path_env, path_python) in paths.items():
                seconds, result = xmr(*case_args, *common_args, env=path_env, python=path_python)
                times[case][path].append(seconds)
                answers[case][path] = [r["id"] for r in json.loads(result.stdout)]
        help_times.append(xmr("--help", env=env)[0])

    imported = {}
    for case, case_args in cases.items():
        _, result = xmr(*case_args, *common_args, env=env, importtime=True)
        names = {
            line.rsplit("|", 1)[1].strip().split(".")[0]
            for line in result.stderr.splitlines()
            if line.startswith("import time:")
        }
        imported[case] = sorted(n for n in HEAVY if n in names)

    sizes = {p.name: folder_bytes(p) for p in sorted(cache.glob("onnx/*")) if p.is_dir()}
    specs = {}
    for folder in cache.glob("onnx/*"):
        meta = folder / "meta.json"
        if meta.is_file():
            data = json.loads(meta.read_text())
            specs[folder.name] = data.get("spec") or data.get("name")
    data = {
        "command": "python benchmarks/bench_cold_search.py " + " ".join(sys.argv[1:]),
        "host": {**common.host(), "load_avg_at_start": started_load},
        "load_avg_at_end": [round(v, 2) for v in os.getloadavg()],
        "repeats": args.repeats,
        "index_seconds": index_seconds,
        "median_seconds": {
            case: {path: round(common.median(v), 3) for path, v in per.items()}
            for case, per in times.items()
        },
        "all_seconds": {
            case: {path: [round(s, 3) for s in v] for path, v in per.items()}
            for case, per in times.items()
        },
        "help_median_seconds": round(common.median(help_times), 3),
        "same_top10": {c: len({tuple(v) for v in a.values()}) == 1 for c, a in answers.items()},
        "heavy_imports_after": imported,
        "export_bytes": {specs.get(name, name): size for name, size in sizes.items()},
    }
    after, before = list(paths)[:2]
    lines = [
        "# Cold `xmr search` (new process, no server): ONNX Runtime vs PyTorch",
        "",
        f"`{data['command']}`; median of {args.repeats}, interleaved; load average "
        f"{started_load} at the start, {data['load_avg_at_end']} at the end "
        f"({data['host']['cpus']} CPUs).",
        "",
        "| query | " + " | ".join(paths) + " | speed-up | same top 10 | heavy imports after |",
        "|---|" + "---:|" * len(paths) + "---:|---|---|",
    ]
    for case, med in data["median_seconds"].items():
        seconds = " | ".join(f"{med[p]:.2f} s" for p in paths)
        lines.append(
            f"| {case} | {seconds} | {med[before] / med[after]:.1f}x | "
            f"{data['same_top10'][case]} | {', '.join(imported[case]) or '-'} |"
        )
    lines += [
        "",
        f"`xmr --help`: {data['help_median_seconds']:.2f} s (median).",
        "",
        "ONNX exports on disk (per model, in the cache):",
        "",
    ]
    lines += [f"- {name}: {size / 1e6:.1f} MB" for name, size in data["export_bytes"].items()]
    return common.publish("bench_cold_search", data, lines, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
