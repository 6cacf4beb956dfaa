"""Which vision block's patch tokens say what is where? A question behind the re-ranker's relations.

"A red circle left of a blue square" against "... right of ...": to tell them apart the
re-ranker must find where each object is, which it can only do if the patch token under the
red circle says "red circle" more than the one under the blue square does. The generated
corpus records every object's colour, shape and centre, so this is measured directly, for
the tokens `Encoder.encode_images(pixels, token_layer=L)` gives for every vision block L
(what `--image-token-layer L` makes the re-ranker read: the block's output through the final
norm and projection) and for the patch embeddings that enter block 0 (`embed`: patch
projection + position embedding + ln_pre, then the same final norm and projection):

  globality  mean cosine of a patch token to its image's mean token (near 1: every patch
             says the same), to the image's other patches, to the same patch position in
             another image; and the R^2 of a linear map reading the patch's row and column
             back from its token (fit on two thirds of the test images, scored on the rest)
  what       linear probes (multinomial logistic regression, L2, fixed full-batch steps)
             fit on the train split's objects and scored on the test split's: the token of
             the patch under an object's centre -> the object's colour, and its shape; the
             same on the 3 x 3 patches around it, side by side (what a 3x3 image stem
             sees; a shape shows at its outline); the same probes on the image's mean token
             are the baseline, which in a scene of several objects cannot know which object
             is asked about: the gap between the two on multi-object scenes is what the
             patch itself says
  where      in multi-object scenes, for an object whose colour+shape no other object of
             its scene shares: is its own patch the one of the scene's object patches that
             scores the object's colour+shape highest? (a) by the probes (log P(colour) +
             log P(shape)), any block; (b) by cosine to the text embedding of
             "a COLOUR SHAPE", meaningful for the last block only: its tokens go through
             the final norm and projection that the pooled (class token) vector, which the
             text is trained against, goes through; earlier blocks' tokens are pushed
             through the same maps, which never saw them. Beside it, the cosine of the
             object's own patch and of its image's average patch to that text.

Writes benchmarks/results/probe_token_locality.{json,md}.

    nice -n 19 python benchmarks/probe_token_locality.py /tmp/tiny2/eval1234/captions.json \\
        --model xmr-tiny --train-images 3000 --test-images 1000
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import host, log, publish

# Transforms of a torchvision pipeline that move pixels and that `input_point` does not
# model: a pipeline with one of these is refused rather than mapped wrongly.
_UNMODELLED = ("Crop", "Pad", "Flip", "Affine", "Rotat", "Perspective", "Resize")


def input_point(
    x: float, y: float, canvas: int, width: int, height: int, preprocess
) -> tuple[float, float] | None:
    """Where the centre of the scene pixel (x, y) of a `canvas`-pixel scene lands in the
    model's input, in input pixels (None when a crop cuts it away).

    The image (width x height pixels) shows the whole scene, as `render_scene` draws it:
    the pixel (x, y) covers [x, x+1) of the canvas, so its centre is at (x + 0.5) * width /
    canvas. Then each step of the torchvision pipeline `preprocess` moves it: Resize (an
    int scales the short side to it, as torchvision does; a pair is (height, width)) and
    CenterCrop (torchvision's rounding of the offsets). Other geometric steps are refused.
    """
    px, py = (x + 0.5) * width / canvas, (y + 0.5) * height / canvas
    w, h = width, height
    for step in getattr(preprocess, "transforms", ()):
        name = type(step).__name__
        if name == "Resize":
            size = step.size
            if isinstance(size, int) or len(size) == 1:
                short = size if isinstance(size, int) else size[0]
                # as torchvision: the short side becomes `short`, the long one is truncated
                if w <= h:
                    new_w, new_h = short, int(short * h / w)
                else:
                    new_w, new_h = int(short * w / h), short
            else:
                new_h, new_w = int(size[0]), int(size[1])
            px, py = px * new_w / w, py * new_h / h
            w, h = new_w, new_h
        elif name == "CenterCrop":
            crop_h, crop_w = step.size
            top, left = int(round((h - crop_h) / 2.0)), int(round((w - crop_w) / 2.0))
            px, py = px - left, py - top
            w, h = crop_w, crop_h
        elif any(word in name for word in _UNMODELLED):
            raise ValueError(f"cannot map points through the transform {name}")
    if not (0 <= px < w and 0 <= py < h):
        return None
    return px, py


def patch_index(point: tuple[float, float] | None, patch: int, grid: tuple[int, int]) -> int | None:
    """The row-major index of the patch (`patch` px square, `grid` = (rows, cols)) that
    holds an input point, as the tokens of `encode_images` are ordered."""
    if point is None:
        return None
    row, col = int(point[1] // patch), int(point[0] // patch)
    if not (0 <= row < grid[0] and 0 <= col < grid[1]):
        return None
    return row * grid[1] + col


@dataclass
class Objects:
    """One row per object whose centre lands in a patch of the model's input."""

    image: np.ndarray  # (M,) int: the image's row in the split
    patch: np.ndarray  # (M,) int: row-major patch index
    colour: np.ndarray  # (M,) int: index into the colour vocabulary
    shape: np.ndarray  # (M,) int
    scene_objects: np.ndarray  # (M,) int: objects in the object's scene
    unique: np.ndarray  # (M,) bool: no other object of its scene has its colour and shape
    point: np.ndarray  # (M, 2) float: the centre in input pixels (x, y)


def read_split(data: Path, split: str, limit: int) -> list[dict]:
    records = [r for r in json.loads(data.read_text())["images"] if r["split"] == split]
    return records[:limit]


def object_table(records, colours, shapes, size, preprocess, patch, grid) -> Objects:
    rows = []
    for i, record in enumerate(records):
        scene = record["scene"]
        objects = scene["objects"]
        for obj in objects:
            point = input_point(obj["x"], obj["y"], scene["canvas"], *size, preprocess)
            index = patch_index(point, patch, grid)
            if index is None:
                continue
            twins = sum(
                o["colour"] == obj["colour"] and o["shape"] == obj["shape"] for o in objects
            )
            rows.append(
                (i, index, colours.index(obj["colour"]), shapes.index(obj["shape"]),
                 len(objects), twins == 1, point)
            )  # fmt: skip
    columns = list(zip(*rows, strict=True))
    return Objects(
        image=np.array(columns[0]),
        patch=np.array(columns[1]),
        colour=np.array(columns[2]),
        shape=np.array(columns[3]),
        scene_objects=np.array(columns[4]),
        unique=np.array(columns[5]),
        point=np.array(columns[6], dtype=np.float64),
    )


def decode(records, folder: Path, preprocess):
    """(pixels (N, 3, H, W), the images' (width, height)) as the index decodes them."""
    import torch

    from xmr.retrieval.imageio import decode_image

    pixels, sizes = [], []
    for record in records:
        path = folder / record.get("filepath", "") / record["filename"]
        tensor, width, height, _, _ = decode_image(str(path), preprocess)
        pixels.append(tensor)
        sizes.append((width, height))
    return torch.stack(pixels), sizes


def check_mapping(pixels, objects: Objects, mean, std, limit: int = 200) -> float:
    """Share of the first `limit` objects whose mapped centre, in the preprocessed input,
    has the object's own colour (every shape is filled at its centre): the mapping check
    on real corpus images."""
    from xmr.training.corpus.scenes import COLOURS

    names = list(COLOURS)
    hits = 0
    count = min(limit, len(objects.image))
    for k in range(count):
        x, y = objects.point[k].astype(int)
        rgb = (pixels[objects.image[k], :, y, x].numpy() * std + mean) * 255
        want = np.array(COLOURS[names[objects.colour[k]]])
        hits += int(np.abs(rgb - want).max() < 40)
    return hits / max(count, 1)


def token_sources(encoder, pixels, batch: int = 256):
    """Yield (name, tokens (N, P, D) float32) for `embed` and every block, the way
    `encode_images` gives them; `embed` is checked against block 0's tokens first."""
    import torch

    visual = encoder.model.visual
    blocks = len(visual.transformer.resblocks)

    def embedded(x):
        with torch.inference_mode():
            tokens = visual.ln_post(visual._embeds(x))[:, 1:]  # CLS dropped
            return tokens @ visual.proj if visual.proj is not None else tokens

    # `embed` is what block 0 reads: running block 0 on it must give block 0's tokens.
    x = pixels[:8]
    with torch.inference_mode():
        through = visual.ln_post(visual.transformer.resblocks[0](visual._embeds(x)))[:, 1:]
        through = through @ visual.proj if visual.proj is not None else through
    reference = encoder.encode_images(x, token_layer=0).tokens.astype(np.float32)
    gap = float(np.abs(through.numpy() - reference).max())
    if gap > 2e-2 * float(np.abs(reference).max()):  # the reference is float16
        raise RuntimeError(f"the patch embedding path does not reproduce block 0 ({gap:.3g})")
    yield (
        "embed",
        np.concatenate(
            [embedded(pixels[i : i + batch]).numpy() for i in range(0, len(pixels), batch)]
        ),
    )
    for layer in range(blocks):
        parts = [
            encoder.encode_images(pixels[i : i + batch], token_layer=layer).tokens
            for i in range(0, len(pixels), batch)
        ]
        yield f"block {layer}", np.concatenate(parts).astype(np.float32)


def globality(tokens: np.ndarray, fit_images: int) -> dict:
    """tokens (N, P, D) of a square patch grid -> how much of each token is image-global."""
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
        "cosine_to_image_mean": float((unit * mean).sum(-1).mean()),
        "cosine_to_other_patches": float(others),
        "cosine_same_position_other_image": float(same_position),
        "row_r2": float(r2[0]),
        "column_r2": float(r2[1]),
    }


