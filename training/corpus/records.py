"""The corpus records (`xmr make-corpus`'s captions.json) of a loaded dataset's images, in
the dataset's order: what training reads beside the captions (scenes, phrases)."""

from __future__ import annotations

import json
from pathlib import Path

from xmr.retrieval.errors import InputError


def dataset_records(data: str | Path, dataset, needed_for: str) -> list[dict]:
    """(n_images,) the record of each image of `dataset` (evaluation.datasets
    .RetrievalDataset, read from the file `data`), matched by image path; every one has a
    scene. `needed_for` finishes the error a file without scenes gets."""
    records = json.loads(Path(data).read_text()).get("images")
    if not isinstance(records, list):
        raise InputError(f"{data}: not an xmr corpus (no images list with scenes)")
    record_of = {
        dataset.images_root / rec.get("filepath", "") / rec["filename"]: rec
        for rec in records
        if "scene" in rec
    }
    missing = [p for p in dataset.image_paths if p not in record_of]
    if missing:
        raise InputError(
            f"{data}: {len(missing)} training images have no scene record (e.g. "
            f"{missing[0]}); {needed_for} on an xmr make-corpus file only"
        )
    return [record_of[p] for p in dataset.image_paths]
