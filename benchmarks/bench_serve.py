"""`xmr serve` under load: warm HTTP latency, throughput and memory, and cold `xmr search`.

    python benchmarks/bench_serve.py                          # 10,000 generated scenes
    python benchmarks/bench_serve.py --images 2000 --seconds 5   # a quick look
    python benchmarks/bench_serve.py --before /tmp/xmr-before    # + cold CLI of an older xmr

1. Builds (once, kept in --work) an xmr-tiny index of generated scenes with their captions'
   re-ranker features kept, then starts `xmr serve` on a free loopback port.
2. Text queries (the corpus's own captions) at concurrency 1 / 8 / 32, for stage 1 only
   and re-ranked at K = 16 and K = 128: each level runs --requests requests or --seconds,
   whichever ends first, over keep-alive connections. p50 / p99 latency, queries per
   second, errors, and the server's RSS after each level. --passes repeats every level:
   a server whose memory is flat ends the later passes where the first one ended.
3. Cold `xmr search` wall time (new process each, median of --cold): through the running
   server, and in-process (--no-server); with --before, the same command of another xmr
   checkout (same index) beside them.
Traffic goes to 127.0.0.1 only and every phase is bounded.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

LEVELS = (1, 8, 32)
MODES = {
    "stage 1": {"rerank": "false"},
    "re-ranked K=16": {"candidates": 16},
    "re-ranked K=128": {"candidates": 128},
}
AIMS = {"stage 1": 15.0, "re-ranked K=16": 30.0}  # p50 ms over HTTP on two cores


def build_index(work: Path, n_images: int) -> tuple[Path, list[str]]:
    """An xmr-tiny index of `n_images` generated scenes (reused when already built)."""
    index = work / "index"
    corpus = work / "corpus"
    captions_file = corpus / "captions.json"
    if not captions_file.exists():
        from xmr.training.corpus import make_corpus

        common.log(f"generating {n_images} scenes")
        make_corpus(corpus, n_images, seed=4321, overwrite=True)
    data = json.loads(captions_file.read_text())
    captions = [s["raw"] for image in data["images"] for s in image["sentences"]]
    if not (index / "manifest.json").exists():
        common.log("indexing with xmr-tiny (images and re-ranker features)")
        run = [xmr(), "index", str(corpus / "images"), "--index", str(index), "-q"]
        subprocess.run([*run, "--model", "xmr-tiny"], check=True)
    return index, captions


def xmr() -> str:
    return str(Path(sys.executable).parent / "xmr")


def start_server(index: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [xmr(), "serve", "--index", str(index), "--port", "0", "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    record = index / "server.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"xmr serve failed: {process.stderr.read()}")
        try:
            data = json.loads(record.read_text())
            if data["pid"] == process.pid:
                return process, data["url"]
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise SystemExit("xmr serve did not start within 300 s")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load(url: str, captions: list[str], params: dict, clients: int, requests: int, seconds):
    """`requests` queries from `clients` threads (each its own keep-alive connection),
    stopping early after `seconds`. -> latencies (ms), errors, wall seconds."""
    host = urlsplit(url).netloc
    extra = "".join(f"&{k}={v}" for k, v in params.items())
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    stop_at = time.monotonic() + seconds

    def client() -> None:
        connection = http.client.HTTPConnection(host, timeout=60)
        while time.monotonic() < stop_at:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            path = f"/api/search?q={quote(captions[i % len(captions)])}&k=10{extra}"
            started = time.perf_counter()
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                body = response.read()
                ok = response.status == 200 and json.loads(body)["results"]
            except (OSError, http.client.HTTPException, ValueError) as exc:
                ok, body = False, repr(exc).encode()
                connection.close()
                connection = http.client.HTTPConnection(host, timeout=60)
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                if ok:
                    latencies.append(elapsed)
                else:
                    errors.append(body[:200].decode(errors="replace"))
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return round(float(np.percentile(values, q)), 2) if values else float("nan")


def cold_cli(command: list[str], runs: int, cwd: Path | None = None) -> dict:
    times, outputs = [], set()
    for _ in range(runs):
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, cwd=cwd)
        times.append(time.perf_counter() - started)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed: {result.stderr}")
        outputs.add(result.stdout)
    return {
        "median_s": round(common.median(times), 3),
        "runs": [round(t, 3) for t in times],
        "same_output_every_run": len(outputs) == 1,
        "output": outputs.pop(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/xmr-bench-serve"))
    parser.add_argument("--requests", type=int, default=400, help="per level and mode")
    parser.add_argument("--seconds", type=float, default=30.0, help="per level and mode")
    parser.add_argument("--cold", type=int, default=5, help="cold CLI runs per variant")
    parser.add_argument("--passes", type=int, default=2, help="times every level runs")
    parser.add_argument("--before", type=Path, help="an older xmr checkout to compare")
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args()

    host = common.host()
    index, captions = build_index(args.work / f"n{args.images}", args.images)
    process, url = start_server(index)
    rows = []
    try:
        rss_start = rss_mib(process.pid)
        common.log(f"server {url} up, RSS {rss_start:.0f} MiB")
        load(url, captions, {}, 2, 20, 30)  # first requests of each kind pay one-time costs
        rss_after_pass = []
        for run, (mode, params), clients in itertools.product(
            range(1, args.passes + 1), MODES.items(), LEVELS
        ):
            latencies, errors, wall = load(
                url, captions, params, clients, args.requests, args.seconds
            )
            row = {
                "pass": run,
                "mode": mode,
                "clients": clients,
                "requests": len(latencies) + len(errors),
                "errors": len(errors),
                "p50_ms": percentile(latencies, 50),
                "p99_ms": percentile(latencies, 99),
                "qps": round(len(latencies) / wall, 1),
                "rss_mib": round(rss_mib(process.pid), 1),
                "first_error": errors[0] if errors else None,
            }
            rows.append(row)
            common.log(
                f"pass {run} {mode:>16} x{clients:<3} p50 {row['p50_ms']} ms  "
                f"p99 {row['p99_ms']} ms  {row['qps']} q/s  {row['errors']} errors  "
                f"RSS {row['rss_mib']:.0f} MiB"
            )
            if mode == list(MODES)[-1] and clients == LEVELS[-1]:
                rss_after_pass.append(row["rss_mib"])
        rss_end = rss_mib(process.pid)
        query = captions[7]
        search = [xmr(), "search", query, "--index", str(index), "-k", "5"]
        cold = {"through the server": cold_cli(search, args.cold)}
    finally:
        process.terminate()
        process.wait(timeout=60)
    cold["in-process (--no-server)"] = cold_cli([*search, "--no-server"], max(3, args.cold // 2))
    if args.before:  # its own index of the same images: older xmr reads older formats
        old_index = index.parent / "index-before"
        old = [sys.executable, "-m", "cli.main"]
        if not (old_index / "manifest.json").exists():
            common.log("indexing the same images with the older xmr")
            images = str(index.parent / "corpus" / "images")
            build = [*old, "index", images, "--index", str(old_index), "--model", "xmr-tiny"]
            subprocess.run([*build, "-q"], check=True, cwd=args.before)
        before = [*old, "search", query, "--index", str(old_index), "-k", "5"]
        cold["before this change (same query)"] = cold_cli(
            before, max(3, args.cold // 2), cwd=args.before
        )
    same = len({entry["output"] for key, entry in cold.items() if "before" not in key}) == 1
    data = {
        "host": host,
        "images": args.images,
        "url": url,
        "rows": rows,
        "rss_mib": {
            "start": round(rss_start, 1),
            "after_each_pass": rss_after_pass,
            "end": round(rss_end, 1),
        },
        "cold_cli": {k: {x: y for x, y in v.items() if x != "output"} for k, v in cold.items()},
        "cold_outputs_identical": same,
        "aims_p50_ms": AIMS,
    }
    common.write_results("bench_serve", data, markdown(data), args.out)
    print(markdown(data))


def markdown(data: dict) -> str:
    lines = [
        f"### `xmr serve`: xmr-tiny, {data['images']:,} generated images, text queries over "
        "HTTP on loopback",
        "",
        f"host: {data['host']['cpus']} CPUs, load average at start {data['host']['load_avg']}; "
        f"server RSS {data['rss_mib']['start']:.0f} MiB at start; after each pass over "
        f"every level: {', '.join(f'{m:.0f}' for m in data['rss_mib']['after_each_pass'])} MiB",
        "",
        "| pass | mode | clients | requests | errors | p50 ms | p99 ms | queries/s | RSS MiB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['pass']} | {r['mode']} | {r['clients']} | {r['requests']} | {r['errors']} | "
            f"{r['p50_ms']} | {r['p99_ms']} | {r['qps']} | {r['rss_mib']:.0f} |"
        )
    lines += ["", "Cold `xmr search` (a new process each, median wall time):", ""]
    lines += ["| variant | median s | runs |", "|---|---:|---|"]
    for name, entry in data["cold_cli"].items():
        lines.append(f"| {name} | {entry['median_s']} | {entry['runs']} |")
    same = "identical" if data["cold_outputs_identical"] else "NOT identical"
    lines += ["", f"The variants' printed results were {same}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
