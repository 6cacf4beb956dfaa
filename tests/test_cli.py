"""The `xmr` command line: output formats, counts, errors and exit codes, start-up cost.

Most commands run in-process through typer's CliRunner; the end-to-end checks (and the
ones about imports and the environment) run the installed `xmr` script in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    MAX_PIXELS,
    XMR,
    db_rows,
    faiss_ids,
    indexed_paths,
    make_bad_files,
    make_image,
    make_images,
    run_xmr,
    xmr_env,
)

HEAVY = ("torch", "open_clip", "torchvision")


def _imported(importtime_stderr: str) -> set[str]:
    """Top-level package names from `python -X importtime` output."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def run_xmr_importtime(*args, env=None):
    return subprocess.run(
        [sys.executable, "-X", "importtime", str(XMR), *map(str, args)],
        capture_output=True,
        text=True,
        env=env or xmr_env(),
        timeout=120,
    )


def _error_line(result) -> str:
    """The single `Error: ...` line of a failed command (and nothing else on stderr)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def cli_index(cli, tiny_spec, tmp_path):
    """An index built through `xmr index`: 6 images + a copy of img0002, and 3 captions."""
    folder = tmp_path / "photos"
    make_images(folder, 6)
    shutil.copy(folder / "img0002.png", folder / "copy.png")
    index_dir = tmp_path / "index"
    result = cli("index", folder, "--index", index_dir, "--model", tiny_spec, "--workers", "0")
    assert result.exit_code == 0, result.output
    corpus = tmp_path / "captions.txt"
    corpus.write_text("a red circle\na blue square\na green star\n")
    assert cli("add-texts", corpus, "--index", index_dir).exit_code == 0
    return folder, index_dir


def _snapshot(index_dir: Path) -> dict:
    """Everything that says what an index holds."""
    with sqlite3.connect(index_dir / "xmr.sqlite3") as conn:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
    return {
        "manifest": (index_dir / "manifest.json").read_text(),
        "images": db_rows(index_dir),
        "texts": db_rows(index_dir, "texts"),
        "meta": meta,
        "faiss": (faiss_ids(index_dir), faiss_ids(index_dir, "texts")),
        "vectors": (index_dir / "images.vec").read_bytes(),
    }


# -- start-up cost -----------------------------------------------------------------------
def test_help_lists_commands_and_imports_no_torch(tmp_path):
    result = run_xmr_importtime("--help")
    assert result.returncode == 0, result.stderr
    for command in ("index", "add-texts", "search", "info"):
        assert command in result.stdout
    imported = _imported(result.stderr)
    assert "xmr" in imported  # the import log really covers the command line's modules
    assert not imported & set(HEAVY), imported & set(HEAVY)

    # An argument error is as cheap: neither a query nor --image.
    result = run_xmr_importtime("search", "--index", tmp_path / "nowhere")
    assert result.returncode == 2
    assert "give a text QUERY, --image PATH or --like ID" in result.stderr
    assert "not both" not in result.stderr  # says what is missing, not what is too much
    assert not _imported(result.stderr) & set(HEAVY)


def test_uncached_pretrained_model_fails_fast_with_a_way_out(tmp_path):
    make_images(tmp_path / "photos", 1)
    env = xmr_env(HF_HOME=str(tmp_path / "hf"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("XMR_ALLOW_DOWNLOAD", None)
    result = run_xmr_importtime(
        "index",
        tmp_path / "photos",
        "--index",
        tmp_path / "index",
        "--model",
        "ViT-B-32:laion2b_s34b_b79k",
        env=env,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    message = errors[0]
    assert "cannot load weights for ViT-B-32:laion2b_s34b_b79k" in message
    assert "xmr-tiny" in message and "checkpoint" in message
    # It failed before paying for open_clip/torch: nothing was tried from the network.
    assert not _imported(result.stderr) & set(HEAVY)


# -- output formats ----------------------------------------------------------------------
def test_search_json_paths_and_k(cli, cli_index):
    folder, index_dir = cli_index
    ids = indexed_paths(index_dir)
    result = cli("search", "a red circle", "--json", "-k", "3", "--index", index_dir)
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert isinstance(hits, list) and len(hits) == 3
    assert [h["rank"] for h in hits] == [1, 2, 3]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    for hit in hits:
        assert hit["kind"] == "image" and ids[hit["path"]] == hit["id"]

    result = cli("search", "a red circle", "--paths", "-k", "3", "--index", index_dir)
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [h["path"] for h in hits]  # bare paths, same order

    result = cli("search", "a red circle", "-k", "100", "--index", index_dir)
    lines = result.stdout.splitlines()
    assert len(lines) == 7  # every image, each once
    rank, score, path = lines[0].split(maxsplit=2)
    assert (rank, path) == ("1", hits[0]["path"]) and float(score) == pytest.approx(
        scores[0], abs=5e-4
    )  # people see 3 decimals

    result = cli("search", "a red circle", "--paths", "-k", "0", "--index", index_dir)
    assert result.exit_code == 2  # k must be at least 1


def test_search_by_image_leaves_the_query_out(cli, cli_index):
    folder, index_dir = cli_index
    query = folder / "img0002.png"
    result = cli("search", "--image", query, "--json", "-k", "10", "--index", index_dir)
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    paths = [h["path"] for h in hits]
    assert str(query) not in paths and len(hits) == 6
    assert paths[0] == str(folder / "copy.png")
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert hits[1]["score"] < 0.9999


def test_info_counts(cli, cli_index, tiny_spec):
    folder, index_dir = cli_index
    (folder / "broken.png").write_bytes(b"")
    assert cli("index", folder, "--index", index_dir, "--workers", "0").exit_code == 0
    result = cli("info", "--json", "--index", index_dir)
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert (info["images"], info["images_skipped"], info["texts"]) == (7, 1, 3)
    assert info["faiss"] == {"images": 7, "texts": 3}
    assert info["model"] == tiny_spec and info["dim"] == 32
    assert info["image_tokens"] == [16, 32] and info["text_tokens"] == [16, 32]
    assert {"manifest.json", "xmr.sqlite3", "images.faiss", "images.vec"} <= set(info["files"])
    assert info["bytes_total"] == sum(info["files"].values())

    text = cli("info", "--index", index_dir).stdout
    assert "images:   7 indexed, 1 skipped" in text and "texts:    3" in text

    # A deleted file leaves the counts and the results.
    (folder / "img0004.png").unlink()
    result = cli("index", folder, "--index", index_dir, "--workers", "0", "--json")
    assert json.loads(result.stdout)["removed"] == 1
    info = json.loads(cli("info", "--json", "--index", index_dir).stdout)
    assert (info["images"], info["faiss"]["images"]) == (6, 6)
    result = cli("search", "anything", "--paths", "-k", "50", "--index", index_dir)
    assert str(folder / "img0004.png") not in result.stdout.splitlines()
    assert len(result.stdout.splitlines()) == 6


def test_index_env_variable_is_the_default_index(cli, tiny_spec, tmp_path):
    folder = tmp_path / "photos"
    make_images(folder, 2)
    env = {"XMR_INDEX": str(tmp_path / "from-env")}
    assert cli("index", folder, "--model", tiny_spec, "--workers", "0", env=env).exit_code == 0
    info = json.loads(cli("info", "--json", env=env).stdout)
    assert info["directory"] == str(tmp_path / "from-env") and info["images"] == 2


def test_index_flags_reach_the_scanner(cli, tiny_spec, tmp_path):
    folder = tmp_path / "photos"
    make_image(folder / "a.png", seed=1)
    make_image(folder / ".hidden.png", seed=2)
    make_image(folder / "skip" / "b.png", seed=3)
    make_image(folder / "c.jpg", seed=4)
    index_dir = tmp_path / "index"
    args = ("index", folder, "--index", index_dir, "--model", tiny_spec, "--workers", "0")
    result = cli(*args, "--hidden", "-x", "skip", "--exclude", "*.jpg", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["new"] == 2
    assert sorted(indexed_paths(index_dir)) == [str(folder / ".hidden.png"), str(folder / "a.png")]
    result = cli(*args, "--json")  # defaults again: the hidden file goes, the others come
    summary = json.loads(result.stdout)
    assert (summary["new"], summary["removed"], summary["unchanged"]) == (2, 1, 1)


def test_follow_links_and_pseudo_file_systems_through_the_cli(tiny_spec, tmp_path):
    folder = tmp_path / "photos"
    make_image(folder / "a.png", seed=1)
    make_image(tmp_path / "elsewhere" / "b.png", seed=2)
    (folder / "album").symlink_to(tmp_path / "elsewhere")
    index_dir = tmp_path / "index"
    args = ("index", "--index", index_dir, "--model", tiny_spec, "--workers", "0")
    result = run_xmr(*args, folder)
    assert result.returncode == 0, result.stderr
    assert "1 symlinked folders not followed (--follow-links enters them)" in result.stderr
    result = run_xmr(*args, folder, "--follow-links", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["new"], summary["links_not_followed"]) == (1, 0)
    assert sorted(indexed_paths(index_dir)) == [str(folder / "a.png"), str(folder / "album/b.png")]

    result = run_xmr(*args, "/proc", timeout=60)
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and len(errors) == 1, result.stderr
    assert "/proc is a proc pseudo file system" in errors[0]
    assert len(indexed_paths(index_dir)) == 2  # nothing lost


def test_no_tokens_index_still_searches(cli, tiny_spec, tmp_path):
    folder = tmp_path / "photos"
    make_images(folder, 3)
    index_dir = tmp_path / "index"
    args = ("--index", index_dir, "--model", tiny_spec)
    assert cli("index", folder, *args, "--no-tokens", "--workers", "0").exit_code == 0
    corpus = tmp_path / "c.txt"
    corpus.write_text("one\ntwo\n")
    assert cli("add-texts", corpus, *args).exit_code == 0
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert manifest["image_tokens"] is None and manifest["text_tokens"] is None
    assert not (index_dir / "images.tok").exists() and not (index_dir / "texts.tok").exists()
    result = cli("search", "--image", folder / "img0000.png", "--paths", "--index", index_dir)
    assert result.stdout.splitlines() and str(folder / "img0000.png") not in result.stdout
    assert len(result.stdout.splitlines()) == 2
    assert cli("search", "two", "--texts", "--paths", "--index", index_dir).stdout.split() == [
        "two",
        "one",
    ]


def test_lost_or_truncated_faiss_file_is_rebuilt(cli, cli_index):
    """FAISS files are derived data: the database and the vector store rebuild them."""
    folder, index_dir = cli_index
    search = ("search", "a red circle", "--json", "-k", "7", "--index", index_dir)
    expected = json.loads(cli(*search).stdout)
    faiss_file = index_dir / "images.faiss"

    faiss_file.unlink()
    (index_dir / "images.faiss.json").unlink()
    result = cli(*search)  # a reader rebuilds it in memory
    assert result.exit_code == 0 and json.loads(result.stdout) == expected
    assert cli("index", folder, "--index", index_dir, "--workers", "0").exit_code == 0
    assert faiss_file.exists()  # ... and a writer saves it again

    faiss_file.write_bytes(faiss_file.read_bytes()[:100])  # truncated
    result = cli(*search)  # a reader works around it in memory, and says so
    assert result.exit_code == 0 and json.loads(result.stdout) == expected
    assert "images.faiss is damaged" in result.stderr and "check --repair" in result.stderr
    assert len(faiss_file.read_bytes()) == 100  # ... without writing anything
    result = cli("index", folder, "--index", index_dir, "--workers", "0", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["encoded"] == 0
    assert json.loads(cli(*search).stdout) == expected


# -- errors ------------------------------------------------------------------------------
def test_missing_index_is_a_one_line_error(cli, tmp_path):
    for args in (("search", "cats"), ("info",), ("search", "--image", tmp_path / "x.png")):
        result = cli(*args, "--index", tmp_path / "nowhere")
        assert result.exit_code == 1
        assert _error_line(result).startswith(f"Error: no xmr index at {tmp_path / 'nowhere'}")


def test_search_needs_a_query(cli, cli_index):
    _, index_dir = cli_index
    result = cli("search", "--index", index_dir)
    assert result.exit_code == 2
    assert "give a text QUERY, --image PATH or --like ID" in result.output
    result = cli("search", "--image", index_dir / "missing.png", "--index", index_dir)
    assert result.exit_code == 1
    assert "does not exist" in _error_line(result)


def test_encoder_mismatch_is_refused_and_changes_nothing(cli, cli_index, other_spec, tiny_spec):
    folder, index_dir = cli_index
    make_image(folder / "new.png", seed=300)  # something a wrongly accepted run would add
    corpus = index_dir.parent / "more.txt"
    corpus.write_text("a yellow moon\n")
    before = _snapshot(index_dir)
    for args in (
        ("index", folder, "--workers", "0"),
        ("add-texts", corpus),
    ):
        # A refused (random-weights) model gets only the error, no warning first.
        result = cli(*args, "--index", index_dir, "--model", other_spec)
        assert result.exit_code == 1, result.output
        assert "random weights" not in result.output
        message = _error_line(result)
        assert f"built with model '{tiny_spec}'" in message
        assert message.endswith(f"or the model {tiny_spec} (--model)")  # setting, as a flag
        assert str(Path(other_spec.split(":")[0]).resolve()) in message
        assert _snapshot(index_dir) == before


def test_model_errors_are_one_line(cli, tmp_path, tiny_spec):
    spec = tiny_spec
    folder = tmp_path / "photos"
    make_images(folder, 1)
    cases = {
        "NoSuchNet-9:none": "Error: Unknown model 'NoSuchNet-9'. Available: ",
        "ViT-B-32": "Error: model 'ViT-B-32' needs weights",
        "ViT-B-32:nosuchtag": "Error: Unknown pretrained tag 'nosuchtag' for ViT-B-32",
        f"{tmp_path}/nope.json:none": "Error: model config",
    }
    for n, (bad_spec, start) in enumerate(cases.items()):
        result = cli("index", folder, "--index", tmp_path / f"i{n}", "--model", bad_spec)
        assert result.exit_code == 1, (bad_spec, result.output)
        line = _error_line(result)
        assert line.startswith(start), line
    assert "ViT-B-32" in _error_line(
        cli("index", folder, "--index", tmp_path / "i9", "--model", "NoSuchNet-9:none")
    )
    result = cli("index", tmp_path / "no-such-folder", "--index", tmp_path / "i8", "-m", spec)
    assert result.exit_code == 1 and "does not exist" in _error_line(result)


def test_second_writer_is_refused(cli, cli_index, encoder):
    from xmr.retrieval.library import Library

    folder, index_dir = cli_index
    with Library.open_or_create(index_dir, encoder):
        result = cli("index", folder, "--index", index_dir, "--workers", "0")
    assert result.exit_code == 1
    assert "another xmr process is writing" in _error_line(result)


# -- end to end, as a user runs it -------------------------------------------------------
@pytest.mark.slow
def test_end_to_end_in_subprocesses(tmp_path, tiny_spec):
    folder = tmp_path / "photos"
    good = make_images(folder, 5)
    bad = make_bad_files(folder / "bad")
    index_dir = tmp_path / "index"
    env = xmr_env()

    first = run_xmr(
        "index", folder, "--index", index_dir, "--model", tiny_spec,
        "--max-pixels", MAX_PIXELS, "--workers", "0", env=env,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    stderr = first.stderr.splitlines()
    assert sum("random weights" in line for line in stderr) == 1  # warned, once
    skips = {
        line.split(": ", 1)[0].removeprefix("skipping "): line.split(": ", 1)[1]
        for line in stderr
        if line.startswith("skipping ")
    }
    assert set(skips) == {str(folder / "bad" / name) for name in bad}
    for name, fragment in bad.items():
        assert fragment in skips[str(folder / "bad" / name)]
    summary = f"{len(bad)} skipped"
    assert any(line.startswith("images: 5 new") and summary in line for line in stderr)
    assert sorted(indexed_paths(index_dir)) == sorted(map(str, good))

    search = run_xmr("search", "--image", good[1], "--paths", "-k", "3", "--index", index_dir)
    assert search.returncode == 0, search.stderr
    lines = search.stdout.splitlines()
    assert len(lines) == 3 and str(good[1]) not in lines
    assert all(os.path.isfile(line) and line in map(str, good) for line in lines)

    info = run_xmr("info", "--json", "--index", index_dir)
    counts = json.loads(info.stdout)
    assert (counts["images"], counts["images_skipped"], counts["faiss"]["images"]) == (
        5,
        len(bad),
        5,
    )

    # Unchanged folder: no encoder work, the model is not even imported, no repeated skips.
    again = run_xmr_importtime(
        "index", folder, "--index", index_dir, "--max-pixels", MAX_PIXELS, "--json"
    )
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert (summary["encoded"], summary["unchanged"], summary["new"]) == (0, 5, 0)
    assert (summary["skipped"], summary["skipped_before"]) == ([], len(bad))
    assert not any(line.startswith("skipping ") for line in again.stderr.splitlines())
    assert not _imported(again.stderr) & {"open_clip", "torch"}
