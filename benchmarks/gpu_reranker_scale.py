"""The re-ranker recipe at GPU scale: xmr's own trainer on many scenes, judged like `xmr bench`.

1. `--scenes` training scenes (`xmr make-corpus`, seed 0) and the test split of
   `xmr make-corpus eval1234 --images 10000 --seed 1234` (its last 1,000 images), on disk;
2. per token source, one re-ranker trained on the frozen xmr-tiny by `train_reranker`
   (the trainer of `xmr train-reranker`) for at most `--minutes`;
3. each judged on the test split by `run_benchmark` (the code of `xmr bench --candidates 16`):
   re-ranked R@1 both ways and the hard-negative accuracies, beside the dual encoder's.

Token sources: `last` (the vision block an index stores by default) or a block number
(`train-reranker --image-token-layer`). The defaults are the plain recipe at GPU width;
`--image-stem conv --token-alignment --edit-pairs 512` adds the binding aids of the shipped
CPU recipe (docs/models/xmr-tiny.md).

Writes reranker_scale.json / .md to --out ($OUT when set); --save keeps the
`last` re-ranker in float16 as an `xmr search --reranker` folder. On a CPU, small sizes make
a smoke run:

    python benchmarks/gpu_reranker_scale.py --device cpu --scenes 400 --test-images 300 \\
        --minutes 0.2 --batch-size 16 --width 64 --layers 1 --heads 4 --image-layers 0 \\
        --out /tmp/scale
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from common import host, log, write_results

CANDIDATES = 16  # stage-1 depth re-ranked, as in the README's tables


def make_corpora(work: Path, args) -> tuple[Path, Path]:
    """The training corpus and the evaluation corpus (reused when already written)."""
    from xmr.training.corpus import make_corpus

    workers = max(1, (os.cpu_count() or 2) - 1)
    paths = []
    for name, n, seed in (("shapes", args.scenes, 0), ("eval", args.test_images, args.test_seed)):
        folder = work / f"{name}-{n}-{seed}"
        if not (folder / "captions.json").exists():
            log(f"writing {n} scenes of seed {seed} to {folder}")
            make_corpus(folder, n, seed, workers=workers)
        paths.append(folder / "captions.json")
    return paths[0], paths[1]


def train_one(source: str, data: Path, work: Path, args):
    """Train a re-ranker on `source` tokens with xmr's trainer -> (folder, state, seconds)."""
    from xmr.training.reranker_training import RerankerTrainConfig, train_reranker

    config = RerankerTrainConfig(
        data=str(data),
        model="xmr-tiny",
        out=str(work / f"reranker-{source}"),
        steps=args.steps,
        max_minutes=args.minutes,
        batch_size=args.batch_size,
        lr=args.lr,
        width=args.width,
        layers=args.layers,
        heads=args.heads,
        image_layers=args.image_layers,
        image_pool=1,
        image_token_layer=None if source == "last" else int(source),
        image_stem=args.image_stem,
        token_alignment=args.token_alignment,
        edit_pairs=args.edit_pairs,
        edit_kinds=args.edit_kinds,
        hard_negatives=args.hard_negatives,
        gallery=args.gallery,
        val_every=args.val_every,
        seed=args.seed,
        device=args.device,
    )

    def progress(step, total, loss, rate):
        if step % 100 == 0 or step == 1:
            log(f"{source}: step {step}/{total} loss {loss:.4f} {rate:.0f} pairs/s")

    def preparing(what, done, total):
        if done == total:
            log(f"{source}: embedded {total} {what}")

    started = time.monotonic()
    state = train_reranker(config, progress, preparing, lambda row: log(f"{source}: {row}"))
    return Path(config.out), state, time.monotonic() - started


def judge(folder: Path, test, encoder) -> dict:
    """`xmr bench --candidates 16` on the test split, with the re-ranker in `folder`."""
    from xmr.evaluation.bench import BenchOptions, run_benchmark
    from xmr.retrieval.reranker import load_reranker

    runtime = load_reranker(folder, encoder, encoder.device)
    return run_benchmark(test, encoder, runtime, BenchOptions(candidates=CANDIDATES))


