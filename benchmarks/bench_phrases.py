"""Phrase queries: does "a red circle" bring back red circles?

People type short phrases, not the full-scene captions the encoder learned from. For every
colour x shape of the corpus grammar this benchmark queries "a COLOUR SHAPE" over a corpus
split's images and reports the share of the top k (20) that show an object of that colour
and shape (read from the scene metadata in captions.json), at stage 1 and re-ranked (the
re-ranker reads the stage-1 top `--candidates`, the searcher's default 128 unless given).
`--reranker none` measures stage 1 only: for an encoder that has no re-ranker of its own
yet (a re-ranker reads its own encoder's tokens, so another encoder's would say nothing).

The images are indexed into a temporary index with the given model, through the same
`Engine` calls `xmr index` and `xmr search` make (or an existing index of those images with
`--index`). Writes benchmarks/results/phrases_NAME.{json,md} and prints the table.

    xmr make-corpus eval1234 --images 10000 --seed 1234
    python benchmarks/bench_phrases.py eval1234/captions.json --model xmr-tiny --name xmr-tiny
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from common import log, publish

K = 20


def has_object(scene: dict, colour: str, shape: str) -> bool:
    """Whether a scene (captions.json's `scene`) shows an object of this colour and shape."""
    return any(o["colour"] == colour and o["shape"] == shape for o in scene["objects"])


def phrase_share(scenes: Sequence[dict], colour: str, shape: str, k: int = K) -> float:
    """Share of the top k results (their scenes, best first) that show a COLOUR SHAPE.

    Missing results (fewer than k returned) count as misses: the share is out of k."""
    return sum(has_object(s, colour, shape) for s in scenes[:k]) / k


def corpus_command(data: Path) -> str:
    """The `xmr make-corpus` command that wrote `data` (its seed and size)."""
    corpus = json.loads(data.read_text())
    n, seed = len(corpus["images"]), corpus["seed"]
    return f"xmr make-corpus {data.parent.name} --images {n} --seed {seed}"


def split_scenes(data: Path, split: str) -> dict[str, dict]:
    """File name -> scene of every image of the split ('all': every image)."""
    corpus = json.loads(data.read_text())
    return {
        r["filename"]: r["scene"] for r in corpus["images"] if split == "all" or r["split"] == split
    }


def vocabulary() -> tuple[tuple[str, ...], tuple[str, ...]]:
    from xmr.training.corpus import COLOURS, SHAPES

    return tuple(COLOURS), SHAPES


def link_images(data: Path, names: Iterable[str], folder: Path) -> None:
    """The split's images in `folder` (hard links where the file system allows, else copies),
    so an index of `folder` holds exactly the split."""
    images = data.parent / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        try:
            os.link(images / name, folder / name)
        except OSError:
            shutil.copy2(images / name, folder / name)


def run(
    engine, scenes: dict[str, dict], candidates: int | None, k: int = K, rerank: bool = True
) -> list[dict]:
    """One row per colour x shape: the shares at stage 1 and (with `rerank`) re-ranked, and
    the best share the split allows (fewer than k images may show that object)."""
    colours, shapes = vocabulary()
    stages = (("stage1", False), ("reranked", True)) if rerank else (("stage1", False),)
    rows = []
    for colour in colours:
        for shape in shapes:
            phrase = f"a {colour} {shape}"
            row: dict = {"phrase": phrase}
            present = sum(has_object(s, colour, shape) for s in scenes.values())
            row["images_with_it"] = present
            row["best_possible"] = min(present, k) / k
            for stage, reranks in stages:
                answer = engine.search(phrase, k=k, rerank=reranks, candidates=candidates)
                if reranks and not answer.reranked:
                    raise SystemExit(f"{phrase!r} was not re-ranked: {answer.notices}")
                hit_scenes = [scenes[Path(h.path).name] for h in answer.hits]
                row[stage] = phrase_share(hit_scenes, colour, shape, k)
            rows.append(row)
    return rows


def summary(rows: list[dict]) -> dict:
    """Means over the phrases and how many miss the aims (0.5 at stage 1, 0.8 re-ranked);
    the re-ranked entries only where the rows have them."""
    n = len(rows)
    totals = {
        "phrases": n,
        "stage1_mean": round(sum(r["stage1"] for r in rows) / n, 4),
        "best_possible_mean": round(sum(r["best_possible"] for r in rows) / n, 4),
        "stage1_below_0.5": sum(r["stage1"] < 0.5 for r in rows),
    }
    if all("reranked" in r for r in rows):
        totals["reranked_mean"] = round(sum(r["reranked"] for r in rows) / n, 4)
        totals["reranked_below_0.8"] = sum(r["reranked"] < 0.8 for r in rows)
    return totals


def markdown(args, rows: list[dict], totals: dict, seconds: float) -> list[str]:
    """The table: stage 1 / re-ranked per phrase, or stage 1 alone (`--reranker none`)."""
    colours, shapes = vocabulary()
    by = {r["phrase"]: r for r in rows}
    reranked = "reranked_mean" in totals
    depth = args.candidates or "128 (the searcher's default)"
    intro = (
        f'For each query "a COLOUR SHAPE": the share of the top {K} that show an object of '
        f"that colour and shape, over the {args.split} split's {totals['images']} images"
    )
    if reranked:
        intro += (
            f". Stage 1 / re-ranked (stage-1 top {depth} re-ranked). Mean over "
            f"{totals['phrases']} phrases: **stage 1 {totals['stage1_mean']:.3f}, re-ranked "
            f"{totals['reranked_mean']:.3f}** (best the split allows: "
            f"{totals['best_possible_mean']:.3f}); phrases below 0.5 at stage 1: "
            f"{totals['stage1_below_0.5']}, below 0.8 re-ranked: "
            f"{totals['reranked_below_0.8']}. {seconds:.0f} s."
        )
    else:
        intro += (
            f", at stage 1 (no re-ranker). Mean over {totals['phrases']} phrases: **stage 1 "
            f"{totals['stage1_mean']:.3f}** (best the split allows: "
            f"{totals['best_possible_mean']:.3f}); phrases below 0.5: "
            f"{totals['stage1_below_0.5']}. {seconds:.0f} s."
        )

    def cell(row: dict) -> str:
        return f"{row['stage1']:.2f}" + (f" / {row['reranked']:.2f}" if reranked else "")

    lines = [
        f"# Phrase queries: {args.name}",
        "",
        f"`{corpus_command(args.data)}`, then",
        f"`python benchmarks/bench_phrases.py {args.data} --model {args.model} "
        f"--reranker {args.reranker} --split {args.split} --name {args.name}"
        + (f" --candidates {args.candidates}" if args.candidates else "")
        + "`",
        "",
        intro,
        "",
        "| colour | " + " | ".join(shapes) + " |",
        "|---|" + "---:|" * len(shapes),
    ]
    for colour in colours:
        cells = [cell(by[f"a {colour} {s}"]) for s in shapes]
        lines.append(f"| {colour} | " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="captions.json of `xmr make-corpus`")
    parser.add_argument("--model", default="xmr-tiny")
    parser.add_argument("--reranker", default="auto", help="folder, or auto (the model's own)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--candidates", type=int, default=None, help="re-ranking depth")
    parser.add_argument("--index", type=Path, default=None, help="an index of the split")
    parser.add_argument("--name", required=True, help="results go to phrases_NAME.json/.md")
    args = parser.parse_args()

    from xmr.engine.engine import Engine

    scenes = split_scenes(args.data, args.split)
    with tempfile.TemporaryDirectory(prefix="xmr-phrases-") as tmp:
        index = args.index
        if index is None:
            index = Path(tmp) / "index"
            link_images(args.data, scenes, Path(tmp) / "images")
            log(f"indexing {len(scenes)} images of {args.data} ({args.split}) with {args.model}")
            # the image tokens (and any pixels) the re-ranker reads, and its kept features
            keeps = "auto" if args.reranker == "none" else args.reranker
            report = Engine(index).index([Path(tmp) / "images"], model=args.model, reranker=keeps)
            log(f"indexed: {report.notices or 'ok'}")
        engine = Engine(index, reranker=args.reranker)
        started = time.perf_counter()
        rows = run(engine, scenes, args.candidates, rerank=args.reranker != "none")
        seconds = time.perf_counter() - started
        engine.close()
    totals = {"images": len(scenes), **summary(rows)}
    data = {
        "data": str(args.data),
        "corpus": corpus_command(args.data),
        "model": args.model,
        "reranker": args.reranker,
        "split": args.split,
        "k": K,
        "candidates": (args.candidates or 128) if args.reranker != "none" else None,
        "summary": totals,
        "rows": rows,
        "seconds": round(seconds, 1),
        "load": os.getloadavg()[0],
    }
    return publish(f"phrases_{args.name}", data, markdown(args, rows, totals, seconds))


if __name__ == "__main__":
    raise SystemExit(main())
