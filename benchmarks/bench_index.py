"""FAISS index types at several sizes: build time, memory, latency and recall@10.

    python benchmarks/bench_index.py --sizes 10000,100000 --dim 512
    python benchmarks/bench_index.py --sizes 1000000 --dim 512     # ~30 min on 2 cores

Data: `photo_like`, unit vectors shaped like a photo collection's embeddings: half in
20,000 small clusters of very uneven size (bursts of similar photos), 40% spread over
500 broad 24-dimensional topic regions (a continuum of related photos, where cell and
graph boundaries cut through neighbourhoods), 10% lone photos (isotropic), all with
noise; 1,000 held-out queries from the same distribution. (The earlier mixture of
exactly 1,000 clean components let IVF reach recall 0.96 at nprobe 1 on 1M vectors.)

`--types auto` (the default) benchmarks exact flat search plus every configuration
`--index-type auto` can pick at that size under any memory budget
(index_choice.possible_choices), with exactly the product's parameters; a list
(flat,hnsw,ivf,ivfpq) benchmarks those types with the parameters an explicit
`--index-type` gets. For each it reports
  build_s       training + adding (train_s of it training), and tune_s: the build-time
                search for the knobs (recall@10 >= 0.96 on 1,000 held-out items,
                exactly as `xmr index` tunes)
  index_bytes   the serialised FAISS index (IVF-PQ: codes only; its exact re-ranking
                reads the float32 vectors from the memory-mapped vector store on disk)
  single_ms     p50 / p99 latency of one query at a time (`--single` of them)
  batch_ms      per-query time of the 1,000 queries in one call
  recall_at_10  against exact search, on the held-out queries (never seen in tuning)
and every number also as a ratio to exact flat search measured in the same run.
Results merge into benchmarks/results/bench_index.json by size (so a later 1M run
adds to earlier ones) and the markdown summary is rewritten from all of them.
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

from xmr.retrieval.index_choice import (  # noqa: E402
    FLAT_LIMIT,
    IndexChoice,
    possible_choices,
    resolve_choice,
)
from xmr.retrieval.index_types import (  # noqa: E402
    build_tuned,
    faiss_params,
    overlap_recall,
    refine_exact,
)

TYPES = ("flat", "hnsw", "ivf", "ivfpq")


def photo_like(
    n: int,
    dim: int,
    seed: int,
    topics: int = 500,
    clusters: int = 20_000,
    topic_dims: int = 24,
    local: int = 8,
    shares: tuple[float, float, float] = (0.5, 0.4, 0.1),
) -> np.ndarray:
    """(n, dim) float32 unit vectors (see the module docstring); same structure every seed.

    shares: clustered / topic continuum / lone. Clusters sit inside topics (centres drawn
    from their topic's region), weighted log-normally (a few large, many tiny), each with
    its own spread along an 8-d subspace; every point gets isotropic noise of norm 0.3.
    """
    r = np.random.default_rng(12345)
    topic = _unit(r.normal(size=(topics, dim)).astype(np.float32))
    span = r.normal(size=(topics, topic_dims, dim)).astype(np.float32) / np.float32(np.sqrt(dim))
    topic_weight = _normalised(r.lognormal(0.0, 1.0, topics))
    parent = r.choice(topics, clusters, p=topic_weight)
    offset = r.standard_normal((clusters, topic_dims)).astype(np.float32) / np.sqrt(topic_dims)
    centre = _unit(topic[parent] + np.einsum("cl,cld->cd", offset.astype(np.float32), span[parent]))
    weight = _normalised(r.lognormal(0.0, 1.5, clusters))
    spread = r.uniform(0.2, 0.6, clusters).astype(np.float32)
    atoms = r.normal(size=(64, dim)).astype(np.float32) / np.float32(np.sqrt(dim))  # (64, D)
    mixing = r.normal(size=(clusters, local, 64)).astype(np.float32) / np.float32(8)

    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 8192):  # bounded temporaries
        m = min(8192, n - start)
        kind = rng.choice(3, m, p=shares)
        x = np.empty((m, dim), dtype=np.float32)
        rows = kind == 0  # a burst: its cluster's centre + spread along its subspace
        label = rng.choice(clusters, int(rows.sum()), p=weight)
        z = rng.standard_normal((len(label), local), dtype=np.float32)
        z *= (spread[label] / np.float32(np.sqrt(local)))[:, None]
        x[rows] = centre[label] + np.einsum("nl,nla->na", z, mixing[label]) @ atoms
        rows = kind == 1  # the topic continuum
        t = rng.choice(topics, int(rows.sum()), p=topic_weight)
        z = rng.standard_normal((len(t), topic_dims), dtype=np.float32) / np.sqrt(topic_dims)
        x[rows] = topic[t] + np.einsum("nl,nld->nd", z.astype(np.float32), span[t])
        rows = kind == 2  # lone photos
        x[rows] = rng.standard_normal((int(rows.sum()), dim), dtype=np.float32)
        x += rng.standard_normal((m, dim), dtype=np.float32) * np.float32(0.3 / np.sqrt(dim))
        out[start : start + m] = _unit(x)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _normalised(weights: np.ndarray) -> np.ndarray:
    return weights / weights.sum()


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


def configurations(n: int, dim: int, types: list[str]) -> list[IndexChoice]:
    """`auto`: every choice auto can make at this size; else the named types."""
    if types == ["auto"]:
        return [c for c in possible_choices(n, dim) if c.type != "flat"]
    return [resolve_choice(t, n, dim) for t in types if t != "flat"]


def bench_size(n: int, dim: int, types, n_queries: int, n_single: int) -> dict:
    log(f"n={n}: generating {n} + {n_queries} vectors of dim {dim}")
    vectors = photo_like(n, dim, seed=1)
    queries = photo_like(n_queries, dim, seed=2)
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
    nn = flat.search(queries, 10)[0]
    out["neighbour_cosine_median"] = {
        "1st": round(float(np.median(nn[:, 0])), 3),
        "10th": round(float(np.median(nn[:, 9])), 3),
    }
    out["types"]["flat"] = {
        "build_s": round(flat_build, 3),
        "train_s": 0.0,
        "tune_s": 0.0,
        "index_bytes": index_bytes(flat),
        **lat,
        "recall_at_10": 1.0,
        "params": {},
        "search_params": {},
        "auto_may_choose": n < FLAT_LIMIT,
    }
    flat = None  # free 2 GB at 1M before the next type

    auto_types = {c.type for c in possible_choices(n, dim)}
    for choice in configurations(n, dim, types):
        index_type, params = choice.type, dict(choice.params)
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
            "auto_may_choose": index_type in auto_types,
            "fallback": choice.fallback.type if choice.fallback else None,
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
        "Photo-like unit vectors (`photo_like`: 50% in 20,000 small clusters of uneven "
        "size, 40% in 500 broad 24-d topic regions, 10% lone, all with noise); 1,000 "
        "held-out queries from the same distribution. `auto` marks every configuration "
        "`--index-type auto` can pick at that size (any memory budget); the target is "
        "recall@10 >= 0.95 on queries never seen while tuning.",
        "Ratios are to exact flat search in the same run. recall@10 is against exact.",
        "IVF-PQ bytes are codes only: its exact re-ranking reads the vector store on disk.",
        "",
    ]
    for key in sorted(all_results, key=int):
        r = all_results[key]
        if "neighbour_cosine_median" not in r:
            continue  # a result of the earlier mixture: not comparable
        lines += [
            f"## {r['n']:,} vectors x {r['dim']} ({r['host']['threads']} threads, "
            f"{r['host']['machine']}, {r['date']})",
            "",
            f"Median cosine of the 1st / 10th neighbour: "
            f"{r['neighbour_cosine_median']['1st']} / {r['neighbour_cosine_median']['10th']}; "
            f"load average {r['host']['load_avg']}.",
            "",
            "| type | auto | build s | tune s | MiB | p50 ms | p99 ms | batch ms/q | recall@10 "
            "| p50 speed-up | memory vs flat | params | knobs |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, e in r["types"].items():
            knobs = {k: v for k, v in e["search_params"].items() if k in ("nprobe", "efSearch")}
            if "k_factor" in e["search_params"]:
                knobs["k_factor"] = e["search_params"]["k_factor"]
            params = {k: v for k, v in e["params"].items()}
            lines.append(
                f"| {name} | {'yes' if e['auto_may_choose'] else 'no'} "
                f"| {e['build_s']:.1f} | {e['tune_s']:.1f} "
                f"| {e['index_bytes'] / 2**20:.1f} | {e['single_p50_ms']:.3f} "
                f"| {e['single_p99_ms']:.3f} | {e['batch_ms_per_query']:.4f} "
                f"| {e['recall_at_10']:.3f} | {e['vs_flat']['speedup_single_p50']}x "
                f"| {e['vs_flat']['index_bytes']:.2f} | {json.dumps(params)} "
                f"| {json.dumps(knobs)} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated counts")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--types", default="auto", help=f"auto, or a list of {','.join(TYPES)}")
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
