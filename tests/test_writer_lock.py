"""One writer per index: a second one is refused before any model loads, and a writer
killed with -9 frees the lock at once (its decode workers die with it)."""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import subprocess
import time

import pytest
from conftest import XMR, make_images, run_xmr, xmr_env
from faults import error_line, sigkill_when

LOCK_FILE = "write.lock"


def _broken_spec(tmp_path) -> str:
    """A model config that parses but cannot be built (65 wide, 32 per head)."""
    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 65, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "layers": 2},
    }
    config["vision_cfg"]["head_width"] = 32
    config["text_cfg"]["heads"] = 2
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(config))
    return f"{path}:none"


@pytest.mark.parametrize("command", ["index", "add-texts"])
def test_a_second_writer_is_refused_before_its_model_loads(tmp_path, command):
    """Loading this model fails; the lock is taken first, so the refusal is what shows."""
    spec = _broken_spec(tmp_path)
    make_images(tmp_path / "photos", 2)
    (tmp_path / "c.txt").write_text("a caption\n")
    target = tmp_path / "photos" if command == "index" else tmp_path / "c.txt"
    index_dir = tmp_path / "new-index"  # being created by the first writer
    index_dir.mkdir()
    with open(index_dir / LOCK_FILE, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = run_xmr(command, target, "--index", index_dir, "--model", spec)
    assert result.returncode == 1
    assert "another xmr process is writing to" in error_line(result)
    result = run_xmr(command, target, "--index", index_dir, "--model", spec)  # lock free:
    assert "cannot load model" in error_line(result)  # now the model is tried, and fails


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _committed(db) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT count(*) FROM images").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_killed_writer_frees_the_lock_and_its_workers_die(tmp_path, tiny_spec):
    folder = tmp_path / "photos"
    make_images(folder, 400)
    index_dir = tmp_path / "index"
    args = [XMR, "index", folder, "--index", index_dir, "--model", tiny_spec, "--quiet"]
    args += ["--workers", "2", "--batch-size", "4", "--commit-every", "4"]
    proc = subprocess.Popen([str(a) for a in args], env=xmr_env(), stderr=subprocess.DEVNULL)
    workers: list[int] = []

    def working() -> bool:
        workers[:] = _children(proc.pid)
        return len(workers) >= 2 and _committed(index_dir / "xmr.sqlite3") > 0

    sigkill_when(proc, working, "decode workers and a commit", timeout=240)

    # The writer is gone: the lock is free now, whatever its workers are doing.
    fd = os.open(index_dir / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    # And the workers were killed with it (PR_SET_PDEATHSIG), not left to notice by polling.
    deadline = time.monotonic() + 3  # torch's own watchdog would take about 5 s
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers)
    resumed = run_xmr("index", folder, "--index", index_dir, "--workers", "0", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["new"] + json.loads(resumed.stdout)["unchanged"] == 400
