"""Fit the shown score's calibration (retrieval/calibration.py) for a model and its
re-ranker, check it on held-out scenes, and (with --write) keep it beside the model.

    .venv/bin/xmr make-corpus /tmp/shapes --images 30000 --seed 0      # xmr-tiny's corpus
    .venv/bin/xmr make-corpus /tmp/eval1234 --images 10000 --seed 1234 # scenes it never saw
    .venv/bin/python benchmarks/calibrate_scores.py /tmp/shapes/captions.json \\
        --check /tmp/eval1234/captions.json --write

Fits on the validation split of the first corpus (the scenes xmr-tiny's training held out
for validation), every caption's and every image's stage-1 top K (K = the re-ranker's
validation depth, 16), and reports reliability (expected calibration error, Brier score,
mean probability of matches and of non-matches) on those pairs and on the test split of
the --check corpus. --write puts the stage-1 fit into the model's folder and the
re-ranked fit into its re-ranker's folder (score_calibration.json each).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import host, log, publish


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="a generated corpus' captions.json (its val split fits)")
    parser.add_argument("--check", help="another corpus' captions.json (its test split checks)")
    parser.add_argument("--model", default="xmr-tiny")
    parser.add_argument("--images", type=int, default=1000, help="images of each split used")
    parser.add_argument("--k", type=int, default=16, help="stage-1 candidates per query")
    parser.add_argument("--write", action="store_true", help="keep the fits beside the model")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from xmr.evaluation.calibration import (
        as_entry,
        candidate_pairs,
        fit_score_calibration,
        reliability,
    )
    from xmr.evaluation.datasets import load_dataset
    from xmr.evaluation.embed_dataset import embed_dataset, token_options
    from xmr.retrieval.calibration import write_calibration
    from xmr.retrieval.encoder import load_encoder
    from xmr.retrieval.fusion import fused_score
    from xmr.retrieval.reranker import load_reranker
    from xmr.retrieval.reranker_files import folder_fingerprint, reranker_folder

    started = time.monotonic()
    info = host()
    encoder = load_encoder(args.model, "cpu")
    folder = reranker_folder("auto", encoder)
    if folder is None:
        sys.exit(f"{args.model} has no re-ranker of its own")
    runtime = load_reranker(folder, encoder, "cpu")
    weight = runtime.config.stage1_weight

    def pairs_of(path: str, split: str):
        dataset = load_dataset(path, split=split).head(args.images)
        log(f"embedding {len(dataset.image_paths)} images of {path} ({split})")
        embeddings = embed_dataset(encoder, dataset, **token_options(runtime))
        return dataset, candidate_pairs(runtime, dataset, embeddings, args.k)

    dataset, pairs = pairs_of(args.data, "val")
    fits = fit_score_calibration(pairs, weight)
    data = {
        "model": args.model,
        "reranker": str(folder),
        "stage1_weight": weight,
        "fitted_on": f"{args.data} val split, {len(dataset.image_paths)} images, top {args.k}",
        "stage1": as_entry(fits["stage1"]),
        "rerank": as_entry(fits["rerank"]),
        "fit_pairs": fits["report"],
        "host": info,
    }
    if args.check:
        _, held = pairs_of(args.check, "test")
        fused = fused_score(held.logits, held.stage1, weight)
        data["held_out"] = {
            "data": f"{args.check} test split, top {args.k}",
            "pairs": int(len(held.match)),
            "stage1": reliability(fits["stage1"](held.stage1), held.match),
            "rerank": reliability(fits["rerank"](fused), held.match),
        }
    data["seconds"] = round(time.monotonic() - started, 1)
    if args.write:
        model_folder = Path(encoder.spec.name)
        write_calibration(model_folder, stage1=fits["stage1"], fitted_on=data["fitted_on"])
        write_calibration(
            folder,
            rerank=fits["rerank"],
            stage1_weight=weight,
            fingerprint=folder_fingerprint(folder),
            fitted_on=data["fitted_on"],
        )
        log(f"wrote {model_folder} and {folder}/score_calibration.json")
    return publish(f"score_calibration_{args.model}", data, _markdown(data, argv))


def _markdown(data: dict, argv) -> list[str]:
    s, r = data["stage1"], data["rerank"]
    lines = [
        f"# Score calibration: {data['model']}",
        "",
        "Command: `.venv/bin/python benchmarks/calibrate_scores.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
        + "`",
        "",
        f"Fitted on {data['fitted_on']} (both directions).",
        f"- stage 1 (text <-> image): p = sigmoid({s['slope']:.3f} x cosine {s['intercept']:+.3f})",
        f"- re-ranked: p = sigmoid({r['slope']:.4f} x fused {r['intercept']:+.3f}), fused = "
        f"logit + {data['stage1_weight']:.2f} x cosine",
        "",
        "| pairs | stage | ECE | Brier | mean p, matches | mean p, others |",
        "|---|---|---|---|---|---|",
    ]
    rows = [("fit (val)", data["fit_pairs"])]
    if "held_out" in data:
        rows.append(("held out (test, other seed)", data["held_out"]))
    for name, block in rows:
        for stage in ("stage1", "rerank"):
            b = block[stage]
            lines.append(
                f"| {name} | {stage} | {b['ece']} | {b['brier']} | {b['mean_p_match']} | "
                f"{b['mean_p_other']} |"
            )
    lines += ["", f"Host: {data['host']}"]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
