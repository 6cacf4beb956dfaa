"""`xmr bench`: the JSON schema, the stages, the cache, the report and plot, bad inputs."""

from __future__ import annotations

import json

import pytest
from conftest import run_xmr


@pytest.fixture(scope="module")
def bench_run(trained, trained_reranker, shapes_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    args = [
        "bench",
        str(shapes_corpus.captions_path),
        "--model",
        str(trained[0]),
        "--reranker",
        str(trained_reranker[0]),
        "--candidates",
        "8",
        "--cache",
        str(out / "cache"),
    ]
    first = run_xmr(
        *args,
        "--json",
        str(out / "r1.json"),
        "--report",
        str(out / "r1.md"),
        "--plot",
        str(out / "r1.png"),
    )
    second = run_xmr(*args, "--json", str(out / "r2.json"))
    return out, first, second


@pytest.mark.slow
def test_bench_json_has_the_documented_schema(bench_run):
    out, first, _ = bench_run
    assert first.returncode == 0, first.stderr
    result = json.loads((out / "r1.json").read_text())
    for key in (
        "dataset",
        "model",
        "reranker",
        "n_images",
        "n_texts",
        "results",
        "compositional",
        "timings",
    ):
        assert key in result
    assert result["n_images"] == 60 and result["n_texts"] == 300  # 10% of 600, 5 each
    for stage in ("exact", "index", "rerank"):
        for direction in ("t2i", "i2t"):
            row = result["results"][stage][direction]
            assert set(row) == {"R@1", "R@5", "R@10"}
            assert all(0 <= v <= 100 for v in row.values())
            assert row["R@1"] <= row["R@5"] <= row["R@10"]
    # a flat index is exact search
    assert result["results"]["index"] == result["results"]["exact"]
    assert set(result["compositional"]["exact"]) >= {
        "attribute_swap",
        "relation_swap",
        "shape_change",
    }
    for key in (
        "images_per_second",
        "texts_per_second",
        "index_ms_per_query",
        "rerank_ms_per_query",
    ):
        assert result["timings"][key] > 0


@pytest.mark.slow
def test_rerank_cannot_beat_stage1_recall_at_its_depth(bench_run):
    out, _, _ = bench_run
    result = json.loads((out / "r1.json").read_text())
    ceiling = result["results"]["rerank_ceiling"]
    for direction in ("t2i", "i2t"):
        assert result["results"]["rerank"][direction]["R@5"] <= ceiling[direction]["R@8"] + 1e-9


@pytest.mark.slow
def test_second_run_uses_the_embedding_cache_and_agrees(bench_run):
    out, _, second = bench_run
    assert second.returncode == 0, second.stderr
    r1 = json.loads((out / "r1.json").read_text())
    r2 = json.loads((out / "r2.json").read_text())
    assert r1["timings"]["embeddings_cached"] is False
    assert r2["timings"]["embeddings_cached"] is True
    assert r1["results"] == r2["results"]


@pytest.mark.slow
def test_report_and_plot_are_written(bench_run):
    out, first, _ = bench_run
    report = (out / "r1.md").read_text()
    assert "| dual encoder (exact) |" in report and "| dual encoder + re-ranker |" in report
    assert report.strip() in first.stdout  # the same table is printed
    png = (out / "r1.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_bench_refuses_a_dataset_with_a_missing_image(tmp_path, shapes_corpus):
    data = json.loads(shapes_corpus.captions_path.read_text())
    data["images"][-1]["filename"] = "missing.png"
    bad = shapes_corpus.captions_path.parent / "bad.json"
    bad.write_text(json.dumps(data))
    result = run_xmr("bench", str(bad), "--model", "ViT-B-32:none", "--no-cache")
    assert result.returncode == 1
    assert "missing.png" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.startswith("Error: ")
