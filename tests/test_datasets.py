"""Tests of evaluation.datasets: Karpathy and LAVIS files with real tiny PNG images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xmr.evaluation.datasets import RetrievalDataset, load_dataset
from xmr.retrieval.errors import DatasetError


def make_png(path: Path, color=(200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), color).save(path)


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def karpathy_record(filename, split, captions, filepath="val2014", **extra):
    rec = {"filename": filename, "split": split, "sentences": [{"raw": c} for c in captions]}
    if filepath is not None:
        rec["filepath"] = filepath
    rec.update(extra)
    return rec


# Four images, COCO-like: sub-folder "val2014", splits test / train / restval.
RECORDS = [
    ("a.png", "test", ["a red square", "a small red box "]),
    ("b.png", "test", ["a green square"]),
    ("c.png", "train", ["a blue square", "blue", "a blue tile"]),
    ("d.png", "restval", ["a yellow square"]),
]


@pytest.fixture
def coco(tmp_path):
    """Karpathy file in tmp/ann, images in tmp/imgs/val2014; returns (json path, images root)."""
    root = tmp_path / "imgs"
    for filename, _, _ in RECORDS:
        make_png(root / "val2014" / filename)
    data = {"dataset": "tinycoco", "images": [karpathy_record(*r) for r in RECORDS]}
    return write_json(tmp_path / "ann" / "dataset_coco.json", data), root


def same_content(a: RetrievalDataset, b: RetrievalDataset) -> None:
    assert a.image_paths == b.image_paths
    assert a.captions == b.captions
    assert np.array_equal(a.text_to_image, b.text_to_image)
    assert a.text_to_image.dtype == b.text_to_image.dtype
    assert a.image_to_texts == b.image_to_texts
    assert a.images_root == b.images_root


# ---------------------------------------------------------------------------------------------
# Karpathy format
# ---------------------------------------------------------------------------------------------


def test_karpathy_test_split(coco):
    path, root = coco
    ds = load_dataset(path, images_root=root)
    assert ds.format == "karpathy" and ds.split == "test" and ds.name == "tinycoco"
    assert ds.image_paths == [root / "val2014" / "a.png", root / "val2014" / "b.png"]
    assert ds.captions == ["a red square", "a small red box", "a green square"]  # stripped
    assert ds.text_to_image.tolist() == [0, 0, 1]
    assert ds.image_to_texts == [[0, 1], [2]]
    assert ds.negatives is None
    assert ds.source_file == path and ds.images_root == root
    assert (ds.n_images, ds.n_texts) == (2, 3)


def test_karpathy_split_filtering(coco):
    path, root = coco
    train = load_dataset(path, images_root=root, split="train")
    assert [p.name for p in train.image_paths] == ["c.png"]
    assert train.image_to_texts == [[0, 1, 2]]
    restval = load_dataset(path, images_root=root, split="restval")
    assert [p.name for p in restval.image_paths] == ["d.png"]
    everything = load_dataset(path, images_root=root, split=None)
    assert [p.name for p in everything.image_paths] == ["a.png", "b.png", "c.png", "d.png"]
    assert everything.text_to_image.tolist() == [0, 0, 1, 2, 2, 2, 3]
    assert everything.split is None


def test_karpathy_without_filepath_and_default_root(tmp_path):
    make_png(tmp_path / "flickr" / "1000.jpg.png")
    data = {"images": [karpathy_record("1000.jpg.png", "test", ["a dog"], filepath=None)]}
    path = write_json(tmp_path / "flickr" / "dataset_flickr30k.json", data)
    ds = load_dataset(path)  # images_root defaults to the JSON file's folder
    assert ds.image_paths == [tmp_path / "flickr" / "1000.jpg.png"]
    assert ds.name == "flickr30k"  # no "dataset" key: file stem minus "dataset_"


def test_corpus_layout_with_negatives(tmp_path):
    corpus = tmp_path / "corpus"
    for name in ("000000.png", "000001.png", "000002.png"):
        make_png(corpus / "images" / name)
    negs0 = {"attribute_swap": "a blue circle", "relation_swap": "x", "shape_change": "y"}
    data = {
        "images": [
            karpathy_record("000000.png", "test", ["a red circle"], "images", negatives=negs0),
            karpathy_record("000001.png", "test", ["a cube"], "images"),
            karpathy_record(
                "000002.png", "test", ["a cone"], "images", negatives={"shape_change": "a cube"}
            ),
        ]
    }
    ds = load_dataset(write_json(corpus / "captions.json", data))
    assert ds.image_paths[0] == corpus / "images" / "000000.png"
    assert ds.negatives == [negs0, {}, {"shape_change": "a cube"}]
    assert ds.name == "captions"


# ---------------------------------------------------------------------------------------------
# LAVIS / CLIP_benchmark format
# ---------------------------------------------------------------------------------------------


def test_lavis_and_karpathy_parse_identically(coco, tmp_path):
    path, root = coco
    karpathy = load_dataset(path, images_root=root)
    nested = [
        {"image": "val2014/a.png", "caption": ["a red square", "a small red box"]},
        {"image": "val2014/b.png", "caption": "a green square"},  # single string
    ]
    lavis = load_dataset(write_json(tmp_path / "lavis" / "test.json", nested), images_root=root)
    assert lavis.format == "lavis" and lavis.split is None and lavis.negatives is None
    same_content(karpathy, lavis)


def test_lavis_per_caption_records_are_grouped(coco, tmp_path):
    path, root = coco
    karpathy = load_dataset(path, images_root=root)
    per_caption = [
        {"image": "val2014/a.png", "caption": "a red square", "image_id": "a"},
        {"image": "val2014/b.png", "caption": "a green square", "image_id": "b"},
        {"image": "val2014/a.png", "caption": "a small red box", "image_id": "a"},
    ]
    lavis = load_dataset(
        write_json(tmp_path / "lavis" / "train.json", per_caption), images_root=root, split="val"
    )  # split is ignored for LAVIS files
    same_content(karpathy, lavis)


def test_missing_images_can_be_unchecked(tmp_path):
    path = write_json(tmp_path / "x.json", [{"image": "nope.png", "caption": ["c"]}])
    ds = load_dataset(path, check_images=False)
    assert ds.image_paths == [tmp_path / "nope.png"]


# ---------------------------------------------------------------------------------------------
# Errors: every message names the file, and the record where there is one
# ---------------------------------------------------------------------------------------------


def load_error(path: Path, **kwargs) -> str:
    with pytest.raises(DatasetError) as info:
        load_dataset(path, **kwargs)
    return str(info.value)


def test_missing_file(tmp_path):
    msg = load_error(tmp_path / "nope.json")
    assert "nope.json" in msg and "not found" in msg


def test_not_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [', encoding="utf-8")
    msg = load_error(path)
    assert "broken.json" in msg and "not valid JSON" in msg


@pytest.mark.parametrize("data", [{"annotations": []}, "hello", [], [1, 2]])
def test_unknown_format(tmp_path, data):
    msg = load_error(write_json(tmp_path / "weird.json", data))
    assert "weird.json" in msg and "unknown dataset format" in msg


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"split": "test", "sentences": [{"raw": "x"}]}, 'images[1]: no "filename"'),
        (karpathy_record("b.png", "test", []), "images[1] ('b.png'): empty caption list"),
        (karpathy_record("b.png", "test", ["ok", "  "]), "images[1] ('b.png'): sentences[1]"),
        ({"filename": "b.png", "split": "test"}, "images[1] ('b.png'): no \"sentences\""),
        (karpathy_record("a.png", "test", ["dup"]), "images[1] ('a.png'): same image as images[0]"),
        (
            karpathy_record("b.png", "test", ["x"], negatives={"shape_change": ""}),
            "images[1] ('b.png'): negatives['shape_change'] is an empty string",
        ),
    ],
)
def test_bad_karpathy_record(coco, record, expected):
    path, root = coco
    data = {"images": [karpathy_record(*RECORDS[0]), record]}
    msg = load_error(write_json(path.parent / "captions.json", data), images_root=root)
    assert msg.startswith(str(path.parent / "captions.json") + ": ")
    assert expected in msg


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"caption": ["x"]}, 'record[1]: no "image"'),
        ({"image": "val2014/b.png", "caption": []}, "record[1] ('val2014/b.png'): empty caption"),
        ({"image": "val2014/b.png", "caption": ["x", ""]}, "('val2014/b.png'): caption[1] is"),
        (
            {"image": "val2014/b.png", "caption": " "},
            "('val2014/b.png'): caption is an empty string",
        ),
        ({"image": "val2014/b.png"}, "record[1] ('val2014/b.png'): no \"caption\""),
    ],
)
def test_bad_lavis_record(coco, record, expected):
    _, root = coco
    data = [{"image": "val2014/a.png", "caption": ["fine"]}, record]
    msg = load_error(write_json(root.parent / "lavis.json", data), images_root=root)
    assert "lavis.json" in msg and expected in msg


def test_missing_image_files(coco):
    path, root = coco
    (root / "val2014" / "a.png").unlink()
    (root / "val2014" / "c.png").unlink()
    msg = load_error(path, images_root=root, split=None)
    assert "dataset_coco.json" in msg
    assert "2 of 4 image files" in msg
    assert "images[0] ('a.png')" in msg  # the first missing one
    assert "--images-root" in msg
    # Only the requested split is checked: train's missing c.png is not reported for "test".
    assert "1 of 2 image files of split 'test'" in load_error(path, images_root=root)


def test_wrong_images_root_is_reported(coco):
    path, _ = coco  # images live in tmp/imgs, but the default root is tmp/ann
    msg = load_error(path)
    assert "2 of 2 image files" in msg and "--images-root" in msg


def test_empty_split_lists_existing_splits(coco):
    path, root = coco
    msg = load_error(path, images_root=root, split="val")
    assert "dataset_coco.json" in msg and "no images in split 'val'" in msg
    for present in ("'restval'", "'test'", "'train'"):
        assert present in msg


def test_phrases_asked_of_a_file_without_them_is_an_error(tmp_path):
    """`xmr train-encoder --phrases` on a corpus written before phrases existed must stop,
    not train on the sentences alone as if it had phrases."""
    corpus = tmp_path / "corpus"
    for name in ("0.png", "1.png", "2.png"):
        make_png(corpus / "images" / name)
    records = [
        karpathy_record("0.png", "train", ["a red circle left of a blue star"], "images"),
        karpathy_record("1.png", "train", ["a green square"], "images"),
        karpathy_record("2.png", "val", ["a cyan cross"], "images"),
    ]
    old = write_json(corpus / "old.json", {"images": records})
    assert len(load_dataset(old, split="train").captions) == 2  # without phrases: fine
    with pytest.raises(DatasetError, match=r"'train' split's records have no \"phrases\""):
        load_dataset(old, split="train", phrases=True)

    records[2]["phrases"] = ["a cyan cross", "crosses"]  # phrases in another split only
    mixed = write_json(corpus / "mixed.json", {"images": records})
    with pytest.raises(DatasetError, match='have no "phrases"'):
        load_dataset(mixed, split="train", phrases=True)
    assert load_dataset(mixed, split="val", phrases=True).captions == [
        "a cyan cross", "a cyan cross", "crosses"
    ]  # fmt: skip
    assert len(load_dataset(mixed, split=None, phrases=True).captions) == 5

    lavis = write_json(corpus / "lavis.json", [{"image": "images/0.png", "caption": "a dog"}])
    with pytest.raises(DatasetError, match="phrases asked for"):
        load_dataset(lavis, phrases=True)
