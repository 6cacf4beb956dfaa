"""Near-duplicates: planted groups (copies, JPEG re-encodes at quality 60, half-size
resizes, 5% crops) of generated scenes and of photo-like pictures, among distinct ones,
found by `xmr duplicates` and folded by `--dedup`; and `--min-score`."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_xmr
from PIL import Image

sys.path.insert(0, str(REPO / "benchmarks"))
from common import make_photos  # noqa: E402 - photo-like pictures: gradients, shapes, noise

VARIANTS = ("copy", "q60", "half", "crop")


def _plant(source: Path, folder: Path) -> list[Path]:
    """The four variants of `source` a photo library collects by accident."""
    image = Image.open(source).convert("RGB")
    w, h = image.size
    stem = source.stem
    out = [folder / f"{stem}-copy{source.suffix}"]
    shutil.copy(source, out[0])
    out.append(folder / f"{stem}-q60.jpg")
    image.save(out[-1], quality=60)
    out.append(folder / f"{stem}-half.png")
    image.resize((w // 2, h // 2)).save(out[-1])
    out.append(folder / f"{stem}-crop.png")
    image.crop((int(w * 0.05), int(h * 0.05), w, h)).save(out[-1])
    return out


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """60 shape scenes and 30 photo-like pictures; 4 of each planted with 4 variants."""
    from xmr.engine.engine import Engine
    from xmr.training.corpus import make_corpus

    root = tmp_path_factory.mktemp("dups")
    scenes = sorted(make_corpus(root / "corpus", 60, seed=31).images_dir.iterdir())
    photos = make_photos(root / "photos", 30, (320, 240))
    variants = root / "variants"
    variants.mkdir()
    planted = []
    for source in scenes[:4] + photos[:4]:
        planted.append({str(p.resolve()) for p in [source, *_plant(source, variants)]})
    engine = Engine(root / "index")
    engine.index([root / "corpus" / "images", root / "photos", variants], model="xmr-tiny")
    return engine, planted, root


@pytest.mark.slow
def test_every_planted_group_is_found_and_nothing_else(library):
    engine, planted, root = library
    groups = engine.duplicates(threshold=0.95)
    found = [{item["path"] for item in g["items"]} for g in groups]
    assert sorted(map(sorted, found)) == sorted(map(sorted, planted))
    assert all(g["count"] == 5 for g in groups)
    item = groups[0]["items"][0]
    assert {"id", "path", "bytes", "width", "height"} <= set(item)
    # The CLI prints the same groups as JSON, and --under keeps to one folder.
    result = run_xmr("duplicates", "--index", root / "index", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == groups
    photos_only = engine.duplicates(threshold=0.95, under=[root / "photos"])
    assert photos_only == []  # each photo's variants live in another folder
    result = run_xmr("duplicates", "--index", root / "index", "--under", root / "variants")
    assert result.returncode == 0 and result.stdout.count("group ") == 8


@pytest.mark.slow
def test_duplicates_under_a_folder_reads_only_that_folders_rows(library, monkeypatch):
    from xmr.retrieval.db_read import DatabaseReader

    engine, _, root = library
    asked = []
    real = DatabaseReader.rows_by_ids

    def spy(self, table, ids):
        asked.extend(int(i) for i in ids)
        return real(self, table, ids)

    monkeypatch.setattr(DatabaseReader, "rows_by_ids", spy)
    groups = engine.duplicates(threshold=0.95, under=[root / "variants"])
    assert asked and len(asked) == len(list((root / "variants").iterdir()))
    paths = {row.path for row in real(engine._current().library.db, "images", asked).values()}
    assert all(path.startswith(str((root / "variants").resolve())) for path in paths)
    assert len(groups) == 8


@pytest.mark.slow
def test_dedup_folds_planted_copies_and_never_hides_a_distinct_image(library):
    from xmr.engine.query_input import QueryInput

    engine, planted, _ = library
    group_of = {path: frozenset(g) for g in planted for path in g}
    for group in planted:
        query = QueryInput(image_path=Path(sorted(group)[0]))
        plain = engine.search(query, k=30).hits
        folded = engine.search(query, k=10, dedup=0.95).hits
        assert len(folded) == 10  # still k results: enough distinct ones exist
        for hit in folded:
            for other in hit.duplicates:
                other_path = engine.image_path(other)
                assert group_of.get(hit.path) == group_of.get(str(other_path)) is not None
        shown = {h.id for h in folded} | {d for h in folded for d in h.duplicates}
        last = [h.id for h in plain].index(folded[-1].id)
        # Nothing distinct was hidden: every plain result down to the last one kept is
        # there, as a result or folded into one.
        assert {h.id for h in plain[: last + 1]} <= shown
        assert [h.id for h in folded] == [h.id for h in plain if h.id in {f.id for f in folded}]


@pytest.mark.slow
def test_min_score_drops_weak_results_and_says_how_many(library):
    engine, _, _ = library
    text = "A big red circle on the left of a small blue square."
    plain = engine.search(text, k=20, rerank=False).hits
    cut = (plain[4].score + plain[5].score) / 2  # on the score shown (calibration.py)
    answer = engine.search(text, k=20, rerank=False, min_score=cut)
    assert [h.id for h in answer.hits] == [h.id for h in plain[:5]]
    assert answer.below_min_score == 15 and answer.as_dict()["below_min_score"] == 15
    assert answer.notices == [f"5 of 20 results scored at least {cut}"]
    everything = engine.search(text, k=20, min_score=0.0)
    assert everything.below_min_score == 0 and len(everything.hits) == 20


def test_groups_from_vectors_alone_are_the_linked_pairs():
    """The graph part, on vectors: chains link, a lone vector stays out, and the inverted
    file used above FLAT_MAX finds the same groups as exact search."""
    from xmr.retrieval import duplicates

    rng = np.random.default_rng(0)
    base = rng.normal(size=(3000, 32)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    near = base[:40] + 0.02 * rng.normal(size=(40, 32)).astype(np.float32)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    vectors = np.concatenate([base, near])  # rows 3000+i are near row i
    exact = duplicates.duplicate_groups(vectors, 0.95)
    assert sorted(tuple(g) for g in exact) == [(i, 3000 + i) for i in range(40)]
    old = duplicates.FLAT_MAX
    duplicates.FLAT_MAX = 100  # the approximate path, on the same data
    try:
        approximate = duplicates.duplicate_groups(vectors, 0.95)
    finally:
        duplicates.FLAT_MAX = old
    assert sorted(tuple(g) for g in approximate) == sorted(tuple(g) for g in exact)
    # A pair the pixel check rejects is no group.
    vetoed = duplicates.duplicate_groups(vectors, 0.95, confirm=lambda a, b: min(a, b) != 7)
    assert (7, 3007) not in {tuple(g) for g in vetoed} and len(vetoed) == 39
