"""Where does the re-ranker lose hard negatives? Accuracy on one kind of edit (attribute
swaps by default) split by what the scene holds: how many objects, their sizes, the
background's shading, a shape drawn twice, how close the nearest two objects are.

    python benchmarks/bench_swap_failures.py eval1234/captions.json --model xmr-tiny \
        [--reranker FOLDER] [--kind attribute_swap] [--split test] --name NAME

Scores are `xmr bench`'s (the fused score at the re-ranker's stage-1 weight, and its logit
alone beside it); writes benchmarks/results/swap_failures_NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from common import log, publish

NEAR = 28  # px, L1 between object centres on the 64 px canvas: about one object's width


def scene_groups(scene: dict) -> list[str]:
    """The groups one scene belongs to."""
    objects = scene["objects"]
    groups = [
        f"{len(objects)} objects",
        "sizes " + " + ".join(sorted(o["size"] for o in objects)),
        f"{scene['shading']} background",
        "a shape drawn twice" if len({o["shape"] for o in objects}) < len(objects) else "",
    ]
    if len(objects) > 1:
        nearest = min(
            abs(a["x"] - b["x"]) + abs(a["y"] - b["y"])
            for a in objects
            for b in objects
            if a is not b
        )
        groups.append(f"nearest two objects {'<' if nearest < NEAR else '>='} {NEAR} px apart")
    return [g for g in groups if g]


def _tally(right, logit_right) -> dict:
    """Pairs, % right with the fused score and with the logit alone, failures."""
    return {
        "pairs": len(right),
        "accuracy": round(float(right.mean()) * 100, 1),
        "logit_accuracy": round(float(logit_right.mean()) * 100, 1),
        "failures": int((~right).sum()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="captions.json of `xmr make-corpus`")
    parser.add_argument("--model", default="xmr-tiny")
    parser.add_argument("--reranker", default="auto")
    parser.add_argument("--kind", default="attribute_swap")
    parser.add_argument("--split", default="test")
    parser.add_argument("--name", required=True)
    args = parser.parse_args()

    from xmr.evaluation.datasets import load_dataset
    from xmr.evaluation.embed_dataset import embed_dataset, token_options
    from xmr.evaluation.negatives import negative_pairs, negative_scores
    from xmr.retrieval.encoder import load_encoder
    from xmr.retrieval.fusion import fused_score
    from xmr.retrieval.reranker import resolve_reranker

    scenes = {r["filename"]: r["scene"] for r in json.loads(Path(args.data).read_text())["images"]}
    dataset = load_dataset(args.data, split=args.split)
    encoder = load_encoder(args.model, "cpu")
    runtime = resolve_reranker(args.reranker, encoder, "cpu")
    if runtime is None:
        raise SystemExit(f"{args.model} has no re-ranker; give --reranker FOLDER")
    log(f"embedding {len(dataset.image_paths)} images")
    embeddings = embed_dataset(encoder, dataset, **token_options(runtime))
    weight = runtime.config.stage1_weight
    # the logits (a stage-1 weight of 0) and the cosines, fused here: one re-ranking pass
    logit_pos, logit_neg = negative_scores(encoder, dataset, embeddings, runtime, 0.0)[args.kind]
    cos_pos, cos_neg = negative_scores(encoder, dataset, embeddings)[args.kind]
    pos, neg = fused_score(logit_pos, cos_pos, weight), fused_score(logit_neg, cos_neg, weight)
    right, logit_right = pos > neg, logit_pos > logit_neg  # (P,) each
    groups: dict[str, list[int]] = defaultdict(list)
    for row, (image, _, _) in enumerate(negative_pairs(dataset)[args.kind]):
        for group in scene_groups(scenes[Path(dataset.image_paths[image]).name]):
            groups[group].append(row)
    table = [
        {"group": group, **_tally(right[rows], logit_right[rows])}
        for group, rows in sorted(groups.items())
    ]
    total = _tally(right, logit_right)
    lines = [
        f"# {args.kind} by scene: {args.name}",
        "",
        f"`python benchmarks/bench_swap_failures.py {args.data} --model {args.model} "
        f"--reranker {args.reranker} --kind {args.kind} --split {args.split} --name {args.name}`",
        "",
        f"{total['pairs']} pairs of the {args.split} split: {total['accuracy']}% right with the "
        f"fused score (stage-1 weight {weight:.2f}), {total['logit_accuracy']}% with the "
        f"logit alone; {total['failures']} failures.",
        "",
        "| scenes | pairs | % right | % right, logit alone | failures |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['group']} | {r['pairs']} | {r['accuracy']} | {r['logit_accuracy']} | "
        f"{r['failures']} |"
        for r in table
    ]
    data = {"kind": args.kind, "split": args.split, "stage1_weight": weight, "total": total}
    return publish(f"swap_failures_{args.name}", {**data, "groups": table}, lines + [""])


if __name__ == "__main__":
    raise SystemExit(main())