def fit_probe(x: np.ndarray, y: np.ndarray, classes: int, steps: int, l2: float, seed: int = 0):
    """Multinomial logistic regression on standardised features, full-batch Adam for a
    fixed number of steps with an L2 penalty on the weights. Returns a function that maps
    features to log-probabilities (M, classes), and the training accuracy."""
    import torch

    torch.manual_seed(seed)
    centre, scale = x.mean(0), x.std(0) + 1e-6
    features = torch.from_numpy((x - centre) / scale).float()
    labels = torch.from_numpy(y).long()
    linear = torch.nn.Linear(x.shape[1], classes)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    optimizer = torch.optim.Adam(linear.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(features), labels)
        (loss + l2 * linear.weight.pow(2).sum()).backward()
        optimizer.step()

    def log_probs(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = linear(torch.from_numpy((z - centre) / scale).float())
            return torch.log_softmax(out, -1).numpy()

    train_accuracy = float((log_probs(x).argmax(1) == y).mean())
    return log_probs, train_accuracy


def own_patch_wins(score, objects: Objects) -> tuple[float, float, int]:
    """For objects of multi-object scenes whose colour+shape is unique in the scene:
    (share where `score(own row, other row)` ranks the object's own patch strictly above
    every other object patch of its scene, the chance share, count). `score(k, j)` is how
    much the patch of object j looks like object k."""
    by_image: dict[int, list[int]] = {}
    for k, image in enumerate(objects.image):
        by_image.setdefault(int(image), []).append(k)
    wins, chance, count = 0, 0.0, 0
    for rows in by_image.values():
        if len(rows) < 2:
            continue
        for k in rows:
            if not objects.unique[k]:
                continue
            own = score(k, k)
            wins += int(all(own > score(k, j) for j in rows if j != k))
            chance += 1 / len(rows)
            count += 1
    return wins / max(count, 1), chance / max(count, 1), count


def neighbourhood(tokens: np.ndarray, objects: Objects, side: int) -> np.ndarray:
    """(M, 9 D): the tokens of the 3 x 3 patches around each object's centre patch, side by
    side (clamped at the grid's edge). A shape shows at its outline, which for all but the
    smallest objects lies in the patches around the centre one."""
    rows, cols = objects.patch // side, objects.patch % side
    parts = [
        tokens[
            objects.image, np.clip(rows + dr, 0, side - 1) * side + np.clip(cols + dc, 0, side - 1)
        ]
        for dr in (-1, 0, 1)
        for dc in (-1, 0, 1)
    ]
    return np.concatenate(parts, axis=1)


def probe_source(tokens_train, tokens_test, train: Objects, test: Objects, sizes, args, texts):
    """The what and where measures for one token source."""
    n_colours, n_shapes = sizes
    patch_train = tokens_train[train.image, train.patch]  # (M, D)
    patch_test = tokens_test[test.image, test.patch]
    mean_train = tokens_train.mean(1)[train.image]  # (M, D): the object's image's mean token
    mean_test = tokens_test.mean(1)[test.image]
    side = int(round(tokens_test.shape[1] ** 0.5))
    near_train = neighbourhood(tokens_train, train, side)  # (M, 9 D)
    near_test = neighbourhood(tokens_test, test, side)
    multi = test.scene_objects >= 2
    row: dict = {}
    log_probs = {}
    for target, labels_train, labels_test, classes in (
        ("colour", train.colour, test.colour, n_colours),
        ("shape", train.shape, test.shape, n_shapes),
    ):
        for feature, x_train, x_test in (
            ("patch", patch_train, patch_test),
            ("3x3", near_train, near_test),
            ("mean", mean_train, mean_test),
        ):
            predict, train_accuracy = fit_probe(x_train, labels_train, classes, args.steps, args.l2)
            scores = predict(x_test)
            right = scores.argmax(1) == labels_test
            row[f"{target}_{feature}_all"] = float(right.mean())
            row[f"{target}_{feature}_multi"] = float(right[multi].mean())
            row[f"{target}_{feature}_train"] = train_accuracy
            if feature == "patch":
                log_probs[target] = scores
    c, s = log_probs["colour"], log_probs["shape"]
    share, chance, count = own_patch_wins(
        lambda k, j: c[j, test.colour[k]] + s[j, test.shape[k]], test
    )
    row.update(where_probe=share, where_chance=chance, where_objects=count)
    unit = patch_test / np.linalg.norm(patch_test, axis=1, keepdims=True)
    text_index = test.colour * n_shapes + test.shape
    share, _, _ = own_patch_wins(lambda k, j: float(unit[j] @ texts[text_index[k]]), test)
    row["where_text"] = share
    # Where in the image the text-aligned content sits: the object's own patch against the
    # average patch of its image, both by cosine to the object's "a COLOUR SHAPE".
    all_unit = tokens_test / np.linalg.norm(tokens_test, axis=-1, keepdims=True)
    row["text_cos_own_patch"] = float((unit * texts[text_index]).sum(1).mean())
    row["text_cos_image_patches"] = float(
        np.einsum("mpd,md->m", all_unit[test.image], texts[text_index]).mean() / all_unit.shape[1]
    )
    return row


def table(rows: dict, last: str) -> list[str]:
    lines = [
        "| tokens | cos to image mean | colour: patch / 3x3 / mean token | "
        "shape: patch / 3x3 / mean token | where (probes) | where (text) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        text = f"{row['where_text']:.3f}" if name == last else f"({row['where_text']:.3f})"
        lines.append(
            f"| {name} | {row['cosine_to_image_mean']:.3f} "
            f"| {row['colour_patch_multi']:.3f} / {row['colour_3x3_multi']:.3f} / "
            f"{row['colour_mean_multi']:.3f} "
            f"| {row['shape_patch_multi']:.3f} / {row['shape_3x3_multi']:.3f} / "
            f"{row['shape_mean_multi']:.3f} "
            f"| {row['where_probe']:.3f} | {text} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="captions.json of `xmr make-corpus` (with scenes)")
    parser.add_argument("--model", default="xmr-tiny")
    parser.add_argument(
        "--train-images", type=int, default=3000, help="train split images for the probes"
    )
    parser.add_argument("--test-images", type=int, default=1000, help="test split images measured")
    parser.add_argument("--steps", type=int, default=300, help="full-batch probe steps")
    parser.add_argument("--l2", type=float, default=1e-3, help="probe weight penalty")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from xmr.retrieval.encoder import load_encoder
    from xmr.retrieval.modelspec import parse_model_spec
    from xmr.training.corpus.scenes import COLOURS, SHAPES

    started = time.monotonic()
    load_before = [round(v, 2) for v in os.getloadavg()]
    encoder = load_encoder(parse_model_spec(args.model), "cpu")
    visual = encoder.model.visual
    patch, grid = int(visual.patch_size[0]), tuple(int(g) for g in visual.grid_size)
    colours, shapes = list(COLOURS), list(SHAPES)
    folder = args.data.parent
    splits = {}
    for split, limit in (("train", args.train_images), ("test", args.test_images)):
        records = read_split(args.data, split, limit)
        log(f"decoding {len(records)} {split} images")
        pixels, image_sizes = decode(records, folder, encoder.preprocess)
        if len(set(image_sizes)) != 1:
            raise SystemExit("the probe expects the corpus's images to share one size")
        objects = object_table(
            records, colours, shapes, image_sizes[0], encoder.preprocess, patch, grid
        )
        splits[split] = (records, pixels, objects)
    test_records, test_pixels, test_objects = splits["test"]
    normalise = [s for s in encoder.preprocess.transforms if type(s).__name__ == "Normalize"][0]
    mapping_check = check_mapping(
        test_pixels, test_objects,
        np.array(normalise.mean), np.array(normalise.std),
    )  # fmt: skip
    log(f"mapped centres that show their object's colour: {mapping_check:.3f}")

    phrases = [f"a {c} {s}" for c in colours for s in shapes]
    texts = encoder.encode_texts(phrases).vectors  # (70, D) unit

    pixels = torch.cat([splits["train"][1], test_pixels])
    n_train = len(splits["train"][1])
    rows: dict[str, dict] = {}
    for name, tokens in token_sources(encoder, pixels):
        log(f"probing {name}")
        train_tokens, test_tokens = tokens[:n_train], tokens[n_train:]
        row = globality(test_tokens, fit_images=len(test_tokens) * 2 // 3)
        row.update(
            probe_source(train_tokens, test_tokens, splits["train"][2], test_objects,
                         (len(colours), len(shapes)), args, texts)
        )  # fmt: skip
        rows[name] = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
        log(str(rows[name]))
    last = list(rows)[-1]
    seconds = time.monotonic() - started
    load_after = [round(v, 2) for v in os.getloadavg()]
    train_objects = splits["train"][2]
    majority = {
        "colour": float(np.mean(test_objects.colour == np.bincount(train_objects.colour).argmax())),
        "shape": float(np.mean(test_objects.shape == np.bincount(train_objects.shape).argmax())),
    }
    multi = int((test_objects.scene_objects >= 2).sum())
    command = (
        f"nice -n 19 python benchmarks/probe_token_locality.py {args.data} --model {args.model} "
        f"--train-images {args.train_images} --test-images {args.test_images}"
    )
    data = {
        "command": command,
        "model": args.model,
        "data": str(args.data),
        "train_images": n_train,
        "test_images": len(test_pixels),
        "train_objects": int(len(train_objects.image)),
        "test_objects": int(len(test_objects.image)),
        "test_objects_multi": multi,
        "patch_grid": list(grid),
        "patch_px": patch,
        "mapping_check": round(mapping_check, 4),
        "probe": {"steps": args.steps, "l2": args.l2, "optimizer": "full-batch Adam, lr 0.05"},
        "majority_class": {k: round(v, 4) for k, v in majority.items()},
        "where_text_block": last,
        "seconds": round(seconds, 1),
        "load_avg_before": load_before,
        "load_avg_after": load_after,
        "host": host(),
        "rows": rows,
    }
    first = rows["embed"]
    lines = [
        f"# Which block's patch tokens say what is where ({args.model})",
        "",
        f"`{command}`",
        "",
        f"{len(test_pixels)} test images ({len(test_objects.image)} objects, {multi} in scenes of "
        f"2-3 objects), probes fit on {n_train} train images ({len(train_objects.image)} "
        f"objects); load average {load_before[0]} at the start, {load_after[0]} at the end "
        f"({seconds:.0f} s). Tokens: `encode_images(pixels, token_layer=L)` (block L through "
        "ln_post and the projection); `embed` = the patch embeddings that enter block 0, "
        "through the same ln_post and projection.",
        "",
        "Objects in multi-object scenes (accuracies on the test split):",
        "",
        *table(rows, last),
        "",
        f"Majority class: colour {majority['colour']:.3f}, shape {majority['shape']:.3f}. "
        f"Where: {first['where_objects']} objects whose colour+shape is unique in their scene; "
        f"chance (1 / objects in the scene) {first['where_chance']:.3f}. Where (text): cosine "
        f'of the patch to "a COLOUR SHAPE"; only {last}\'s tokens share the final norm and '
        "projection with the pooled (class token) vector that the text is trained against "
        "(the patch tokens themselves get no loss), the other blocks' numbers are in "
        "brackets. Mapping check: "
        f"{mapping_check:.3f} of the first 200 test objects' mapped centres show the object's "
        "colour in the model's input.",
        "",
        'Cosine to the object\'s "a COLOUR SHAPE", its own patch / the average patch of its '
        "image: "
        + "; ".join(
            f"{name} {row['text_cos_own_patch']:.3f} / {row['text_cos_image_patches']:.3f}"
            for name, row in rows.items()
        )
        + ".",
        "",
        "Position (test images; R^2 fit on two thirds, scored on the rest):",
        "",
        "| tokens | cos to other patches | cos same patch, other image | row R^2 | column R^2 |",
        "|---|---:|---:|---:|---:|",
        *[
            f"| {name} | {row['cosine_to_other_patches']:.3f} "
            f"| {row['cosine_same_position_other_image']:.3f} | {row['row_r2']:.3f} "
            f"| {row['column_r2']:.3f} |"
            for name, row in rows.items()
        ],
        "",
        "All test objects (single-object scenes included), patch / mean token: "
        + "; ".join(
            f"{name} colour {row['colour_patch_all']:.3f} / {row['colour_mean_all']:.3f}, "
            f"shape {row['shape_patch_all']:.3f} / {row['shape_mean_all']:.3f}"
            for name, row in rows.items()
        )
        + ".",
        "",
    ]
    return publish("probe_token_locality", data, lines)


if __name__ == "__main__":
    raise SystemExit(main())
