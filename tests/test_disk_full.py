"""A full disk: every file write is all-or-nothing, a full disk is one line (never a
SIGBUS, never a zero exit over a truncated file), and a re-run resumes.

Two ways to fill a disk: a real tmpfs of a few MB (where the tests may mount one) and
XMR_FAULT_ENOSPC_AT=N, which makes the N-th write or allocation fail with ENOSPC. The
hook-based tests always run, so the coverage does not depend on mount rights.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from conftest import index_with, indexed_paths, make_images, run_xmr, xmr_env
from faults import error_line, fill, tmpfs

N_IMAGES = 40


def _temporaries(folder):
    return sorted(p.name for p in folder.glob("*.tmp"))  # hidden names too


@pytest.fixture
def built(tmp_path, encoder):
    folder = tmp_path / "photos"
    make_images(folder, N_IMAGES)
    index_dir = tmp_path / "built"
    index_with(index_dir, encoder, [folder])
    return folder, index_dir


def _no_mount(reason):
    pytest.skip(f"cannot mount a tmpfs here ({reason}); the XMR_FAULT_ENOSPC_AT tests cover it")


# -- the writer itself -------------------------------------------------------------------
def test_a_failed_atomic_write_keeps_the_old_file_and_no_temporary(tmp_path):
    from xmr.retrieval.errors import DiskFull
    from xmr.retrieval.storage import atomic_write_bytes, inject_enospc

    target = tmp_path / "manifest.json"
    target.write_bytes(b"old contents")
    inject_enospc(1)
    try:
        with pytest.raises(DiskFull, match=f"no space left on device writing {target}"):
            atomic_write_bytes(target, b"new contents" * 1000)
    finally:
        inject_enospc(None)
    assert target.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["manifest.json"]
    atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"new contents"


def test_a_failed_faiss_save_raises_and_keeps_the_old_index(built):
    """FAISS's own writer reports a failed write only on stderr; ours raises."""
    from xmr.retrieval.errors import DiskFull
    from xmr.retrieval.library import Library
    from xmr.retrieval.storage import inject_enospc

    _, index_dir = built
    faiss_file = index_dir / "images.faiss"
    before = faiss_file.read_bytes()
    with Library.open(index_dir, writable=True) as library:
        inject_enospc(1)
        try:
            with pytest.raises(DiskFull):
                library.images.index.save(faiss_file, library.db.generation() + 1)
        finally:
            inject_enospc(None)
    assert faiss_file.read_bytes() == before
    assert _temporaries(index_dir) == []


# -- the commands, with the ENOSPC hook (always run) -------------------------------------
@pytest.mark.parametrize("at", [1, 2, 3])
def test_compact_failing_at_any_write_is_one_line_and_loses_nothing(built, cli, at):
    from xmr.retrieval.storage import inject_enospc

    folder, index_dir = built
    search = ("search", "--image", folder / "img0003.png", "--json", "--index", index_dir)
    expected = json.loads(cli(*search).stdout)

    inject_enospc(at)  # in-process, as XMR_FAULT_ENOSPC_AT does for a process
    try:
        result = cli("compact", "--index", index_dir)
    finally:
        inject_enospc(None)
    assert result.exit_code == 1, result.output
    line = error_line(result)
    assert "no space left on device writing" in line and "nothing committed is lost" in line
    assert _temporaries(index_dir) == []
    assert json.loads(cli(*search).stdout) == expected
    check = cli("check", "--index", index_dir, "--json")
    assert check.exit_code == 0 and json.loads(check.stdout)["ok"], check.stdout
    assert cli("compact", "--index", index_dir).exit_code == 0


