"""A read-only index (a read-only mount, a shared folder) is searched; readers never write
(no lock file, no FAISS save, no database write); writers fail with one line naming the
folder."""

from __future__ import annotations

import json

import pytest
from faults import cli_built_index, error_line, read_only_view


@pytest.fixture
def built(tmp_path, cli, tiny_spec):
    captions = ["a red circle", "a blue square", "two green stars"]
    return cli_built_index(cli, tmp_path, tiny_spec, captions, 20)


def _searches(folder):
    return [
        ("search", "a red circle", "--json"),
        ("search", "--image", folder / "img0004.png", "--json"),
        ("search", "--image", folder / "img0004.png", "--texts", "--json"),
    ]


def _files(folder):
    """name -> (size, mtime) of every file, the database's shared-memory index aside."""
    return {
        p.name: (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.iterdir()
        if not p.name.endswith("-shm")
    }


def test_a_read_only_mount_is_searched_and_refuses_writers(built, cli, tmp_path):
    folder, corpus, index_dir = built
    expected = [json.loads(cli(*args, "--index", index_dir).stdout) for args in _searches(folder)]
    view = tmp_path / "read-only"
    with read_only_view(index_dir, view) as failure:
        if failure:
            pytest.skip(f"cannot make a read-only bind mount here ({failure})")
        for args, hits in zip(_searches(folder), expected, strict=True):
            result = cli(*args, "--index", view)
            assert result.exit_code == 0, result.output
            assert [(h["id"], h["score"]) for h in json.loads(result.stdout)] == [
                (h["id"], h["score"]) for h in hits
            ]
        info = cli("info", "--json", "--index", view)
        assert info.exit_code == 0 and json.loads(info.stdout)["images"] == 20
        assert cli("check", "--index", view).exit_code == 0
        assert cli("check", "--repair", "--index", view).exit_code == 0  # nothing to write

        for args in (("index", folder, "--workers", "0"), ("add-texts", corpus), ("compact",)):
            result = cli(*args, "--index", view)
            assert result.exit_code == 1, (args, result.output)
            line = error_line(result)
            assert str(view) in line and "read-only" in line, line


def test_readers_write_nothing(built, cli):
    folder, _, index_dir = built
    (index_dir / "write.lock").unlink()
    # A FAISS file behind the database would tempt a reader to save a caught-up copy.
    (index_dir / "images.faiss.json").unlink()
    before = _files(index_dir)
    for args in _searches(folder) + [("info",), ("check",)]:
        assert cli(*args, "--index", index_dir).exit_code == 0
    after = _files(index_dir)
    wal = after.pop("xmr.sqlite3-wal", (0, 0))
    before.pop("xmr.sqlite3-wal", None)
    assert after == before  # no lock file, no FAISS or sidecar written, database untouched
    assert wal[0] == 0  # and nothing went into the write-ahead log


def test_a_read_only_index_is_served_unannounced(built, tmp_path):
    """`xmr serve` is a reader: on a read-only mount it serves the page and the API, and
    says why `xmr search` there will not find it (it cannot write its server.json)."""
    import subprocess
    import urllib.request

    from conftest import XMR, xmr_env

    view = tmp_path / "read-only"
    with read_only_view(built[2], view) as failure:
        if failure:
            pytest.skip(f"cannot make a read-only bind mount here ({failure})")
        server = subprocess.Popen(
            [str(XMR), "serve", "--index", str(view), "--port", "0"],
            stderr=subprocess.PIPE,
            text=True,
            env=xmr_env(),
        )
        try:
            lines = []
            while not lines or not lines[-1].startswith("xmr serving"):
                line = server.stderr.readline()
                assert line, "".join(lines)  # it exited: the traceback is in the lines
                lines.append(line)
            url = lines[-1].split(" at ", 1)[1].split("/  ", 1)[0]
            with urllib.request.urlopen(f"{url}/api/search?q=a+red+circle&k=3") as response:
                assert len(json.loads(response.read())["results"]) == 3
        finally:
            server.terminate()
            server.wait(timeout=60)
        notes = [line for line in lines if line.startswith("note:")]
        assert len(notes) == 1 and "`xmr search` there will not find this server" in notes[0]
        assert "Traceback" not in "".join(lines)
        assert not (view / "server.json").exists()
