"""Load image/text retrieval evaluation datasets into one structure, `RetrievalDataset`.

Two JSON formats are recognised by their shape (see `load_dataset`):

* Karpathy split files (``dataset_coco.json``, ``dataset_flickr30k.json``) and the corpora that
  ``xmr make-corpus`` writes (same format, optional per-image ``"negatives"``);
* LAVIS / CLIP_benchmark annotation lists (``coco_karpathy_test.json``, ...).

Problems with a file raise `DatasetError` naming the file, the record and its image.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from xmr.retrieval.errors import DatasetError

# Negative-caption kinds written by `xmr make-corpus` (other string keys are accepted as well).
NEGATIVE_KINDS: tuple[str, ...] = ("attribute_swap", "relation_swap", "shape_change")


@dataclass(eq=False)
class RetrievalDataset:
    """An evaluation set: images, their captions, and the caption <-> image map.

    Captions are stored image by image, so ``image_to_texts[i]`` is a run of consecutive caption
    indices and ``text_to_image[image_to_texts[i]] == i``. Compare two datasets field by field
    (``text_to_image`` is a numpy array).
    """

    name: str  # the Karpathy file's "dataset" value, else the file stem minus "dataset_"
    images_root: Path  # absolute folder the image paths were resolved against
    image_paths: list[Path]  # (n_images,) absolute image paths, every one exists unless unchecked
    captions: list[str]  # (n_texts,) stripped caption strings
    text_to_image: np.ndarray  # (n_texts,) int64: image index of each caption
    image_to_texts: list[list[int]]  # (n_images,) caption indices of each image, ascending
    negatives: list[dict[str, str]] | None  # (n_images,) {kind: negative caption}; None if absent
    source_file: Path  # absolute path of the JSON file
    format: str  # "karpathy" or "lavis"
    split: str | None  # split selected from a Karpathy file; None = all / LAVIS (file = split)

    @property
    def n_images(self) -> int:
        return len(self.image_paths)

    @property
    def n_texts(self) -> int:
        return len(self.captions)

    def head(self, n_images: int) -> RetrievalDataset:
        """The first `n_images` images with their captions (quick runs of a benchmark)."""
        if n_images >= self.n_images:
            return self
        n_texts = self.image_to_texts[n_images - 1][-1] + 1  # captions are stored image by image
        return replace(
            self,
            image_paths=self.image_paths[:n_images],
            captions=self.captions[:n_texts],
            text_to_image=self.text_to_image[:n_texts],
            image_to_texts=self.image_to_texts[:n_images],
            negatives=None if self.negatives is None else self.negatives[:n_images],
        )


def _abs(path: Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(path)))


def load_dataset(
    path: Path | str,
    images_root: Path | str | None = None,
    split: str | None = "test",
    *,
    check_images: bool = True,
    phrases: bool = False,
) -> RetrievalDataset:
    """Read a Karpathy or LAVIS retrieval file; the format is detected from the JSON shape.

    path: the JSON file. images_root: folder image paths are relative to; defaults to the JSON
    file's own folder (so an ``xmr make-corpus`` output, whose records say
    ``"filepath": "images"``, resolves to ``<dir of json>/images``). split: Karpathy split to
    keep ("test", "val", "train", "restval"); None keeps every image; ignored for LAVIS files,
    where the file itself is the split. check_images: verify that every image file exists.
    phrases: add an xmr corpus's short phrases ("a red circle", "two squares") to each
    image's captions, for training (a phrase fits many images: recall@k, which counts one
    image per caption, is measured without them). A DatasetError when the split has none
    (a corpus written before phrases existed, or a LAVIS file), rather than training on the
    sentences alone as if phrases had been asked for.

    Karpathy format (a JSON object)::

        {"dataset": "coco",                               # optional, used as the name
         "images": [{"filename": "COCO_val2014_000000391895.jpg",
                     "filepath": "val2014",               # optional sub-folder of images_root
                     "split": "test",                     # train | val | test | restval
                     "sentences": [{"raw": "A man ..."}, ...],   # >= 1, "raw" non-empty
                     "negatives": {"attribute_swap": "...",      # optional (xmr corpora),
                                   "relation_swap": "...",       # any subset of the keys
                                   "shape_change": "..."},
                     "phrases": ["a red circle", ...]},  # optional, read with phrases=True
                    ...]}

      image path = images_root / filepath / filename (images_root / filename without filepath).

    LAVIS / CLIP_benchmark format (a JSON list)::

        [{"image": "val2014/COCO_val2014_000000391895.jpg",   # relative to images_root
          "caption": ["A man ...", "..."]},                    # or a single string
         ...]

      Records naming the same "image" (LAVIS train files: one record per caption, with an
      "image_id") are grouped into one image, in order of first appearance.

    Raises DatasetError naming the file and record for: a missing or non-JSON file, an
    unknown format, a record without a filename/image, an empty caption list or caption,
    missing image files (first one and count), and a split with no images.
    """
    src = _abs(Path(path))
    label = str(path)
    data = _read_json(src, label)
    root = _abs(Path(images_root)) if images_root is not None else src.parent

    if isinstance(data, dict) and isinstance(data.get("images"), list):
        images, negatives = _parse_karpathy(data["images"], label, split, phrases)
        fmt, used_split = "karpathy", split
        name = data.get("dataset") if isinstance(data.get("dataset"), str) else None
    elif isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        images, negatives = _parse_lavis(data, label), None
        fmt, used_split, name = "lavis", None, None
    else:
        raise DatasetError(f"{label}: unknown dataset format ({_describe(data)}); {_FORMATS}")
    if phrases and not _has_phrases(data, used_split):
        where = f"the {used_split!r} split's records" if used_split else "its records"
        raise DatasetError(
            f'{label}: phrases asked for, but {where} have no "phrases"; write the corpus '
            "with this version's `xmr make-corpus`, or train without --phrases"
        )

    if not name:
        stem = src.stem
        name = stem[len("dataset_") :] if stem.startswith("dataset_") and len(stem) > 8 else stem

    image_paths = [root / rel for _, _, rel, _ in images]
    if check_images:
        _check_images_exist(images, image_paths, root, label, used_split)

    captions: list[str] = []
    image_to_texts: list[list[int]] = []
    for _, _, _, caps in images:
        image_to_texts.append(list(range(len(captions), len(captions) + len(caps))))
        captions.extend(caps)
    text_to_image = np.repeat(np.arange(len(images), dtype=np.int64), [len(c) for *_, c in images])
    return RetrievalDataset(
        name, root, image_paths, captions, text_to_image, image_to_texts, negatives, src, fmt,
        used_split,
    )  # fmt: skip


def _read_json(src: Path, label: str) -> Any:
    """The parsed JSON of `src`; DatasetError with one line naming the file otherwise."""
    if src.is_dir():
        raise DatasetError(f"{label}: is a directory; pass the dataset's JSON annotation file")
    try:
        text = src.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{label}: file not found") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{label}: not a UTF-8 JSON file ({e.reason})") from None
    except OSError as e:
        raise DatasetError(f"{label}: cannot read file ({e.strerror or e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"{label}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from None


_FORMATS = (
    'expected a Karpathy object {"images": [{"filename", "split", "sentences": [{"raw"}]}]} '
    'or a LAVIS list [{"image": "path", "caption": ["...", ...]}]'
)

# One parsed image: (record label for messages, filename for messages, relative path, captions).
_Image = tuple[str, str, Path, list[str]]


def _describe(data: Any) -> str:
    if isinstance(data, dict):
        keys = ", ".join(repr(k) for k in list(data)[:8])
        return f"a JSON object with keys [{keys}]"
    if isinstance(data, list):
        if not data:
            return "an empty JSON list"
        bad = next(i for i, r in enumerate(data) if not isinstance(r, dict))
        return f"a JSON list whose element [{bad}] is {type(data[bad]).__name__}, not an object"
    return f"a JSON {type(data).__name__}"


def _clean_caption(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise DatasetError(f"{where} is {type(value).__name__}, not a string")
    caption = value.strip()
    if not caption:
        raise DatasetError(f"{where} is an empty string")
    return caption


def _has_phrases(data: Any, split: str | None) -> bool:
    """Whether any Karpathy record of `split` (None: any split) lists a short phrase."""
    if not isinstance(data, dict):
        return False  # a LAVIS list has no phrases
    return any(
        rec.get("phrases") for rec in data["images"] if split is None or rec.get("split") == split
    )


def _parse_karpathy(
    records: list[Any], label: str, split: str | None, phrases: bool = False
) -> tuple[list[_Image], list[dict[str, str]] | None]:
    """Validate every record, keep those of `split`; negatives is None if none has any."""
    kept: list[_Image] = []
    negatives: list[dict[str, str]] = []
    split_counts: dict[str, int] = {}
    seen: dict[Path, int] = {}
    for i, rec in enumerate(records):
        image, rec_split, negs = _karpathy_record(
            rec, f"{label}: images[{i}]", split, seen, phrases
        )
        seen[image[2]] = i
        key = rec_split if rec_split is not None else "<none>"
        split_counts[key] = split_counts.get(key, 0) + 1
        if split is None or rec_split == split:
            kept.append((f"images[{i}]", *image[1:]))
            negatives.append(negs)

    if not kept:
        present = ", ".join(f"{s!r} ({n} images)" for s, n in sorted(split_counts.items()))
        if split is None:
            raise DatasetError(f"{label}: no images in this file")
        raise DatasetError(
            f"{label}: no images in split {split!r}; splits in this file: {present or 'none'}"
        )
    return kept, (negatives if any(negatives) else None)


def _karpathy_record(
    rec: Any, where: str, split: str | None, seen: dict[Path, int], phrases: bool = False
):
    """One Karpathy image record, validated (`seen`: the records so far, by image path)
    -> (image, its split, its negatives)."""
    if not isinstance(rec, dict):
        raise DatasetError(f"{where}: is {type(rec).__name__}, not an object")
    filename = rec.get("filename")
    if not isinstance(filename, str) or not filename.strip():
        raise DatasetError(f'{where}: no "filename" (a non-empty string) in this record')
    where = f"{where} ({filename!r})"
    filepath = rec.get("filepath")
    if filepath is not None and not isinstance(filepath, str):
        raise DatasetError(f'{where}: "filepath" is {type(filepath).__name__}, not a string')
    rel = Path(filepath) / filename if filepath else Path(filename)
    if rel in seen:
        raise DatasetError(f"{where}: same image as images[{seen[rel]}]; list each image once")

    rec_split = rec.get("split")
    if rec_split is not None and not isinstance(rec_split, str):
        raise DatasetError(f'{where}: "split" is {type(rec_split).__name__}, not a string')
    if split is not None and rec_split is None:
        raise DatasetError(
            f'{where}: no "split" in this record; pass split=None to use every image'
        )

    sentences = rec.get("sentences")
    if not isinstance(sentences, list):
        raise DatasetError(f'{where}: no "sentences" list in this record')
    if not sentences:
        raise DatasetError(f"{where}: empty caption list")
    caps = []
    for j, sent in enumerate(sentences):
        if not isinstance(sent, dict) or "raw" not in sent:
            raise DatasetError(f'{where}: sentences[{j}] has no "raw" caption')
        caps.append(_clean_caption(sent["raw"], f"{where}: sentences[{j}]"))
    if phrases:  # an xmr corpus's short phrases, as more captions of the image
        extra = rec.get("phrases") or []
        if not isinstance(extra, list):
            raise DatasetError(f'{where}: "phrases" is {type(extra).__name__}, not a list')
        caps += [_clean_caption(p, f"{where}: phrases[{j}]") for j, p in enumerate(extra)]

    raw_negs = rec.get("negatives")
    negs: dict[str, str] = {}
    if raw_negs is not None:
        if not isinstance(raw_negs, dict):
            raise DatasetError(f'{where}: "negatives" is {type(raw_negs).__name__}, not an object')
        for kind, neg in raw_negs.items():
            negs[kind] = _clean_caption(neg, f"{where}: negatives[{kind!r}]")
    return (where, filename, rel, caps), rec_split, negs


def _parse_lavis(records: list[dict[str, Any]], label: str) -> list[_Image]:
    """Validate every record and group records of the same image, in first-appearance order."""
    by_image: dict[str, _Image] = {}
    for i, rec in enumerate(records):
        where = f"{label}: record[{i}]"
        image = rec.get("image")
        if not isinstance(image, str) or not image.strip():
            raise DatasetError(f'{where}: no "image" (a non-empty relative path) in this record')
        where = f"{where} ({image!r})"
        if "caption" not in rec:
            raise DatasetError(f'{where}: no "caption" in this record')
        raw = rec["caption"]
        if isinstance(raw, str):
            caps = [_clean_caption(raw, f"{where}: caption")]
        elif isinstance(raw, list):
            if not raw:
                raise DatasetError(f"{where}: empty caption list")
            caps = [_clean_caption(c, f"{where}: caption[{j}]") for j, c in enumerate(raw)]
        else:
            raise DatasetError(
                f'{where}: "caption" is {type(raw).__name__}, not a string or a list of strings'
            )
        if image in by_image:
            by_image[image][3].extend(caps)
        else:
            by_image[image] = (f"record[{i}]", image, Path(image), caps)
    return list(by_image.values())


def _check_images_exist(
    images: list[_Image], image_paths: list[Path], root: Path, label: str, split: str | None
) -> None:
    missing = [k for k, p in enumerate(image_paths) if not p.is_file()]
    if not missing:
        return
    rec, filename, _, _ = images[missing[0]]
    scope = f" of split {split!r}" if split is not None else ""
    raise DatasetError(
        f"{label}: {len(missing)} of {len(images)} image files{scope} not found under {root}; "
        f"first missing: {rec} ({filename!r}) -> {image_paths[missing[0]]}. "
        "Pass --images-root DIR naming the folder the image paths are relative to."
    )
