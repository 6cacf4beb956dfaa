"""`make_corpus`: write generated scenes as a Karpathy-format dataset on disk.

    out_dir/images/000000.png ...
    out_dir/captions.json

The same seed always gives a byte-identical `captions.json` and identical pixels.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from xmr.retrieval.errors import InputError
from xmr.training.corpus.captions import Description, describe
from xmr.training.corpus.phrases import phrases_for
from xmr.training.corpus.render import render_scene
from xmr.training.corpus.sampling import sample_scenes
from xmr.training.corpus.scenes import Scene

DATASET_NAME = "xmr-shapes"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CorpusInfo:
    """What `make_corpus` wrote."""

    out_dir: Path
    captions_path: Path
    images_dir: Path
    seed: int
    n_images: int
    n_train: int
    n_val: int
    n_test: int


def split_counts(n_images: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """(train, val, test) sizes; val and test are rounded, train takes the rest."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise InputError(
            f"split_fractions={fractions}: give three non-negative numbers summing to 1"
        )
    n_val, n_test = round(n_images * fractions[1]), round(n_images * fractions[2])
    return n_images - n_val - n_test, n_val, n_test


def _split_of(index: int, counts: tuple[int, int, int]) -> str:
    # Contiguous blocks: train first, then val, then the last images are the test split.
    if index < counts[0]:
        return "train"
    return "val" if index < counts[0] + counts[1] else "test"


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _image_record(
    index: int,
    filename: str,
    split: str,
    scene: Scene,
    description: Description,
    phrases: list[str],
) -> dict:
    first_sentid = index * len(description.captions)
    sentences = [
        {"raw": raw, "tokens": _tokens(raw), "imgid": index, "sentid": first_sentid + j}
        for j, raw in enumerate(description.captions)
    ]
    return {
        "filename": filename,
        "filepath": "images",
        "imgid": index,
        "split": split,
        "sentences": sentences,
        "sentids": [s["sentid"] for s in sentences],
        "scene": scene.to_json(),
        "negatives": description.negatives,
        "negatives_of": first_sentid,  # the sentid the negatives are minimal edits of
        # Short search phrases, true of the scene; not sentences, so recall@k (one image
        # per caption) does not count them: load_dataset(..., phrases=True) adds them.
        "phrases": phrases,
    }


def _save_png(job: tuple[dict, str, int]) -> None:
    """Render and write one image (module-level so a process pool can run it)."""
    scene_json, path, size = job
    # optimize=False: PNG optimisation costs far more time than the bytes it saves here.
    render_scene(Scene.from_json(scene_json), size).save(path, optimize=False, compress_level=6)


def _image_jobs(scenes: list[Scene], paths: list[Path], size: int) -> Iterator[tuple]:
    return ((s.to_json(), str(p), size) for s, p in zip(scenes, paths, strict=True))


def make_corpus(
    out_dir: Path,
    n_images: int,
    seed: int,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    image_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
    overwrite: bool = False,
) -> CorpusInfo:
    """Write `n_images` images and their Karpathy-format `captions.json` under `out_dir`.

    Scenes are drawn one after another from `random.Random(seed)` with unique canonical
    descriptions; captions and negatives of image i come from their own RNG seeded by
    (seed, i), its short phrases from another; pixels depend on the scene only. So the output
    is the same for any `workers` (processes that render PNGs). `progress(n_done, n_total)`
    is called as images are written. `captions.json` is written last, so its presence marks
    a complete corpus; an existing one is an error unless `overwrite` (which removes it
    first, then rewrites every image it lists; older images beyond `n_images` stay on disk,
    unlisted).
    """
    if n_images < 1:
        raise InputError(f"n_images={n_images}: ask for at least one image")
    if image_size < 16:
        raise InputError(f"image_size={image_size}: use at least 16 pixels")
    counts = split_counts(n_images, split_fractions)
    out_dir = Path(out_dir)
    captions_path = out_dir / "captions.json"
    if captions_path.exists():
        if not overwrite:
            raise InputError(f"{captions_path} already exists; pick another directory or overwrite")
        captions_path.unlink()  # an interrupted rewrite must not look complete
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)

    scenes = sample_scenes(n_images, seed, canvas=image_size)
    width = max(6, len(str(n_images - 1)))
    filenames = [f"{i:0{width}d}.png" for i in range(n_images)]
    records = [
        _image_record(
            i,
            filenames[i],
            _split_of(i, counts),
            scene,
            describe(scene, random.Random(f"{DATASET_NAME}/{seed}/{i}")),
            # Their own RNG: the sentences and negatives are what they were before phrases.
            phrases_for(scene, random.Random(f"{DATASET_NAME}/{seed}/{i}/phrases")),
        )
        for i, scene in enumerate(scenes)
    ]
    _write_images(scenes, [images_dir / f for f in filenames], image_size, workers, progress)

    corpus = {
        "dataset": DATASET_NAME,
        "version": FORMAT_VERSION,
        "seed": seed,
        "image_size": image_size,
        "images": records,
    }
    partial = captions_path.with_suffix(".json.partial")
    partial.write_text(json.dumps(corpus, separators=(",", ":")) + "\n", encoding="utf-8")
    os.replace(partial, captions_path)
    return CorpusInfo(out_dir, captions_path, images_dir, seed, n_images, *counts)


def _write_images(
    scenes: list[Scene],
    paths: list[Path],
    size: int,
    workers: int,
    progress: Callable[[int, int], None] | None,
) -> None:
    jobs = _image_jobs(scenes, paths, size)
    if workers > 1:
        # spawn, not fork: the caller may hold threads (torch, BLAS) that fork would break.
        # A pool that cannot start (say, a main module read from stdin) raises BrokenProcessPool.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            _report(pool.map(_save_png, jobs, chunksize=64), len(scenes), progress)
    else:
        _report(map(_save_png, jobs), len(scenes), progress)


def _report(done_jobs: Iterator, total: int, progress: Callable[[int, int], None] | None) -> None:
    """Drain `done_jobs`, calling `progress` about a hundred times and at the end."""
    every = max(1, total // 100)
    for done, _ in enumerate(done_jobs, start=1):
        if progress and (done % every == 0 or done == total):
            progress(done, total)
