"""Shared by the benchmark scripts: generated photos, model configs, result files.

Benchmarks may import the product; the product never imports this folder.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# A small CLIP (~9M parameters) for speed measurements with a cheap model: 64 px images,
# 8 px patches, vision 192 x 4 layers, text 128 x 4 layers, context 32, embed 128.
TINY_CFG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 192, "patch_size": 8, "head_width": 64},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def tiny_spec(folder: Path) -> str:
    """Write the tiny config into `folder` and return its model spec (random weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "xmr-bench-tiny.json"
    path.write_text(json.dumps(TINY_CFG))
    return f"{path}:none"


def make_photos(
    folder: Path,
    n: int,
    size: tuple[int, int] = (512, 384),
    jpeg_share: float = 0.7,
    start: int = 0,
) -> list[Path]:
    """`n` distinct photo-sized pictures (shapes, gradients, noise), JPEG and PNG mixed.

    Decoding cost is what matters for the pipeline, so they have a camera-like size
    and JPEG quality, not thumbnails.
    """
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    w, h = size
    ramp = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]  # (1, W, 1)
    for i in range(start, start + n):  # seed i draws picture i: distinct content, no twins
        rng = np.random.default_rng(i)
        base = rng.integers(0, 256, 3).astype(np.float32)
        tint = rng.integers(0, 256, 3).astype(np.float32)
        pixels = base * (1 - ramp) + tint * ramp  # (1, W, 3) gradient
        pixels = np.broadcast_to(pixels, (h, w, 3)).copy()
        pixels += rng.normal(0, 12, size=pixels.shape)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(3, 9))):
            x0, x1 = sorted(int(v) for v in rng.integers(0, w, 2))
            y0, y1 = sorted(int(v) for v in rng.integers(0, h, 2))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
            shape((x0, y0, x1 + 8, y1 + 8), fill=colour)
        jpeg = rng.random() < jpeg_share
        path = folder / f"photo{i:05d}.{'jpg' if jpeg else 'png'}"
        image.save(path, quality=90) if jpeg else image.save(path)
        paths.append(path)
    return paths


def user_env(**extra: str) -> dict:
    """The environment for timing a command as its users run it. A shell that forbids
    writing bytecode (PYTHONDONTWRITEBYTECODE) would make an editable install compile
    every module on every run, which an installed package (compiled by pip) never does."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, **extra}


def host() -> dict:
    import torch

    return {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_avg": [round(v, 2) for v in os.getloadavg()],  # other work on the machine
    }


def write_results(name: str, data: dict, markdown: str, out: Path = RESULTS) -> Path:
    """out/NAME.json and out/NAME.md; returns the JSON path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    (out / f"{name}.md").write_text(markdown)
    return path


def publish(name: str, data: dict, lines: list[str], out: Path | None = None) -> int:
    """Write out/NAME.json and NAME.md (RESULTS by default), print the markdown; exit 0."""
    path = write_results(name, data, "\n".join(lines), out or RESULTS)
    print("\n".join(lines))
    log(f"wrote {path}")
    return 0


def median(values) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))
