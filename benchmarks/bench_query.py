"""`xmr search` wall time: cold (a new process per query) and warm (one process, repeated).

    python benchmarks/bench_query.py                      # builds a tiny-model index
    python benchmarks/bench_query.py --index DIR --cold 5 # an existing index

cold   `xmr search QUERY --index DIR` as a user runs it: interpreter start, imports,
       model load, index open, encode, search, print. Median of --cold runs.
warm   the same search through the library in one process (Searcher.search after a
       text_query), median of --warm repeats; split into encode / stage 1 / total,
       and once more with a filter (--under one subfolder) to show its cost.
Re-ranking is off unless --rerank (the index's own re-ranker, if it has one).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

QUERIES = ["a red circle", "two blue squares on green", "a dark photo", "bright yellow shapes"]


def build_index(work: Path, n_images: int) -> Path:
    from indexer.images import IndexOptions, index_folders
    from retrieval.encoder import load_encoder
    from retrieval.library import Library

    spec = common.tiny_spec(work / "models")
    half = n_images // 2
    common.make_photos(work / "photos" / "a", half, (256, 192))
    common.make_photos(work / "photos" / "b", n_images - half, (256, 192))
    encoder = load_encoder(spec, "cpu")
    index = work / "index"
    with Library.open_or_create(index, encoder) as library:
        index_folders(library, encoder, [work / "photos"], IndexOptions(workers=0))
    return index


def xmr_command() -> list[str]:
    script = Path(sys.executable).parent / "xmr"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli.main"]


def cold(index: Path, runs: int, rerank: bool) -> dict:
    import os

    env = dict(os.environ, XMR_NO_RANDOM_WARNING="1", HF_HUB_OFFLINE="1")
    times = []
    for i in range(runs):
        args = [*xmr_command(), "search", QUERIES[i % len(QUERIES)], "--index", str(index)]
        if not rerank:
            args.append("--no-rerank")
        started = time.perf_counter()
        done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=common.REPO)
        times.append((time.perf_counter() - started) * 1000)
        if done.returncode != 0:
            raise RuntimeError(f"xmr search failed: {done.stderr.strip()}")
    median_ms = round(common.median(times), 1)
    return {"runs": runs, "median_ms": median_ms, "min_ms": round(min(times), 1)}


def warm(index: Path, repeats: int, rerank: bool) -> dict:
    from retrieval.encoder import load_encoder
    from retrieval.filters import SearchFilter
    from retrieval.library import Library
    from retrieval.reranker import resolve_reranker
    from retrieval.searcher import Searcher

    with Library.open(index) as library:
        encoder = load_encoder(library.encoder_spec, None)
        ranker = resolve_reranker("auto", encoder) if rerank else None
        searcher = Searcher(library, encoder, ranker)
        subfolders = sorted({str(Path(p).parent) for p in _some_paths(library)})
        where = SearchFilter.parse([subfolders[0]]) if subfolders else None
        searcher.search(searcher.text_query(QUERIES[0]), "images")  # warm-up
        encode, stage1, total, filtered = [], [], [], []
        for i in range(repeats):
            text = QUERIES[i % len(QUERIES)]
            t0 = time.perf_counter()
            query = searcher.text_query(text)
            t1 = time.perf_counter()
            library.images.index.search(query.vector[None, :], 10)
            t2 = time.perf_counter()
            searcher.search(searcher.text_query(text), "images", k=10)
            t3 = time.perf_counter()
            searcher.search(searcher.text_query(text), "images", k=10, where=where)
            t4 = time.perf_counter()
            encode.append((t1 - t0) * 1000)
            stage1.append((t2 - t1) * 1000)
            total.append((t3 - t2) * 1000)
            filtered.append((t4 - t3) * 1000)
        n_items = library.images.index.live_count
        kind = library.images.index.kind
    return {
        "repeats": repeats,
        "items": n_items,
        "index_type": kind,
        "encode_median_ms": round(common.median(encode), 3),
        "faiss_median_ms": round(common.median(stage1), 3),
        "search_median_ms": round(common.median(total), 3),
        "filtered_search_median_ms": round(common.median(filtered), 3),
        "filter": where.under[0] if where else None,
        "reranked": ranker is not None,
    }


def _some_paths(library) -> list[str]:
    from sqlalchemy import select

    from retrieval.db import ImageRow

    with library.db.session() as session:
        return list(session.scalars(select(ImageRow.path).limit(1000)))


def markdown(result: dict) -> str:
    w, c = result["warm"], result["cold"]
    return "\n".join(
        [
            "# Query latency (benchmarks/bench_query.py)",
            "",
            f"Index: {w['items']} images, {w['index_type']}, model {result['model']}; "
            f"re-ranked: {w['reranked']}; host {result['host']}.",
            "",
            "| measure | median ms |",
            "|---|---|",
            f"| cold `xmr search` (new process, {c['runs']} runs; min {c['min_ms']}) "
            f"| {c['median_ms']} |",
            f"| warm search, total ({w['repeats']} repeats) | {w['search_median_ms']} |",
            f"| warm: text encoding | {w['encode_median_ms']} |",
            f"| warm: FAISS stage 1 | {w['faiss_median_ms']} |",
            f"| warm search with --under filter | {w['filtered_search_median_ms']} |",
            "",
        ]
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, default=None, help="[default: build one]")
    parser.add_argument("--images", type=int, default=200, help="for the built index")
    parser.add_argument("--cold", type=int, default=5)
    parser.add_argument("--warm", type=int, default=50)
    parser.add_argument("--rerank", action="store_true")
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="xmr-bench-query-"))
    try:
        index = args.index
        if index is None:
            common.log(f"building a tiny-model index of {args.images} images")
            index = build_index(work, args.images)
        import json

        model = json.loads((index / "manifest.json").read_text())["encoder"]["spec"]
        common.log(f"cold: {args.cold} x `xmr search`")
        cold_result = cold(index, args.cold, args.rerank)
        common.log(f"warm: {args.warm} repeats in-process")
        warm_result = warm(index, args.warm, args.rerank)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "model": Path(model).name,
        "host": common.host(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cold": cold_result,
        "warm": warm_result,
    }
    path = common.write_results("bench_query", result, markdown(result), args.out)
    print(markdown(result))
    common.log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
