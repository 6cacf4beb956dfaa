"""FAISS index types at several sizes: build time, memory, latency and recall@10.

    python benchmarks/bench_index.py --sizes 10000,100000 --dim 512
    python benchmarks/bench_index.py --sizes 1000000 --dim 512

Data: unit vectors from a Gaussian mixture on the sphere (1,000 components, each
spread along its own 16-d subspace plus isotropic noise: see `mixture`), and 1,000
held-out queries drawn from the same mixture.
For each type (flat, hnsw, ivf, ivfpq) it reports
  build_s       training + adding (train_s of it training), and tune_s: the build-time
                search for the knobs (recall@10 >= 0.96 on 1,000 held-out items,
                exactly as `xmr index` tunes)
  index_bytes   the serialised FAISS index (IVF-PQ: codes only; its exact re-ranking
                reads the float32 vectors from the memory-mapped vector store on disk)
  single_ms     p50 / p99 latency of one query at a time (`--single` of them)
  batch_ms      per-query time of the 1,000 queries in one call
  recall_at_10  against exact search, on the held-out queries
and every number also as a ratio to exact flat search measured in the same run.
Results merge into benchmarks/results/bench_index.json by size (so a later 1M run
adds to earlier ones) and the markdown summary is rewritten from all of them.

To keep a 1M run to minutes on a few cores: at >= 500k items HNSW uses M=16,
efConstruction=40 (M=32 below, as `xmr index`), IVF uses sqrt(N) cells instead of the
product's 2 sqrt(N) (k-means on 64 points per cell either way), and single-query
flat latency takes 30 queries (a 2 GB scan each).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from common import RESULTS, log  # (also puts the repository on sys.path)

from retrieval.index_choice import resolve_choice  # noqa: E402
from retrieval.index_types import (  # noqa: E402
    build_tuned,
    faiss_params,
    overlap_recall,
    refine_exact,
)

TYPES = ("flat", "hnsw", "ivf", "ivfpq")


def mixture(n: int, dim: int, seed: int, centres: int = 1000, local: int = 16) -> np.ndarray:
    """(n, dim) float32 unit vectors from a Gaussian mixture; same components every seed.

    Each of `centres` components is a unit centre plus a spread of norm ~2 along its own
    `local`-dimensional subspace plus isotropic noise of norm ~0.5, then normalised.
    Isotropic noise alone makes every cluster-mate equally near in 512-d (any method
    that finds the cluster scores recall 1.0); a low-dimensional local spread gives
    real neighbourhoods that cross into nearby components, like embeddings do (nearest
    neighbour cosine ~0.65, 10th ~0.45 at 100k).
    """
    r = np.random.default_rng(12345)
    centre = r.normal(size=(centres, dim)).astype(np.float32)
    centre /= np.linalg.norm(centre, axis=1, keepdims=True)
    basis = r.normal(size=(centres, local, dim)).astype(np.float32) / np.float32(np.sqrt(dim))
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 8192):  # bounded temporaries (basis[label] is 8192 x 16 x D)
        m = min(8192, n - start)
        label = rng.integers(0, centres, m)
        z = rng.standard_normal((m, local), dtype=np.float32) * np.float32(2.0 / np.sqrt(local))
        x = centre[label] + np.einsum("nl,nld->nd", z, basis[label])
        x += rng.standard_normal((m, dim), dtype=np.float32) * np.float32(0.5 / np.sqrt(dim))
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


class Progress:
    """A build reporter that logs every ~10% (build_tuned's stage/advance/done)."""

    def __init__(self, n: int, name: str):
        self.n, self.name, self.done_n, self.next = n, name, 0, n // 10

    def stage(self, name: str, total: int) -> None:
        self.started = time.perf_counter()

    def advance(self, k: int) -> None:
        self.done_n += k
        if self.done_n >= self.next and self.n >= 200_000:
            rate = self.done_n / (time.perf_counter() - self.started)
            log(f"  {self.name}: added {self.done_n:,}/{self.n:,} ({rate:,.0f}/s)")
            self.next += self.n // 10

    def done(self) -> None:
        pass


def index_bytes(index) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "i.faiss")
        faiss.write_index(index, path)
        return os.path.getsize(path)


def latency(search, queries: np.ndarray, n_single: int) -> dict:
    """Single-query p50/p99 (ms) and per-query time of one batched call (ms)."""
    search(queries[:8])  # warm-up: page in, allocate
    times = []
    for q in queries[:n_single]:
        started = time.perf_counter()
        search(q[None, :])
        times.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    _, found = search(queries)
    batch = (time.perf_counter() - started) * 1000 / len(queries)
    return {
        "single_p50_ms": round(float(np.percentile(times, 50)), 4),
        "single_p99_ms": round(float(np.percentile(times, 99)), 4),
        "batch_ms_per_query": round(batch, 4),
        "found": found,
    }


