"""How much colour-shape binding do an encoder's patch tokens carry, block by block?

The re-ranker can only bind "red" to "circle" if the image tokens it reads say, locally,
which shape has which colour. This probe measures that directly on the generated corpus,
whose annotation records every object's colour and shape: a small supervised probe (layer
norm, learned positions, one 3x3 convolution over the patch grid, MLP, soft max over
patches) learns to name the (colour, shape) pairs present in an image from frozen tokens.
On held-out images it is then asked the attribute-swap question: is "purple triangle +
blue cross" scored above "blue triangle + purple cross"? The probe trains for a few hundred
steps, so its accuracy is a lower bound on what the tokens carry, for comparing sources.

Sources: the output of every vision transformer block (before the final norm), and the
projected tokens that `xmr index` stores. Writes benchmarks/results/probe_token_binding.{json,md}.

    python benchmarks/probe_token_binding.py CORPUS/captions.json --model xmr-tiny
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import log, write_results


def _labels(dataset, annotation: Path):
    records = {r["filename"]: r for r in json.loads(annotation.read_text())["images"]}
    scenes = [records[p.name]["scene"]["objects"] for p in dataset.image_paths]
    colours = sorted({o["colour"] for s in scenes for o in s})
    shapes = sorted({o["shape"] for s in scenes for o in s})
    labels = np.zeros((len(scenes), len(colours), len(shapes)), np.float32)
    for i, objects in enumerate(scenes):
        for o in objects:
            labels[i, colours.index(o["colour"]), shapes.index(o["shape"])] = 1
    return labels  # (n_images, colours, shapes)


def _token_sources(encoder, dataset) -> dict[str, np.ndarray]:
    """name -> (n_images, N, width) float16 patch tokens, CLS dropped."""
    import torch

    from xmr.retrieval.imageio import DEFAULT_MAX_PIXELS, decode_batches, default_workers

    visual = encoder.model.visual
    blocks = visual.transformer.resblocks
    captured: dict[str, list] = {f"block{k}": [] for k in range(len(blocks))}
    hooks = [
        block.register_forward_hook(
            lambda _m, _i, out, k=k: captured[f"block{k}"].append(out.detach().half())
        )
        for k, block in enumerate(blocks)
    ]
    stored = []
    try:
        paths = [str(p) for p in dataset.image_paths]
        for batch in decode_batches(
            paths, encoder.preprocess, 256, default_workers(), DEFAULT_MAX_PIXELS
        ):
            pixels = torch.stack([d.pixels for d in batch])
            stored.append(encoder.encode_images(pixels).tokens)  # runs the hooked blocks once
    finally:
        for hook in hooks:
            hook.remove()
    n_patches = stored[0].shape[1]
    out = {}
    for name, parts in captured.items():
        tokens = torch.cat(parts).numpy()  # (n, 1+N, W) or (n, N, W)
        out[name] = tokens[:, -n_patches:]
    out["stored (projected)"] = np.concatenate(stored)
    return out


def _probe(tokens: np.ndarray, labels: np.ndarray, train: int, steps: int, seed: int):
    """Train the probe on the first `train` images; attribute-swap accuracy on the rest."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n, n_patches, width = tokens.shape
    side = int(round(n_patches**0.5))
    n_col, n_shape = labels.shape[1:]

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(width)
            self.pos = nn.Parameter(torch.randn(1, n_patches, width) * 0.02)
            self.conv = nn.Conv2d(width, width, 3, padding=1)  # a patch sees its neighbours
            classes = n_col * n_shape
            self.mlp = nn.Sequential(nn.Linear(width, 256), nn.GELU(), nn.Linear(256, classes))

        def forward(self, x):  # x (B, N, W) -> (B, colours * shapes) logits
            x = self.norm(x.float()) + self.pos
            grid = x.transpose(1, 2).reshape(-1, width, side, side)
            x = x + F.gelu(self.conv(grid)).flatten(2).transpose(1, 2)
            return torch.logsumexp(self.mlp(x), dim=1)  # soft "somewhere in the image"

    x = torch.from_numpy(tokens)
    y = torch.from_numpy(labels.reshape(n, -1))
    probe = Probe()
    optimizer = torch.optim.AdamW(probe.parameters(), 2e-3)
    for _ in range(steps):
        rows = rng.choice(train, 128, replace=False)
        loss = F.binary_cross_entropy_with_logits(probe(x[rows]), y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        scores = probe(x[train:]).view(-1, n_col, n_shape).numpy()
    return _swap_accuracy(scores, labels[train:])


def _swap_accuracy(scores: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """Pairs (c1, s1), (c2, s2) present with c1 != c2, s1 != s2 and neither swap present."""
    right = total = 0
    for score, present in zip(scores, labels, strict=True):
        pairs = list(zip(*np.nonzero(present), strict=True))
        for u, (c1, s1) in enumerate(pairs):
            for c2, s2 in pairs[u + 1 :]:
                if c1 == c2 or s1 == s2 or present[c2, s1] or present[c1, s2]:
                    continue
                right += score[c1, s1] + score[c2, s2] > score[c2, s1] + score[c1, s2]
                total += 1
    return round(100 * right / max(total, 1), 1), total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("annotation", type=Path, help="a generated corpus's captions.json")
    parser.add_argument("--model", default="xmr-tiny")
    parser.add_argument("--images", type=int, default=12000)
    parser.add_argument("--held-out", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from xmr.evaluation.datasets import load_dataset
    from xmr.retrieval.encoder import load_encoder

    encoder = load_encoder(args.model, "cpu")
    dataset = load_dataset(args.annotation, None, split="train").head(args.images)
    labels = _labels(dataset, args.annotation)
    log(f"tokens of {len(labels)} images from every block of {args.model}")
    sources = _token_sources(encoder, dataset)
    train = len(labels) - args.held_out
    rows = []
    for name, tokens in sources.items():
        started = time.monotonic()
        accuracy, pairs = _probe(tokens, labels, train, args.steps, args.seed)
        rows.append({"source": name, "tokens": list(tokens.shape[1:]), "swap_accuracy": accuracy})
        log(
            f"{name}: attribute-swap accuracy {accuracy}% on {pairs} pairs "
            f"({time.monotonic() - started:.0f} s)"
        )
    data = {
        "model": args.model,
        "annotation": str(args.annotation),
        "images": len(labels),
        "held_out": args.held_out,
        "probe_steps": args.steps,
        "swap_pairs": pairs,
        "rows": rows,
    }
    lines = [
        f"# Colour-shape binding in {args.model}'s patch tokens",
        "",
        f"Supervised probe ({args.steps} steps, batch 128, {train} images), attribute-swap "
        f"accuracy on {args.held_out} held-out images ({pairs} swap pairs; chance 50%).",
        "",
        "| token source | tokens (N, width) | swap accuracy % |",
        "|---|---|---:|",
    ] + [f"| {r['source']} | {tuple(r['tokens'])} | {r['swap_accuracy']} |" for r in rows]
    write_results("probe_token_binding", data, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