def test_index_failing_mid_run_resumes_without_loss(tmp_path, tiny_spec):
    folder = tmp_path / "photos"
    files = make_images(folder, 120)
    index_dir = tmp_path / "index"
    args = ["index", folder, "--index", index_dir, "--model", tiny_spec, "--workers", "0"]
    args += ["--batch-size", "8", "--commit-every", "8"]
    # A few dozen writes in: some batches committed, then the disk "fills".
    failed = run_xmr(*args, env=xmr_env(XMR_FAULT_ENOSPC_AT="12"))
    assert failed.returncode == 1, failed.stderr
    assert "no space left on device writing" in error_line(failed)
    committed = indexed_paths(index_dir)
    assert 0 < len(committed) < len(files)
    assert _temporaries(index_dir) == []

    resumed = run_xmr(*args, "--json")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["unchanged"] == len(committed)
    assert summary["new"] == len(files) - len(committed)
    assert sorted(indexed_paths(index_dir)) == sorted(str(f) for f in files)
    assert json.loads(run_xmr("check", "--index", index_dir, "--json").stdout)["ok"]


# -- the commands on a real full file system ---------------------------------------------
@pytest.mark.slow
def test_compact_on_a_full_tmpfs_keeps_the_old_faiss_file(tmp_path, built):
    folder, built_dir = built
    mount = tmp_path / "fs"
    with tmpfs(mount, "8m") as failure:
        if failure:
            _no_mount(failure)
        index_dir = mount / "index"
        shutil.copytree(built_dir, index_dir)
        search = ("search", "--image", folder / "img0005.png", "--json", "--index", index_dir)
        expected = json.loads(run_xmr(*search).stdout)
        before = (index_dir / "images.faiss").read_bytes()
        filler = fill(mount)

        result = run_xmr("compact", "--index", index_dir)
        assert result.returncode == 1, result.stderr
        line = error_line(result)
        assert "no space left on device writing" in line and str(index_dir) in line
        assert (index_dir / "images.faiss").read_bytes() == before
        assert _temporaries(index_dir) == []
        assert json.loads(run_xmr(*search).stdout) == expected  # a full disk still searches

        filler.unlink()
        assert run_xmr("compact", "--index", index_dir).returncode == 0
        assert json.loads(run_xmr(*search).stdout) == expected


# 64 patch tokens of 128 floats: 16 KB of records per image, so the memory-mapped stores,
# not the database, are what fills the disk (as with real models' tokens).
BIG_TOKENS_CFG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 4, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


def test_indexing_onto_a_full_tmpfs_is_enospc_not_sigbus(tmp_path):
    folder = tmp_path / "photos"
    files = make_images(folder, 300)
    config = tmp_path / "big-tokens.json"
    config.write_text(json.dumps(BIG_TOKENS_CFG))
    mount = tmp_path / "fs"
    with tmpfs(mount, "8m") as failure:
        if failure:
            _no_mount(failure)
        index_dir = mount / "index"
        filler = fill(mount, leave=1 << 20)  # 1 MB: the database and 60-odd images fit
        args = ["index", folder, "--index", index_dir, "--model", f"{config}:none"]
        args += ["--workers", "0"]
        args += ["--batch-size", "16", "--commit-every", "16", "--quiet"]

        first = run_xmr(*args)
        assert first.returncode == 1, (first.returncode, first.stderr)  # SIGBUS: -7
        assert "no space left on device writing" in error_line(first)
        again = run_xmr(*args)  # still full: the same one line, and nothing left behind
        assert again.returncode == 1 and "no space left" in error_line(again)
        assert _temporaries(index_dir) == []
        committed = indexed_paths(index_dir)

        filler.unlink()
        resumed = run_xmr(*args[:-1], "--json")
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout)["unchanged"] == len(committed)
        paths = indexed_paths(index_dir)
        assert sorted(paths) == sorted(str(f) for f in files)
        from xmr.retrieval.library import Library

        with Library.open(index_dir) as library:
            ids = np.array(sorted(paths.values()))
            vectors = library.images.vectors.read(ids)
            np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
            _, top = library.images.index.search(vectors, 1)
            assert top[:, 0].tolist() == ids.tolist()
