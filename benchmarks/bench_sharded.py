"""Sharded vs one-shot IVF-PQ build over a vector store: build time, memory peak, recall@10.

    python benchmarks/bench_sharded.py --n 1000000 --shards 4     # ~30 min on 2 cores

The vectors (`photo_like` of bench_index.py, 512-d) are written into a real vector
store file (retrieval/arraystore.py), as `xmr index` leaves them; then, each in its own
process so memory peaks do not mix:
  one-shot  index_types.build_tuned: train on the sample, add everything, tune
  sharded   the same training sample, `--shards` shards filled as Ray tasks on a local
            Ray (`--cpus`), each reading the store file itself, merged with merge_into;
            what `xmr compact --index-type ivfpq --shards N --executor ray` runs
Each reports its seconds (train / add / tune), the peak resident memory of its whole
process tree (driver + Ray workers, sampled every 0.2 s), and recall@10 of 1,000
held-out queries against exact search with its own tuned knobs; the two builds' top-10
are compared too (overlap).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_index import photo_like  # noqa: E402
from common import host, log, publish  # noqa: E402

from xmr.retrieval.arraystore import ArrayStore  # noqa: E402
from xmr.retrieval.index_choice import resolve_choice  # noqa: E402
from xmr.retrieval.index_types import (  # noqa: E402
    build_tuned,
    faiss_params,
    overlap_recall,
    refine_exact,
)
from xmr.retrieval.vector_index import StoredVectors  # noqa: E402

DIM = 512


class TreeMonitor:
    """Peak summed RSS and total CPU seconds of this process and all its descendants
    (Ray's workers included), sampled in a thread every `every` seconds. CPU seconds do
    not depend on what else the machine runs; wall times do."""

    def __init__(self, every: float = 0.2):
        import psutil

        self.process, self.every, self.peak = psutil.Process(), every, 0
        self.cpu: dict[int, float] = {}  # pid -> user + system seconds, last seen
        self.start_cpu = self._cpu_of(self.process)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _cpu_of(process) -> float:
        times = process.cpu_times()
        return times.user + times.system

    def _run(self):
        import psutil

        while not self._stop.is_set():
            total = 0
            for p in [self.process, *self.process.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                    self.cpu[p.pid] = self._cpu_of(p)
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.every)

    def stop(self) -> tuple[int, float]:
        """-> (peak RSS bytes, CPU seconds used since the start)."""
        self._stop.set()
        self._thread.join()
        self.cpu[self.process.pid] = self._cpu_of(self.process)
        return self.peak, sum(self.cpu.values()) - self.start_cpu


def build(mode: str, store: Path, n: int, shards: int, cpus: int, out: Path) -> None:
    """One build in this process; writes OUT.json (stats) and OUT.npy (top-10 of queries)."""
    import faiss

    reader = StoredVectors(str(store), DIM)
    ids = np.arange(n, dtype=np.int64)
    choice = resolve_choice("ivfpq", n, DIM)
    params = dict(choice.params)
    map_shards = None
    if mode == "sharded":
        import ray

        from xmr.indexer.executor import Executor

        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        map_shards = Executor("ray").map_shards()
    monitor = TreeMonitor()
    started = time.perf_counter()
    index, knobs, seconds = build_tuned(
        "ivfpq",
        params,
        DIM,
        ids,
        reader,
        shards=shards if mode == "sharded" else 1,
        map_shards=map_shards,
        shard_reader=reader,
    )
    wall = time.perf_counter() - started
    peak, cpu_seconds = monitor.stop()
    queries = photo_like(1000, DIM, seed=2)
    factor = int(knobs["k_factor"])
    _, candidates = index.search(queries, 10 * factor, params=faiss_params("ivfpq", knobs))
    found = refine_exact(queries, candidates, reader, 10)[1]
    np.save(out.with_suffix(".npy"), found)
    stats = {
        "mode": mode,
        "shards": shards if mode == "sharded" else 1,
        "params": params,
        "search_params": knobs,
        "seconds": seconds,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu_seconds, 1),
        "peak_rss_mib": round(peak / 2**20),
        "index_mib": round(faiss.serialize_index(index).nbytes / 2**20, 1),
        "load_avg_after": [round(v, 2) for v in os.getloadavg()],
    }
    out.with_suffix(".json").write_text(json.dumps(stats))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--build", choices=("one-shot", "sharded"), help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build:  # a child: one build
        build(args.build, args.store, args.n, args.shards, args.cpus, args.result)
        return 0

    work = Path(tempfile.mkdtemp(prefix="xmr-bench-sharded-"))
    store_path = work / "images.vec"
    log(f"writing {args.n:,} x {DIM} vectors into {store_path}")
    store = ArrayStore(store_path, (DIM,), "float32")
    for start in range(0, args.n, 100_000):
        part = photo_like(min(100_000, args.n - start), DIM, seed=1000 + start)
        store.write(np.arange(start, start + len(part)), part)
    store.flush()
    store.close()

    results = {}
    for mode in ("one-shot", "sharded"):
        log(f"{mode} build of {args.n:,} vectors")
        command = [sys.executable, __file__, "--build", mode, "--store", str(store_path)]
        command += ["--n", str(args.n), "--shards", str(args.shards), "--cpus", str(args.cpus)]
        command += ["--result", str(work / mode)]
        subprocess.run(command, check=True)
        results[mode] = json.loads((work / f"{mode}.json").read_text())
        log(f"{mode}: {results[mode]}")

    log("exact top-10 of the queries")
    queries = photo_like(1000, DIM, seed=2)
    reader = StoredVectors(str(store_path), DIM)
    from xmr.retrieval.index_types import exact_top_k

    truth = exact_top_k(queries, np.arange(args.n, dtype=np.int64), reader, 10)[1]
    found = {mode: np.load(work / f"{mode}.npy") for mode in results}
    for mode in results:
        results[mode]["recall_at_10"] = round(overlap_recall(found[mode], truth), 4)
    overlap = round(overlap_recall(found["sharded"], found["one-shot"]), 4)
    store_path.unlink()

    data = {
        "n": args.n,
        "dim": DIM,
        "shards": args.shards,
        "ray_cpus": args.cpus,
        "builds": results,
        "top10_overlap_sharded_vs_one_shot": overlap,
        "host": host(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    one, sharded = results["one-shot"], results["sharded"]
    lines = [
        "# Sharded vs one-shot IVF-PQ build (benchmarks/bench_sharded.py)",
        "",
        f"{args.n:,} photo-like vectors x {DIM} in a vector store file; IVF-PQ "
        f"{one['params']}; sharded: {args.shards} shards as Ray tasks on a local Ray with "
        f"{args.cpus} CPUs. CPU s and memory: of the build's whole process tree (Ray "
        f"workers included); CPU seconds compare across runs, wall seconds only under equal "
        f"load (each build's load average is in the JSON). recall@10 "
        f"against exact on 1,000 held-out queries; top-10 overlap of the two builds: "
        f"{overlap}. Load average {data['host']['load_avg']}.",
        "",
        "| build | wall s | CPU s | train s | add s | tune s | peak RSS MiB | index MiB "
        "| recall@10 | knobs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in (("one-shot", one), (f"sharded x{args.shards}", sharded)):
        knobs = {k: r["search_params"][k] for k in ("nprobe", "k_factor")}
        lines.append(
            f"| {name} | {r['wall_s']} | {r['cpu_s']} | {r['seconds']['train']} "
            f"| {r['seconds']['add']} "
            f"| {r['seconds']['tune']} | {r['peak_rss_mib']} | {r['index_mib']} "
            f"| {r['recall_at_10']} | {json.dumps(knobs)} |"
        )
    lines.append("")
    return publish("bench_sharded", data, lines, args.out)


if __name__ == "__main__":
    sys.exit(main())
