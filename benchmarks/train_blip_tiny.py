"""Train a small BLIP-architecture matcher from scratch with `xmr train-reranker --family
blip-itm` on a generated corpus, then measure on its unseen test split: xmr-tiny stage 1
vs stage 1 + the matcher re-ranking the top K (ITM logit[:, 1] + weight x stage-1 cosine,
the weight chosen on the val split by the training command), and the same with the
matcher's image features shuffled between ids (which must lose any lift).

The matcher is loaded the way the engine's scorer loads it (from_pretrained on the folder
the command wrote) and scored with transformers' model (training/blip_training/evaluate).
Bounded: --max-minutes caps training; evaluation is (captions + images) x K pairs, twice.

    python benchmarks/train_blip_tiny.py [--images 3000] [--steps 300] [--max-minutes 30]

Run again on the same --work with more --steps and the command resumes the matcher there
(its checkpoint); the training time reported is the sum of the sessions.

Writes benchmarks/results/blip_tiny_train.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import REPO, log, publish

XMR = Path(sys.executable).parent / "xmr"


def run(args: list[str]) -> float:
    """Run an xmr command, its progress going to our stderr; -> wall seconds."""
    log("$ " + " ".join(args))
    started = time.monotonic()
    subprocess.run(args, check=True)
    return time.monotonic() - started


def evaluate(folder: Path, data: Path, k: int, weight: float, threads: int, seed: int) -> dict:
    import torch
    from transformers import AutoTokenizer, BlipForImageTextRetrieval, BlipImageProcessor

    from xmr.evaluation.datasets import load_dataset
    from xmr.retrieval.encoder import load_encoder
    from xmr.training.blip_training.data import split_tensors
    from xmr.training.blip_training.evaluate import match_logits, recall_rows

    torch.set_num_threads(threads)
    model = BlipForImageTextRetrieval.from_pretrained(str(folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    processor = BlipImageProcessor.from_pretrained(str(folder))
    test = load_dataset(data, split="test")
    split = split_tensors(test, tokenizer, processor, load_encoder("xmr-tiny", "cpu"), 40)
    n = test.n_images
    perm = np.random.default_rng(seed).permutation(n)
    source = np.empty(n, np.int64)
    source[perm] = np.roll(perm, 1)  # a derangement: no image keeps its own features
    assert not (source == np.arange(n)).any()
    out = {"test_images": n, "test_captions": test.n_texts, "candidates": k, "weight": weight}
    for name, image_source in (("matcher", None), ("shuffled", source)):
        started = time.monotonic()
        logits = match_logits(model, split, k, image_source)
        seconds = time.monotonic() - started
        weights = sorted({0.0, weight})
        rows = recall_rows(split, logits, weights)
        out["stage1"] = rows["stage1"]
        chosen = next(r for r in rows["fused"] if r["weight"] == weight)
        logit_only = next(r for r in rows["fused"] if r["weight"] == 0.0)
        out[name] = {"fused": chosen, "logit_only": logit_only, "seconds": round(seconds, 1)}
        log(f"{name}: t2i R@1 {chosen['t2i']['R@1']:.1f}  i2t R@1 {chosen['i2t']['R@1']:.1f}")
    return out


def markdown(result: dict) -> list[str]:
    e = result["eval"]
    s1 = e["stage1"]

    def row(label, r):
        t, i = r["t2i"], r["i2t"]
        return f"| {label} | {t['R@1']:.1f} | {t['R@5']:.1f} | {i['R@1']:.1f} | {i['R@5']:.1f} |"

    lift_t = e["matcher"]["fused"]["t2i"]["R@1"] - s1["t2i"]["R@1"]
    lift_i = e["matcher"]["fused"]["i2t"]["R@1"] - s1["i2t"]["R@1"]
    return [
        "# BLIP-architecture matcher trained from scratch (xmr-shapes, CPU)",
        "",
        f"Corpus: `xmr make-corpus --images {result['images']} --seed {result['seed']}`; "
        f"test split {e['test_images']} images, {e['test_captions']} captions (unseen scenes).",
        "",
        "```",
        result["command"],
        "```",
        "",
        f"Training: {result['train_seconds'] / 60:.1f} min wall in "
        f"{len(result['train_sessions_seconds'])} session(s) ({result['steps_done']} steps) "
        f"on {result['machine']}. Matcher: `{result['init_from']}` "
        f"({result['parameters'] / 1e6:.2f} M parameters), random start.",
        "",
        f"Re-ranking xmr-tiny's top {e['candidates']}; final score = ITM logit[:, 1] + "
        f"{e['weight']:g} x stage-1 cosine (weight chosen on the val split by the command).",
        "",
        "| stage | t2i R@1 | t2i R@5 | i2t R@1 | i2t R@5 |",
        "|---|---|---|---|---|",
        row("xmr-tiny stage 1", s1),
        row("stage 1 + matcher", e["matcher"]["fused"]),
        row("  matcher logit alone", e["matcher"]["logit_only"]),
        row("stage 1 + matcher, image features shuffled between ids", e["shuffled"]["fused"]),
        row("  shuffled, logit alone", e["shuffled"]["logit_only"]),
        "",
        f"Lift over stage 1: t2i R@1 {lift_t:+.1f}, i2t R@1 {lift_i:+.1f} "
        f"(aim: +5 both ways). Evaluation: {e['matcher']['seconds']:.0f} s matcher, "
        f"{e['shuffled']['seconds']:.0f} s shuffled.",
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--max-minutes", type=float, default=30.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/xmr-blip-tiny-bench"))
    parser.add_argument("--name", default="blip_tiny_train")
    args = parser.parse_args()

    corpus, out = args.work / "corpus", args.work / "matcher"
    data = corpus / "captions.json"
    if not data.exists():
        run([str(XMR), "make-corpus", str(corpus), "--images", str(args.images),
             "--seed", str(args.seed), "--quiet"])  # fmt: skip
    command = [
        str(XMR), "train-reranker", str(data), "--out", str(out), "--family", "blip-itm",
        "--init-from", "config:blip-tiny", "--steps", str(args.steps),
        "--max-minutes", str(args.max_minutes), "--batch-size", str(args.batch_size),
        "--threads", str(args.threads),
    ]  # fmt: skip
    # A run with more --steps resumes the matcher already in WORK: count every session.
    sessions_file = args.work / "train_sessions.json"
    sessions = json.loads(sessions_file.read_text()) if sessions_file.exists() else []
    sessions.append(round(run(command), 1))
    sessions_file.write_text(json.dumps(sessions))
    train_seconds = sum(sessions)
    log_file = json.loads((out / "train_log.json").read_text())
    weight = log_file["fusion"]["chosen"]["stage1_weight"]
    result = {
        "images": args.images,
        "seed": args.seed,
        "command": " ".join(["xmr", *command[1:]]).replace(str(args.work), "WORK"),
        "train_seconds": round(train_seconds, 1),
        "train_sessions_seconds": sessions,
        "steps_done": log_file["step"],
        "init_from": "config:blip-tiny",
        "machine": f"{args.threads} CPU threads (shared cores)",
        "val_fusion": log_file["fusion"],
        "losses_first_last": [log_file["losses"][:10], log_file["losses"][-10:]],
    }
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        result["parameters"] = sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())
    result["eval"] = evaluate(out, data, args.candidates, weight, args.threads, args.seed)
    return publish(args.name, result, markdown(result))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
