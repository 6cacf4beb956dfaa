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
