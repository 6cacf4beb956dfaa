"""`xmr demo` runs offline with the shipped model and shows correct answers."""

from __future__ import annotations

import pytest
from conftest import run_xmr


@pytest.mark.slow
def test_demo_indexes_queries_and_prints_recall(tmp_path):
    result = run_xmr("demo", "--dir", str(tmp_path / "demo"), "--images", "60", timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "indexed 60 images and 300 captions with xmr-tiny" in out
    for title in ("== text → image", "== image → image", "== image → text"):
        assert title in out
    assert "✓" in out  # the shipped model finds at least one right answer
    assert "| dual encoder (exact) |" in out
    row = next(line for line in out.splitlines() if line.startswith("| dual encoder (exact)"))
    t2i_r10 = float(row.split("|")[4])
    assert t2i_r10 > 50  # chance is 10 / 60 = 17%
    assert (tmp_path / "demo" / "index" / "manifest.json").exists()


@pytest.mark.slow
def test_demo_ends_with_commands_that_run_as_printed_and_says_where_its_files_are(tmp_path):
    """The demo's last lines: searches and `serve --open` naming this very `xmr` (its path,
    as a venv's .venv/bin/xmr is not on PATH), where its files are and how to remove them.
    The printed searches run in a shell whose PATH has no xmr on it."""
    import os
    import shlex
    import subprocess

    from conftest import XMR, xmr_env

    workdir = tmp_path / "my demo"  # a space: the printed paths must be quoted
    env = xmr_env(PATH="/usr/bin:/bin")
    result = subprocess.run(
        [str(XMR), "demo", "--dir", str(workdir), "--images", "20", "--quiet"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    commands = [line.strip() for line in lines if line.startswith(f"  {shlex.quote(str(XMR))} ")]
    assert len(commands) == 3, result.stdout
    searches = [c for c in commands if " search " in c]
    serve = next(c for c in commands if " serve " in c)
    assert shlex.split(serve)[1:] == ["serve", "--index", str(workdir / "index"), "--open"]
    assert any("http://127.0.0.1:8765/" in line for line in lines)
    for command in searches:
        run = subprocess.run(command, shell=True, capture_output=True, text=True, env=env,
                             timeout=300)  # fmt: skip
        assert run.returncode == 0, (command, run.stderr)
        assert len(run.stdout.splitlines()) >= 3
    assert any(line.startswith(f"The demo left its files in {workdir} ") for line in lines)
    remove = next(line for line in lines if line.startswith("Remove them with: "))
    assert shlex.split(remove.split(": ", 1)[1]) == ["rm", "-r", str(workdir)]
    assert os.path.isdir(workdir / "index")
