"""Near-duplicate search at 10k and 100k vectors, and what a query expression costs.

    python benchmarks/bench_duplicates.py                     # 10k and 100k, 512-d
    python benchmarks/bench_duplicates.py --sizes 10000 --index /tmp/xmr-bench-serve/n10000/index

1. `duplicate_groups` (the vector stage of `xmr duplicates`; the pixel check runs only on
   the few candidate pairs) on clustered synthetic vectors: many small clusters of varying
   size and spread plus uniform noise, with 1% of the vectors given 1-4 planted near copies
   (cosine >= 0.97 to their original). Each size runs in its own process, so its peak RSS
   is its own. Reports seconds, peak RSS, planted pairs found, and groups formed.
2. With --index (an xmr-tiny index): a plain text query against an expression of three
   terms (the same sentence minus two weighted phrases: one positive text term, so the
   re-ranker reads it as it reads the plain query), in one process, stage 1 only and
   re-ranked, median of --repeats.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def clustered(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(N, D) unit vectors and the planted (original, copy) pairs among them."""
    rng = np.random.default_rng(seed)
    n_plant = n // 100
    copies = rng.integers(1, 5, n_plant)  # 1-4 near copies each
    n_base = n - int(copies.sum())
    centres = rng.normal(size=(max(1, n_base // 20), dim)).astype(np.float32)
    sizes = rng.zipf(1.6, len(centres)).clip(1, 400)  # many small clusters, a few large
    owner = rng.choice(len(centres), n_base, p=sizes / sizes.sum())
    spread = rng.uniform(0.3, 1.2, len(centres)).astype(np.float32)[owner, None]
    base = centres[owner] + spread * rng.normal(size=(n_base, dim)).astype(np.float32)
    noise = rng.random(n_base) < 0.1  # a tenth is plain noise, in no cluster
    base[noise] = rng.normal(size=(int(noise.sum()), dim)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    originals = rng.choice(n_base, n_plant, replace=False)
    extra, pairs = [], []
    for original, count in zip(originals, copies, strict=True):
        for _ in range(count):
            v = base[original] + 0.012 * rng.normal(size=dim).astype(np.float32)
            extra.append(v / np.linalg.norm(v))
            pairs.append((int(original), n_base + len(extra) - 1))
    return np.concatenate([base, np.asarray(extra, np.float32)]), pairs


def one_size(n: int, dim: int, threshold: float) -> dict:
    """Runs in its own process (see main)."""
    from xmr.retrieval.duplicates import duplicate_groups

    vectors, pairs = clustered(n, dim)
    started = time.perf_counter()
    groups = duplicate_groups(vectors, threshold)
    seconds = time.perf_counter() - started
    group_of = {int(i): g for g, members in enumerate(groups) for i in members}
    found = sum(
        group_of.get(a) is not None and group_of.get(a) == group_of.get(b) for a, b in pairs
    )
    planted_members = {i for pair in pairs for i in pair}
    return {
        "vectors": n,
        "dim": dim,
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "planted_pairs": len(pairs),
        "planted_pairs_found": int(found),
        "groups": len(groups),
        "groups_without_a_planted_pair": sum(
            not (set(map(int, g)) & planted_members) for g in groups
        ),
    }


def expression_overhead(index: Path, repeats: int) -> dict:
    from xmr.engine.engine import Engine

    engine = Engine(index)
    plain = "A big red circle on the left of a small blue square on a white background."
    # One positive text term: the re-ranker reads it, so both queries take the same path.
    composite = f"{plain} - 0.5:a red circle - 0.25:a green star"
    out = {}
    for rerank in (False, True):
        assert engine.search(composite, rerank=rerank).reranked == rerank
        times = {"plain": [], "expression": []}
        for _ in range(2):  # warm up both paths
            engine.search(plain, rerank=rerank)
            engine.search(composite, rerank=rerank)
        for _ in range(repeats):
            for name, query in (("plain", plain), ("expression", composite)):
                started = time.perf_counter()
                engine.search(query, rerank=rerank)
                times[name].append((time.perf_counter() - started) * 1000)
        key = "re-ranked" if rerank else "stage 1"
        out[key] = {name: round(common.median(t), 2) for name, t in times.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--index", type=Path, help="an xmr-tiny index for the query timings")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process's size
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_size(args.one, args.dim, args.threshold)))
        return
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        common.log(f"duplicates over {n:,} vectors")
        child = [sys.executable, __file__, "--one", str(n), "--dim", str(args.dim)]
        result = subprocess.run(
            [*child, "--threshold", str(args.threshold)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        common.log(str(rows[-1]))
    data = {"host": common.host(), "threshold": args.threshold, "rows": rows}
    if args.index:
        data["query_ms"] = expression_overhead(args.index, args.repeats)
    common.write_results("bench_duplicates", data, markdown(data), args.out)
    print(markdown(data))


def markdown(data: dict) -> str:
    lines = [
        f"### Near-duplicate groups (vector stage), cosine >= {data['threshold']}",
        "",
        f"host: {data['host']['cpus']} CPUs, load average {data['host']['load_avg']}",
        "",
        "| vectors | dim | seconds | peak RSS MiB | planted pairs found | groups | groups "
        "with no planted pair |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['vectors']:,} | {r['dim']} | {r['seconds']} | {r['peak_rss_mib']} | "
            f"{r['planted_pairs_found']} / {r['planted_pairs']} | {r['groups']} | "
            f"{r['groups_without_a_planted_pair']} |"
        )
    if "query_ms" in data:
        lines += ["", "Query expression vs plain query (median ms, one process):", ""]
        lines += ["| stage | plain | 3-term expression |", "|---|---:|---:|"]
        for stage, t in data["query_ms"].items():
            lines.append(f"| {stage} | {t['plain']} | {t['expression']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
