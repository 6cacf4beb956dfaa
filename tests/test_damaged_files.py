"""Damaged index files: no command shows a traceback; readers work around what they can;
`xmr index` on the same folders and `xmr check --repair` repair everything, in the order
of what can be re-derived (SQLite the source of truth; FAISS and kept features derived;
vectors and tokens re-encoded from the files); `xmr check` says what it finds."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import indexed_paths, make_images, random_reranker
from faults import cli_built_index, error_line
from PIL import Image

from xmr.retrieval.library import Library

N_IMAGES, N_TEXTS = 30, 20
KEPT = 10  # records a truncated store keeps: ids 1..9 survive (ids start at 1)
VEC, TOK = 32 * 4, 16 * 32 * 2  # record bytes of the tiny encoder's vectors and tokens


def _truncate(path, size):
    os.truncate(path, size)


DAMAGE = {
    "images.vec truncated": lambda d: _truncate(d / "images.vec", KEPT * VEC),
    "images.vec truncated, images.faiss gone": lambda d: (
        _truncate(d / "images.vec", KEPT * VEC),
        (d / "images.faiss").unlink(),
    ),
    "images.tok truncated": lambda d: _truncate(d / "images.tok", KEPT * TOK + 100),
    "texts.vec truncated": lambda d: _truncate(d / "texts.vec", KEPT * VEC),
    "texts.tok truncated": lambda d: _truncate(d / "texts.tok", KEPT * TOK),
    "images.faiss gone": lambda d: (d / "images.faiss").unlink(),
    "images.faiss truncated": lambda d: _truncate(d / "images.faiss", 100),
    "xmr.sqlite3 truncated": lambda d: _truncate(d / "xmr.sqlite3", 8192),
    "xmr.sqlite3 garbage": lambda d: (d / "xmr.sqlite3").write_bytes(os.urandom(40960)),
    "manifest {}": lambda d: (d / "manifest.json").write_text("{}"),
    "manifest [1,2]": lambda d: (d / "manifest.json").write_text("[1, 2]"),
    "manifest binary": lambda d: (d / "manifest.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe"),
}
LOST = {  # rows whose records a damage loses: (images, texts)
    "images.vec truncated": (N_IMAGES - KEPT + 1, 0),
    "images.vec truncated, images.faiss gone": (N_IMAGES - KEPT + 1, 0),
    "images.tok truncated": (N_IMAGES - KEPT + 1, 0),
    "texts.vec truncated": (0, N_TEXTS - KEPT + 1),
    "texts.tok truncated": (0, N_TEXTS - KEPT + 1),
}
DATABASE = ("xmr.sqlite3 truncated", "xmr.sqlite3 garbage")


@pytest.fixture
def built(tmp_path, cli, tiny_spec):
    """An index of 30 images and 20 texts, built with the CLI (so it knows its sources)."""
    captions = [f"caption number {i} of a shape" for i in range(N_TEXTS)]
    return cli_built_index(cli, tmp_path, tiny_spec, captions, N_IMAGES)


def _no_traceback(result):
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


def _sound(cli, folder, corpus, index_dir, tmp_path):
    """Every image exactly once, every text, FAISS right, and a copy of an image finds it."""
    paths = indexed_paths(index_dir)
    assert sorted(paths) == sorted(str(p) for p in folder.glob("*.png"))
    check = cli("check", "--index", index_dir, "--json")
    assert check.exit_code == 0, check.stdout
    report = json.loads(check.stdout)
    assert report["ok"] and report["counts"] == {"images": N_IMAGES, "texts": N_TEXTS}
    original = folder / "img0017.png"
    # The same pixels in other bytes: encoded as a new query (an identical file would count
    # as the indexed image itself and be left out of its own results).
    copy = tmp_path / "copy.png"
    Image.open(original).save(copy, compress_level=0)
    hits = json.loads(cli("search", "--image", copy, "--json", "--index", index_dir).stdout)
    assert hits[0]["path"] == str(original) and hits[0]["score"] >= 0.999
    texts = cli("search", "caption number 3", "--texts", "--json", "--index", index_dir)
    assert len(json.loads(texts.stdout)) == 10


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_readers_never_trace_and_xmr_index_repairs(built, cli, damage, tmp_path):
    folder, corpus, index_dir = built
    DAMAGE[damage](index_dir)

    lost_file = folder / f"img{N_IMAGES - 1:04d}.png"  # the last id: past any cut store
    readers = [("search", "a red circle"), ("search", "caption", "--texts"), ("info",)]
    for args in readers + [("search", "--image", lost_file)]:
        result = cli(*args, "--index", index_dir)
        _no_traceback(result)
        if damage in DATABASE:  # the source of truth itself: say so, and how to repair
            assert result.exit_code == 1
            line = error_line(result)
            assert "xmr.sqlite3 is damaged" in line and "check --repair" in line
        else:  # derived or restorable: answered, with a note saying what was worked around
            assert result.exit_code == 0, result.output
            assert "note:" in result.stderr

    check = cli("check", "--index", index_dir, "--json")
    _no_traceback(check)
    assert check.exit_code == 1
    findings = json.loads(check.stdout)["findings"]
    assert findings and not json.loads(check.stdout)["ok"]
    damaged_file = damage.split()[0] if not damage.startswith("manifest") else "manifest.json"
    assert damaged_file in {f["file"] for f in findings}, findings

    result = cli("index", folder, "--index", index_dir, "--workers", "0", "--json")
    _no_traceback(result)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    lost_images, lost_texts = LOST.get(damage, (0, 0))
    if damage in DATABASE:
        assert summary["new"] == N_IMAGES
        assert list(index_dir.glob("xmr.sqlite3.damaged-*"))  # moved aside, not deleted
        assert "add-texts" in result.stderr  # the texts must be added again: told
        assert cli("add-texts", corpus, "--index", index_dir).exit_code == 0
    else:
        assert summary["repaired"] == lost_images + lost_texts
        assert summary["unchanged"] == N_IMAGES - lost_images  # never "30 unchanged" over loss
        assert summary["new"] == 0
    _sound(cli, folder, corpus, index_dir, tmp_path)


@pytest.mark.parametrize(
    "damage",
    ["images.vec truncated, images.faiss gone", "texts.tok truncated", "xmr.sqlite3 garbage"]
    + ["manifest binary", "images.faiss truncated"],
)
def test_check_repair_repairs_without_being_told_the_folders(built, cli, damage, tmp_path):
    folder, corpus, index_dir = built
    DAMAGE[damage](index_dir)
    result = cli("check", "--repair", "--index", index_dir, "--json")
    _no_traceback(result)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and all(f["repaired"] for f in report["findings"]), report
    _sound(cli, folder, corpus, index_dir, tmp_path)


def test_a_lost_manifest_without_a_copy_needs_the_model_and_then_reencodes(
    built, cli, tiny_spec, tmp_path
):
    """An index from before the database kept a copy of its manifest."""
    import sqlite3

    folder, corpus, index_dir = built
    with sqlite3.connect(index_dir / "xmr.sqlite3") as conn:
        conn.execute("DELETE FROM meta WHERE key = 'manifest'")
    (index_dir / "manifest.json").write_text("[]")
    result = cli("index", folder, "--index", index_dir, "--workers", "0")
    _no_traceback(result)
    assert result.exit_code == 1 and "--model" in error_line(result)

    result = cli("index", folder, "--index", index_dir, "--model", tiny_spec, "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "re-encoding every item" in result.stderr
    _sound(cli, folder, corpus, index_dir, tmp_path)


def test_kept_features_cut_short_are_dropped_never_read_as_zeros(tmp_path, encoder):
    from xmr.indexer.images import IndexOptions, index_folders
    from xmr.retrieval.check import check_index

    make_images(tmp_path / "imgs", 20)
    reranker = random_reranker(
        dim=encoder.dim,
        text_len=encoder.context_length,
        image_tokens=encoder.image_token_shape[0],
        image_stem="conv",
    )

    def index():
        with Library.open_or_create(tmp_path / "idx", encoder) as library:
            index_folders(
                library,
                encoder,
                [tmp_path / "imgs"],
                IndexOptions(workers=0),
                reranker=lambda: reranker,
                reranker_fingerprint=reranker.fingerprint,
            )

    index()
    rrf = tmp_path / "idx" / "images.rrf"
    _truncate(rrf, 3 * 4096)
    assert "images.rrf" in {f.file for f in check_index(tmp_path / "idx").findings}
    with Library.open(tmp_path / "idx") as library:  # a reader recomputes from the tokens
        assert library.images.features is None
        assert any("images.rrf" in n for n in library.notices)
        assert rrf.stat().st_size == 3 * 4096  # and writes nothing
    index()  # a writer drops them, then keeps them again for every image
    with Library.open(tmp_path / "idx") as library:
        ids = np.asarray(library.db.ids(library.images.name), dtype=np.int64)
        kept = library.images.features.read(ids).reshape(len(ids), -1)
        assert np.all(np.any(kept != 0, axis=1))
    assert check_index(tmp_path / "idx").findings == []