def row_of(result: dict, stage: str) -> dict:
    """R@1 both ways and hard-negative accuracies of one stage of a bench result."""
    recall = result["results"][stage]
    return {
        "t2i_R@1": round(recall["t2i"]["R@1"], 1),
        "i2t_R@1": round(recall["i2t"]["R@1"], 1),
        **{k: round(v, 1) for k, v in result["compositional"].get(stage, {}).items()},
    }


def markdown(results: dict) -> str:
    kinds = ("t2i_R@1", "i2t_R@1", "attribute_swap", "shape_change", "relation_swap")
    args = results["args"]
    lines = [
        f"Re-ranker trained on {results['host']['cuda'] or 'cpu'}: {args['scenes']} scenes "
        f"(seed 0), at most {args['minutes']} min per token source; test split of seed "
        f"{args['test_seed']}, R@1 after re-ranking stage-1 top {CANDIDATES}, hard negatives %.",
        "",
        "| run | steps | s (embed + train) | " + " | ".join(kinds) + " |",
        "|---" * (len(kinds) + 3) + "|",
        "| dual encoder | - | - | "
        + " | ".join(str(results["dual_encoder"].get(k, "")) for k in kinds)
        + " |",
    ]
    for run in results["runs"]:
        cells = " | ".join(str(run["test"].get(k, "")) for k in kinds)
        lines.append(f"| {run['source']} | {run['steps']} | {run['seconds']} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=40_000, help="training corpus size")
    parser.add_argument("--sources", default="last", help="comma-separated: last or block numbers")
    parser.add_argument("--minutes", type=float, default=3.0, help="training time per source")
    parser.add_argument("--steps", type=int, default=3000, help="length of the lr schedule")
    parser.add_argument("--test-images", type=int, default=10_000, help="eval corpus size")
    parser.add_argument("--test-seed", type=int, default=1234)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--hard-negatives", type=int, default=3)
    parser.add_argument("--gallery", type=int, default=1000)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--image-layers", type=int, default=2)
    parser.add_argument("--image-stem", default="attention")
    parser.add_argument("--token-alignment", action="store_true")
    parser.add_argument("--edit-pairs", type=int, default=0)
    parser.add_argument("--edit-kinds", default="attribute")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--val-every", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="default: cuda when present")
    parser.add_argument("--work", type=Path, default=Path("/tmp/xmr-scale"))
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/xmr-scale")))
    parser.add_argument("--save", type=Path, help="keep the `last` re-ranker here (float16)")
    args = parser.parse_args()

    import torch

    from xmr.evaluation.datasets import load_dataset
    from xmr.retrieval.encoder import load_encoder
    from xmr.retrieval.reranker import load_reranker, save_reranker

    data, eval_data = make_corpora(args.work, args)
    encoder = load_encoder("xmr-tiny", args.device)
    test = load_dataset(eval_data, split="test")
    results = {"args": {k: str(v) for k, v in vars(args).items()}, "host": host(), "runs": []}
    results["args"].update(scenes=args.scenes, minutes=args.minutes, test_seed=args.test_seed)
    for source in args.sources.split(","):
        folder, state, seconds = train_one(source, data, args.work, args)
        result = judge(folder, test, encoder)
        results["dual_encoder"] = row_of(result, "exact")
        run = {"source": source, "steps": state.step, "seconds": round(seconds, 1)}
        run.update(test=row_of(result, "rerank"), fusion=state.fusion, history=state.history)
        results["runs"].append(run)
        write_results("reranker_scale", results, markdown(results), args.out)
        log(f"{source}: {run['test']}")
        if args.save and source == "last":
            model = load_reranker(folder, device="cpu").model
            save_reranker(model, args.save, torch.float16)  # load_reranker reads it as float32
            log(f"saved the re-ranker to {args.save}")
    log("done")


if __name__ == "__main__":
    main()
