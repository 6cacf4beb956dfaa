"""Hostile but real inputs: file names that are not UTF-8 or hold a newline, a tiny PNG that
resizes to gigabytes, a FIFO or a folder where a file belongs, text corpora with NUL
bytes and multi-megabyte lines, nonsense --limit values."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import XMR, make_image, make_images, run_xmr, xmr_env
from faults import error_line


def _xmr_bytes(*args) -> subprocess.CompletedProcess:
    """Run `xmr` keeping stdout as bytes (a name's own bytes, or NUL separators)."""
    return subprocess.run(
        [str(XMR), *map(str, args)], capture_output=True, env=xmr_env(), timeout=180
    )


def _odd_paths(folder: Path) -> list[str]:
    """Three images whose names are not UTF-8, and one whose name holds a newline."""
    names = [b"caf\xe9.png", b"\xff\xfe-raw.png", b"ok-\x80\x81.png", b"two\nlines.png"]
    paths = []
    for seed, name in enumerate(names, start=50):
        path = os.fsdecode(os.path.join(os.fsencode(folder), name))
        make_image(Path(path), seed)
        paths.append(path)
    return paths


@pytest.fixture
def odd_index(tmp_path, tiny_spec):
    folder = tmp_path / "photos"
    normal = [str(p) for p in make_images(folder, 4)]
    odd = _odd_paths(folder)
    index_dir = tmp_path / "index"
    result = run_xmr("index", folder, "--index", index_dir, "--model", tiny_spec, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["new"] == 8 and summary["skipped"] == []
    return folder, index_dir, normal + odd, odd


def test_names_that_are_not_utf8_are_indexed_kept_and_printed(odd_index):
    folder, index_dir, everything, odd = odd_index
    from xmr.retrieval.library import Library

    with Library.open(index_dir) as library:
        stored = {row.path for row in library.db.rows_by_ids("images", range(1, 100)).values()}
    assert stored == set(everything)  # losslessly: the same str, so the same bytes
    again = run_xmr("index", folder, "--index", index_dir, "--json")
    assert json.loads(again.stdout)["unchanged"] == 8

    raw = _xmr_bytes("search", "a shape", "-k", "8", "--paths", "--index", index_dir)
    assert raw.returncode == 0, raw.stderr
    # --paths writes the names' own bytes (one a line); every non-UTF-8 one is there.
    assert {os.fsencode(p) for p in odd[:3]} <= set(raw.stdout.split(b"\n"))
    as_json = run_xmr("search", "a shape", "-k", "8", "--json", "--index", index_dir)
    assert {h["path"] for h in json.loads(as_json.stdout)} == set(everything)
    table = _xmr_bytes("search", "a shape", "-k", "8", "--index", index_dir).stdout.decode()
    assert "caf\\xe9.png" in table and "\\xff\\xfe-raw.png" in table  # people see escapes

    query = run_xmr("search", "--image", odd[1], "--json", "--index", index_dir)
    assert query.returncode == 0, query.stderr
    assert odd[1] not in {h["path"] for h in json.loads(query.stdout)}  # itself left out
    moved = os.fsdecode(os.path.join(os.fsencode(folder), b"moved-\xe9\xe9.png"))
    os.rename(odd[0], moved)
    result = run_xmr("index", folder, "--index", index_dir, "--json")
    assert json.loads(result.stdout)["moved"] == 1


def test_print0_separates_paths_with_nul_for_names_with_newlines(odd_index):
    _, index_dir, everything, odd = odd_index
    result = _xmr_bytes("search", "a shape", "-k", "8", "-0", "--index", index_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(b"\0")
    paths = result.stdout.split(b"\0")[:-1]
    assert sorted(paths) == sorted(os.fsencode(p) for p in everything)
    assert os.fsencode(odd[3]) in paths  # "two\nlines.png", whole


# -- pixels ------------------------------------------------------------------------------
def _peak(*args) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in KiB) of `xmr args`, measured by getrusage in a
    process of its own; the address space is capped so a failing guard cannot take the
    machine down with it."""
    script = (
        "import json, resource, subprocess, sys\n"
        "cap = 8 << 30\n"
        "limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap))\n"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True, preexec_fn=limit)\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(json.dumps([r.returncode, r.stderr, peak]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(XMR), *map(str, args)],
        capture_output=True,
        text=True,
        env=xmr_env(),
        timeout=300,
    )
    return tuple(json.loads(done.stdout))


def test_a_tiny_png_that_resizes_to_gigabytes_is_refused_within_modest_memory(tmp_path, tiny_spec):
    from PIL import Image

    plain, bombed = tmp_path / "plain", tmp_path / "bombed"
    for folder in (plain, bombed):
        make_images(folder, 2)
    strip = bombed / "strip.png"
    Image.new("RGB", (400_000, 1), (200, 30, 30)).save(strip)
    assert strip.stat().st_size < 4096  # a 1.2 KB file

    common = ("--model", tiny_spec, "--workers", "0")
    code, err, baseline = _peak("index", plain, "--index", tmp_path / "i1", *common)
    assert code == 0, err
    code, err, peak = _peak("index", bombed, "--index", tmp_path / "i2", *common)
    # Resized for this 32 px model the strip would be 12.8M x 32 px: 1.2 GB of RGB, and
    # about 2 GB more at its peak than the same run without it.
    assert peak < baseline + 300 * 1024, (peak, baseline)
    assert code == 0, err
    assert f"skipping {strip}: extreme aspect ratio 400000x1" in err

    query = ("search", "--index", tmp_path / "i1", "--image")
    # A query image from outside the index: encoded, so the model loads as for the strip.
    outside = make_images(tmp_path / "outside", 1, start_seed=90)[0]
    code, err, baseline = _peak(*query, outside)
    assert code == 0, err
    code, err, peak = _peak(*query, strip)
    assert peak < baseline + 300 * 1024, (peak, baseline)
    assert code == 1 and "extreme aspect ratio" in err and "Traceback" not in err, err


def test_the_size_after_resizing_is_guarded_too(tmp_path):
    """Within the aspect limit, a model input large enough makes the resized size the
    guard that answers."""
    from torchvision import transforms

    from xmr.retrieval.imageio import DecodeError, decode_image

    path = make_image(tmp_path / "wide.png", seed=1, size=(640, 20))  # 32:1
    with pytest.raises(DecodeError, match="resized for the model is 32768x1024"):
        decode_image(str(path), transforms.Compose([transforms.Resize(1024)]))
    pixels, *_ = decode_image(str(path), transforms.Compose([transforms.Resize(32)]))
    assert pixels.size == (1024, 32)  # 640x20 -> 1024x32, a PIL image here


# -- files that are not files ------------------------------------------------------------
def test_a_fifo_or_a_folder_is_named_for_what_it_is(tmp_path, cli, tiny_spec):
    make_images(tmp_path / "photos", 2)
    index_dir = tmp_path / "index"
    assert (
        cli("index", tmp_path / "photos", "--index", index_dir, "--model", tiny_spec).exit_code == 0
    )
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.txt"
    folder.mkdir()
    cases = [
        (("search", "--image", fifo), "query image", "is a named pipe (FIFO)"),
        (("search", "--image", folder), "query image", "is a directory"),
        (("add-texts", fifo), "corpus", "is a named pipe (FIFO)"),
        (("add-texts", folder), "corpus", "is a directory"),
    ]
    for args, role, kind in cases:
        result = cli(*args, "--index", index_dir)
        assert result.exit_code == 1, result.output
        line = error_line(result)
        assert f"{role} {args[-1]} {kind}, not a file" in line, line


def test_an_index_path_that_is_a_file_is_one_line_and_loses_nothing(tmp_path, cli, tiny_spec):
    make_images(tmp_path / "photos", 2)
    (tmp_path / "afile").write_text("mine")
    (tmp_path / "captions.txt").write_text("a red square\n")
    for index in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        for args in (("index", tmp_path / "photos"), ("add-texts", tmp_path / "captions.txt")):
            result = cli(*args, "--index", index, "--model", tiny_spec)
            assert result.exit_code == 1, result.output
            line = error_line(result)
            assert f"{index} is not a folder" in line and "(--index)" in line, line
    assert (tmp_path / "afile").read_text() == "mine"  # the file is left as it was


# -- text corpora ------------------------------------------------------------------------
def test_control_characters_are_removed_and_huge_lines_cut_with_a_notice(tmp_path, cli, tiny_spec):
    from xmr.indexer.texts import MAX_TEXT_CHARS

    corpus = tmp_path / "corpus.txt"
    huge = "word " * 600_000  # one 3 MB line
    corpus.write_text(f"a red\x00 circle\nbell\x07 and\x1b[31m escape\n{huge}\nplain words\n")
    index_dir = tmp_path / "index"
    result = cli("add-texts", corpus, "--index", index_dir, "--model", tiny_spec, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["new"] == 4 and (summary["cleaned"], summary["shortened"]) == (2, 1)
    assert "2 texts had control characters removed" in result.stderr
    assert f"1 texts were cut to {MAX_TEXT_CHARS:,} characters" in result.stderr
    with sqlite3.connect(index_dir / "xmr.sqlite3") as conn:
        texts = [t for (t,) in conn.execute("SELECT text FROM texts")]
    assert "a red circle" in texts and "bell and[31m escape" in texts
    assert max(len(t) for t in texts) == MAX_TEXT_CHARS - 1  # cut, then the space trimmed
    assert not any(ch < " " and ch not in "\t\n\r" for t in texts for ch in t)

    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text(json.dumps({"caption": "nul\u0000inside"}) + "\n")
    result = cli("add-texts", jsonl, "--index", index_dir, "--json")
    assert json.loads(result.stdout)["cleaned"] == 1
    hits = cli("search", "nul", "--texts", "-p", "--index", index_dir).stdout
    assert "nulinside" in hits and "\x00" not in hits


# -- numbers that mean nothing -----------------------------------------------------------
@pytest.mark.parametrize("limit", ["0", "-5"])
def test_bench_limit_must_be_a_positive_count(tmp_path, limit):
    """--limit N means the first N images; 0 and negative counts are refused, not read as
    'all' or 'all but 5'."""
    result = run_xmr("bench", tmp_path / "absent.json", "--limit", limit)
    assert result.returncode == 2
    assert f"Invalid value for '--limit': {limit} is not in the range x>=1" in result.stderr