def bench_size(n: int, dim: int, types, n_queries: int, n_single: int) -> dict:
    log(f"n={n}: generating {n} + {n_queries} vectors of dim {dim}")
    vectors = mixture(n, dim, seed=1)
    queries = mixture(n_queries, dim, seed=2)
    read = vectors.__getitem__
    out: dict = {"n": n, "dim": dim, "queries": n_queries, "types": {}}

    log(f"n={n}: flat (exact)")
    started = time.perf_counter()
    flat = faiss.IndexFlatIP(dim)
    flat.add(vectors)
    flat_build = time.perf_counter() - started
    single = n_single if n < 500_000 else min(n_single, 30)
    lat = latency(lambda q: flat.search(q, 10), queries, single)
    truth = lat.pop("found")
    out["types"]["flat"] = {
        "build_s": round(flat_build, 3),
        "train_s": 0.0,
        "tune_s": 0.0,
        "index_bytes": index_bytes(flat),
        **lat,
        "recall_at_10": 1.0,
        "params": {},
        "search_params": {},
    }
    flat = None  # free 2 GB at 1M before the next type

    for index_type in types:
        if index_type == "flat":
            continue
        choice = resolve_choice(index_type, n, dim)
        params = dict(choice.params)
        if index_type == "hnsw" and n >= 500_000:
            params.update(m=16, ef_construction=40)
        if index_type in ("ivf", "ivfpq") and n >= 500_000:
            params["nlist"] = int(np.sqrt(n))  # k-means over 2 sqrt(N) cells: minutes more
        log(f"n={n}: {index_type} {params}: training, adding, tuning on held-out items")
        index, knobs, seconds = build_tuned(
            index_type, params, dim, np.arange(n), read, reporter=Progress(n, index_type)
        )
        build, tune = seconds["train"] + seconds["add"], seconds["tune"]
        factor = int(knobs.get("k_factor", 1))

        def search(q, index=index, index_type=index_type, knobs=knobs, factor=factor):
            params = faiss_params(index_type, knobs)
            if factor > 1:  # IVF-PQ: exact re-scoring of factor x k candidates
                _, candidates = index.search(q, 10 * factor, params=params)
                return refine_exact(q, candidates, read, 10)
            return index.search(q, 10, params=params)

        log(f"n={n}: {index_type}: knobs {knobs}; measuring latency")
        lat = latency(search, queries, n_single)
        found = lat.pop("found")
        out["types"][index_type] = {
            "build_s": round(build, 3),
            "train_s": seconds["train"],
            "tune_s": round(tune, 3),
            "index_bytes": index_bytes(index),
            **lat,
            "recall_at_10": round(overlap_recall(found, truth), 4),
            "params": params,
            "search_params": knobs,
        }
        log(f"n={n}: {index_type}: {out['types'][index_type]}")
        del index
    _add_ratios(out)
    return out


def _add_ratios(result: dict) -> None:
    flat = result["types"]["flat"]
    for entry in result["types"].values():
        entry["vs_flat"] = {
            key: round(entry[key] / flat[key], 4) if flat[key] else None
            for key in ("build_s", "index_bytes", "single_p50_ms", "single_p99_ms")
        }
        entry["vs_flat"]["batch_ms_per_query"] = round(
            entry["batch_ms_per_query"] / flat["batch_ms_per_query"], 4
        )
        entry["vs_flat"]["speedup_single_p50"] = round(
            flat["single_p50_ms"] / entry["single_p50_ms"], 2
        )


def markdown(all_results: dict) -> str:
    lines = [
        "# Index benchmark (benchmarks/bench_index.py)",
        "",
        "Clustered unit vectors (Gaussian mixture on the sphere, 1,000 components with "
        "16-d local spread); 1,000 held-out queries from the same mixture.",
        "Ratios are to exact flat search in the same run. recall@10 is against exact.",
        "IVF-PQ bytes are codes only: its exact re-ranking reads the vector store on disk.",
        "",
    ]
    for key in sorted(all_results, key=int):
        r = all_results[key]
        lines += [
            f"## {r['n']:,} vectors x {r['dim']} ({r['host']['threads']} threads, "
            f"{r['host']['machine']}, {r['date']})",
            "",
            "| type | build s | tune s | MiB | p50 ms | p99 ms | batch ms/q | recall@10 "
            "| p50 speed-up | memory vs flat | knobs |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, e in r["types"].items():
            knobs = {k: v for k, v in e["search_params"].items() if k in ("nprobe", "efSearch")}
            if "k_factor" in e["search_params"]:
                knobs["k_factor"] = e["search_params"]["k_factor"]
            lines.append(
                f"| {name} | {e['build_s']:.1f} | {e['tune_s']:.1f} "
                f"| {e['index_bytes'] / 2**20:.1f} | {e['single_p50_ms']:.3f} "
                f"| {e['single_p99_ms']:.3f} | {e['batch_ms_per_query']:.4f} "
                f"| {e['recall_at_10']:.3f} | {e['vs_flat']['speedup_single_p50']}x "
                f"| {e['vs_flat']['index_bytes']:.2f} | {json.dumps(knobs)} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated counts")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--types", default=",".join(TYPES))
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=200, help="single-query timings")
    parser.add_argument("--threads", type=int, default=None, help="FAISS threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "bench_index.json"
    all_results = json.loads(json_path.read_text()) if json_path.exists() else {}
    for n in (int(s) for s in args.sizes.split(",")):
        started = time.perf_counter()
        result = bench_size(n, args.dim, types, args.queries, args.single)
        result["seconds"] = round(time.perf_counter() - started, 1)
        result["date"] = time.strftime("%Y-%m-%d %H:%M")
        result["host"] = {
            "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "threads": faiss.omp_get_max_threads(),
            "faiss": faiss.__version__,
            "load_avg": [round(v, 2) for v in os.getloadavg()],
        }
        all_results[str(n)] = result
        json_path.write_text(json.dumps(all_results, indent=2))
        (args.out / "bench_index.md").write_text(markdown(all_results))
        log(f"n={n}: done in {result['seconds']}s -> {json_path}")
    print(markdown(all_results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
