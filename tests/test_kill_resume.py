"""A real `xmr index` process, SIGKILLed mid-run, then resumed.

Committed batches must survive the kill with their vectors; opening the index must bring
FAISS in line with the database; the next run must finish the job without redoing it.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess

import numpy as np
import pytest
from conftest import XMR, db_rows, make_images, run_xmr, xmr_env
from faults import sigkill_when

from xmr.retrieval.library import Library

N_IMAGES = 300


def _committed_images(db_path) -> int:
    if not db_path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT count(*) FROM images").fetchone()[0]
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0


def _check_consistent(index_dir) -> dict[str, int]:
    """FAISS, the vector store and the database agree; returns path -> id."""
    rows = db_rows(index_dir)
    paths = {r["path"]: r["id"] for r in rows if r["state"] == "indexed"}
    assert len(paths) == len(rows)  # no duplicate rows, nothing skipped
    with Library.open(index_dir) as library:
        ids = library.images.index.ids()
        assert library.images.index.ntotal == len(paths)
        assert set(ids.tolist()) == set(paths.values())
        vectors = library.images.vectors.read(np.array(sorted(paths.values())))
    # Every committed row's vector reached the disk before the row did.
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    return paths


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_index_run_resumes(tmp_path, tiny_spec, encoder):
    from xmr.retrieval.searcher import Query, Searcher

    folder = tmp_path / "photos"
    files = make_images(folder, N_IMAGES)
    index_dir = tmp_path / "index"
    db_path = index_dir / "xmr.sqlite3"

    args = [XMR, "index", folder, "--index", index_dir, "--model", tiny_spec]
    args += ["--batch-size", "4", "--commit-every", "4", "--workers", "0", "--quiet"]
    proc = subprocess.Popen(
        [str(a) for a in args],
        env=xmr_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        sigkill_when(proc, lambda: _committed_images(db_path) > 0, "a commit")
    finally:
        proc.stderr.close()

    # Straight after the kill: part of the work is committed, and a read-only open
    # catches FAISS up with the database (its file was never saved by the killed run).
    committed = _check_consistent(index_dir)
    assert 0 < len(committed) < N_IMAGES, len(committed)

    resumed = run_xmr("index", folder, "--index", index_dir, "--workers", "0", "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["unchanged"] == len(committed)
    assert summary["new"] == summary["encoded"] == N_IMAGES - len(committed)
    assert summary["skipped"] == [] and summary["removed"] == 0

    paths = _check_consistent(index_dir)
    assert sorted(paths) == sorted(str(f) for f in files)  # every image exactly once
    assert all(paths[p] == i for p, i in committed.items())  # resumed work kept its ids

    # Searching works and is right: every image is its own nearest neighbour.
    with Library.open(index_dir) as library:
        ids = np.array(sorted(paths.values()))
        vectors = library.images.vectors.read(ids)
        _, top = library.images.index.search(vectors, 1)
        assert top[:, 0].tolist() == ids.tolist()
        hits = Searcher(library, encoder).search(Query(vectors[0], None, None, "image"), "images")
        assert hits[0].id == ids[0] and len(hits) == 10
