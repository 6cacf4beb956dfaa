"""`--executor ray`: the decode -> encode step in a Ray actor pool, written by this process.

A real local Ray (num_cpus=2), real actors loading the tiny encoder, real images and
bad files: the index it builds must be the one the local path builds (paths, ids,
vectors, skipped files and their reasons, search results); a re-run embeds nothing;
an actor killed mid-run leaves a consistent index that a re-run completes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import (
    MAX_PIXELS,
    REPO,
    db_rows,
    indexed_paths,
    make_bad_files,
    make_images,
    run_xmr,
    stored_vectors,
)

from xmr.indexer.executor import Executor
from xmr.indexer.images import IndexOptions, index_folders
from xmr.indexer.report import Reporter
from xmr.indexer.texts import add_texts
from xmr.retrieval.library import Library

N_IMAGES = 200
RAY = Executor("ray")


@pytest.fixture(scope="module")
def local_ray():
    import ray  # the `ray` extra is part of `.[dev]`: a missing install fails, never skips

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """200 images (PNG and JPEG, two byte-identical copies) and every kind of bad file."""
    folder = tmp_path_factory.mktemp("ray") / "photos"
    make_images(folder, N_IMAGES - 50)
    make_images(folder / "jpeg", 50, start_seed=500, ext=".jpg")
    shutil.copy(folder / "img0003.png", folder / "copy-of-3.png")
    shutil.copy(folder / "img0007.png", folder / "jpeg" / "copy-of-7.png")
    reasons = make_bad_files(folder / "bad")
    return folder, reasons


def _index(index_dir, encoder, folder, executor, reporter=None, **options):
    options = IndexOptions(
        **{"batch_size": 16, "workers": 0, "commit_every": 32, "max_pixels": MAX_PIXELS, **options},
        executor=executor,
    )
    with Library.open_or_create(index_dir, encoder) as library:
        return index_folders(library, encoder, [folder], options, reporter)


def _contents(index_dir):
    """(rows without timestamps, vectors by id, tokens by id, top-10 of 20 queries)."""
    rows = [
        {k: v for k, v in row.items() if k not in ("added_at", "updated_at")}
        for row in db_rows(index_dir)
    ]
    with Library.open(index_dir) as library:
        ids = library.images.index.ids()
        vectors = library.images.vectors.read(ids)
        tokens = library.images.tokens.read(ids)
        _, top = library.images.index.search(vectors[:20], 10)
    return rows, ids, vectors, tokens, top


@pytest.fixture(scope="module")
def local_index(photos, encoder, tmp_path_factory):
    folder, _ = photos
    index_dir = tmp_path_factory.mktemp("local") / "index"
    summary = _index(index_dir, encoder, folder, Executor("local"))
    return index_dir, summary


@pytest.mark.slow
def test_ray_builds_the_index_the_local_path_builds(
    local_ray, photos, local_index, encoder, tmp_path
):
    folder, reasons = photos
    local_dir, local_summary = local_index
    ray_dir = tmp_path / "index"
    summary = _index(ray_dir, encoder, folder, RAY)

    assert summary.new == local_summary.new == N_IMAGES
    assert summary.duplicates == local_summary.duplicates == 2
    assert summary.encoded == N_IMAGES
    rows, ids, vectors, tokens, top = _contents(ray_dir)
    l_rows, l_ids, l_vectors, l_tokens, l_top = _contents(local_dir)
    assert rows == l_rows  # same paths, ids, sizes, hashes, widths, states and reasons
    np.testing.assert_array_equal(ids, l_ids)
    np.testing.assert_allclose(vectors, l_vectors, atol=1e-5)
    np.testing.assert_allclose(tokens.astype(np.float32), l_tokens.astype(np.float32), atol=2e-3)
    np.testing.assert_array_equal(top, l_top)

    # Bad files are skipped with their reason, as locally.
    skipped = {os.path.basename(p): r for p, r in summary.skipped}
    assert skipped == {os.path.basename(p): r for p, r in local_summary.skipped}
    for name, reason in reasons.items():
        assert reason in skipped[name]

    again = _index(ray_dir, encoder, folder, RAY)  # nothing changed: nothing to embed
    assert again.encoded == 0 and again.new == 0
    assert again.unchanged == N_IMAGES + 2 and again.skipped_before == len(reasons)


def _ray_actor_pids() -> list[int]:
    """Pids of the Ray Data encoder actors started under this process (the test's Ray)."""
    import psutil

    pids = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "ImageEmbedActor" in " ".join(child.cmdline()):
                pids.append(child.pid)
        except psutil.Error:
            continue
    return pids


class KillOnFirstBatch(Reporter):
    """Kills one encoder actor with SIGKILL when the writer receives its first batch."""

    stage_name: str | None = None
    killed: int | None = None

    def stage(self, name: str, total: int) -> None:
        self.stage_name = name

    def advance(self, n: int) -> None:
        if self.stage_name == "embedding" and self.killed is None:
            pids = _ray_actor_pids()
            assert pids, "no encoder actor is running while batches arrive"
            os.kill(pids[0], signal.SIGKILL)
            self.killed = pids[0]


# A model slow enough (~0.5 GFLOP an image) that a batch takes the actors real time, so
# most blocks are still waiting for an actor when the writer receives the first one.
HEAVY_CFG = {
    "embed_dim": 64,
    "vision_cfg": {
        "image_size": 160,
        "layers": 6,
        "width": 256,
        "patch_size": 16,
        "head_width": 64,
    },
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.mark.slow
def test_killed_actor_leaves_a_consistent_index_that_a_rerun_completes(local_ray, photos, tmp_path):
    from xmr.retrieval.embedding import embed_images
    from xmr.retrieval.encoder import load_encoder

    folder, reasons = photos
    config = tmp_path / "heavy.json"
    config.write_text(json.dumps(HEAVY_CFG))
    heavy = load_encoder(f"{config}:none", "cpu")
    index_dir = tmp_path / "index"
    reporter = KillOnFirstBatch()
    options = {"batch_size": 8, "commit_every": 8}
    try:
        _index(index_dir, heavy, folder, RAY, reporter, **options)
    except Exception as exc:  # Ray may give up on the killed actor's blocks: allowed
        print(f"run ended by {exc!r}")
    assert reporter.killed is not None

    def check_consistent():  # FAISS holds each indexed row once; its vector is on disk
        paths = indexed_paths(index_dir)
        with Library.open(index_dir) as library:
            index = library.images.index
            assert (index.ntotal, set(index.ids().tolist())) == (len(paths), set(paths.values()))
        norms = np.linalg.norm(stored_vectors(index_dir, paths.values()), axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
        return paths

    check_consistent()
    _index(index_dir, heavy, folder, RAY, **options)
    paths = check_consistent()
    assert len(paths) == N_IMAGES + 2  # every image once (and the two copies)
    assert len(db_rows(index_dir)) == N_IMAGES + 2 + len(reasons)
    # Each stored vector is its own file's: the shared step run here gives the same.
    order = sorted(paths)
    expected = np.concatenate(
        [b.encoded.vectors for b in embed_images(order, heavy, batch_size=64, workers=0)]
    )
    with Library.open(index_dir) as library:
        stored = library.images.vectors.read(np.array([paths[p] for p in order]))
    np.testing.assert_allclose(stored, expected, atol=1e-5)


@pytest.mark.slow
def test_texts_on_ray_match_the_local_path(local_ray, encoder, tmp_path):
    corpus = tmp_path / "captions.txt"
    corpus.write_text("\n".join(f"a photo of {i} red squares" for i in range(300)) + "\n")
    results = {}
    for name, executor in (("local", Executor("local")), ("ray", RAY)):
        with Library.open_or_create(tmp_path / name, encoder) as library:
            summary = add_texts(library, encoder, corpus, batch_size=64, executor=executor)
        assert summary.new == 300
        rows = [(r["id"], r["text"], r["n_tokens"]) for r in db_rows(tmp_path / name, "texts")]
        with Library.open(tmp_path / name) as library:
            ids = library.texts.index.ids()
            results[name] = (rows, ids, library.texts.vectors.read(ids))
    assert results["ray"][0] == results["local"][0]
    np.testing.assert_array_equal(results["ray"][1], results["local"][1])
    np.testing.assert_allclose(results["ray"][2], results["local"][2], atol=1e-5)


@pytest.mark.slow
def test_cli_index_on_a_ray_it_starts_itself(tiny_spec, tmp_path):
    folder = tmp_path / "photos"
    make_images(folder, 30)
    index_dir = tmp_path / "index"
    args = ["index", folder, "--index", index_dir, "--model", tiny_spec, "--workers", "0"]
    result = run_xmr(*args, "--executor", "ray", "--actors", "1", "--json", timeout=600)
    assert result.returncode == 0, result.stderr
    assert '"new": 30' in result.stdout
    assert len(indexed_paths(index_dir)) == 30


def test_the_local_path_never_imports_ray(encoder, tiny_spec, tmp_path):
    make_images(tmp_path / "photos", 5)
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, 'tests');"
        "from conftest import index_with; from retrieval.encoder import load_encoder;"
        f"e = load_encoder({tiny_spec!r}, 'cpu');"
        f"s = index_with(Path({str(tmp_path / 'index')!r}), e, [{str(tmp_path / 'photos')!r}]);"
        "assert s.new == 5; assert 'ray' not in sys.modules, 'ray was imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr


def test_cli_refuses_an_unknown_executor_before_any_work(cli, tmp_path):
    result = cli("index", tmp_path, "--index", tmp_path / "index", "--executor", "spark")
    assert result.exit_code == 1
    assert "unknown executor 'spark'; use local, ray" in result.output
    assert not (tmp_path / "index").exists()
    result = cli("index", tmp_path, "--index", tmp_path / "index", "--actors", "2")
    assert result.exit_code == 1 and "actors sizes a Ray actor pool" in result.output
    assert "(--actors)" in result.output  # the engine names the setting, the CLI its flag
    (tmp_path / "t.txt").write_text("a caption\n")
    result = cli("add-texts", tmp_path / "t.txt", "--index", tmp_path / "i", "--executor", "dask")
    assert result.exit_code == 1 and "unknown executor 'dask'" in result.output
    assert not (tmp_path / "i").exists()


@pytest.mark.slow
def test_compact_fills_ivf_shards_as_ray_tasks(local_ray, local_index, cli, tmp_path):
    one_shot, sharded = tmp_path / "one-shot", tmp_path / "sharded"
    for copy in (one_shot, sharded):
        shutil.copytree(local_index[0], copy)
    result = cli("compact", "--index", one_shot, "--index-type", "ivf", "--json")
    assert result.exit_code == 0, result.output
    args = ["--index-type", "ivf", "--shards", "3", "--executor", "ray", "--json"]
    result = cli("compact", "--index", sharded, *args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"]["after"]["type"] == "ivf"
    assert report["images"]["after"]["search_params"]["shards"] == 3

    rows, ids, vectors, _, top = _contents(sharded)  # reopened from disk, as search does
    l_rows, l_ids, _, _, l_top = _contents(one_shot)
    assert rows == l_rows
    np.testing.assert_array_equal(ids, l_ids)
    np.testing.assert_array_equal(top, l_top)
    result = cli("compact", "--index", sharded, "--index-type", "hnsw", "--shards", "2")
    assert result.exit_code == 1 and "shards split IVF builds" in result.output
