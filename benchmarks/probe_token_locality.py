"""How local are an encoder's stored patch tokens? A question behind the re-ranker's relations.

"A red circle left of a blue square" vs "... right of ...": to tell them apart the re-ranker
must find where each object is. It can only do that if a patch token says something about
its own patch rather than the whole image. This probe measures, on held-out images of a
corpus, how much of each token is image-global:
  - cosine of a patch token to its image's mean token, and to the other patches of its image
  - cosine to the token at the same position in another image (the position-only part)
  - how well a linear map recovers a token's patch row and column (R^2, images held out)
Writes benchmarks/results/probe_token_locality.{json,md}.

    python benchmarks/probe_token_locality.py CORPUS/captions.json --model xmr-tiny
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import log, write_results


def locality(tokens: np.ndarray, fit_images: int) -> dict:
    """tokens (N, P, D) of a square patch grid -> the probe's numbers."""
    n, p, d = tokens.shape
    unit = tokens / np.linalg.norm(tokens, axis=-1, keepdims=True)  # (N, P, D)
    within = np.einsum("npd,nqd->npq", unit, unit)  # (N, P, P)
    others = within[:, ~np.eye(p, dtype=bool)].mean()
    mean = unit.mean(1, keepdims=True)
    mean /= np.linalg.norm(mean, axis=-1, keepdims=True)  # (N, 1, D)
    same_position = (unit * np.roll(unit, 1, axis=0)).sum(-1).mean()
    side = int(round(p**0.5))
    grid = np.arange(p)
    targets = np.tile(np.c_[grid // side, grid % side], (n, 1)).astype(np.float64)  # (N*P, 2)
    x = np.c_[tokens.reshape(-1, d), np.ones(n * p)]
    cut = fit_images * p
    weights = np.linalg.lstsq(x[:cut], targets[:cut], rcond=None)[0]
    error = x[cut:] @ weights - targets[cut:]
    r2 = 1 - error.var(0) / targets[cut:].var(0)
    return {
        "cosine_to_image_mean": round(float((unit * mean).sum(-1).mean()), 3),
        "cosine_to_other_patches": round(float(others), 3),
        "cosine_same_position_other_image": round(float(same_position), 3),
        "row_r2": round(float(r2[0]), 3),
        "column_r2": round(float(r2[1]), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="Karpathy-format captions.json (make-corpus)")
    parser.add_argument("--model", default="xmr-tiny")
    parser.add_argument("--images", type=int, default=300, help="val images probed")
    args = parser.parse_args()

    from xmr.evaluation.datasets import load_dataset
    from xmr.evaluation.embed_dataset import embed_dataset
    from xmr.retrieval.encoder import load_encoder

    encoder = load_encoder(args.model, "cpu")
    val = load_dataset(args.data, split="val").head(args.images)
    log(f"embedding {len(val.image_paths)} val images with {args.model}")
    tokens = embed_dataset(encoder, val, with_tokens=True).image_tokens.astype(np.float32)
    row = locality(tokens, fit_images=len(tokens) * 2 // 3)
    data = {"model": args.model, "data": str(args.data), "images": len(tokens), **row}
    markdown = (
        f"# Locality of {args.model}'s stored patch tokens ({len(tokens)} val images of "
        f"`{args.data}`)\n\n`python benchmarks/probe_token_locality.py {args.data} "
        f"--model {args.model}`\n\n| measure | value |\n|---|---:|\n"
        + "".join(f"| {k} | {v} |\n" for k, v in row.items())
        + "\nCosines near 1 mean every patch says the same (image-global); row/column R^2 "
        "is the share of a patch's grid position a linear map reads back from its token "
        "on held-out images (fit on the first two thirds).\n"
    )
    log(f"wrote {write_results('probe_token_locality', data, markdown)}")
    log(str(row))


if __name__ == "__main__":
    main()
