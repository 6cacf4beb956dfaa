"""`xmr search` and `xmr serve` around a running server (issue 34): the CLI's calls have
deadlines, one server claims an index, and server.json names it by its absolute path.

The stalling and trickling servers are small HTTP servers in this test process on
127.0.0.1; the rest are real `xmr serve` subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import XMR, index_with, make_images, run_xmr, xmr_env


@pytest.fixture(scope="module")
def library(tmp_path_factory, encoder):
    root = tmp_path_factory.mktemp("cli-server")
    make_images(root / "photos", 6)
    index_with(root / "index", encoder, [root / "photos"])
    return root / "photos", root / "index"


@pytest.fixture
def index_copy(library, tmp_path) -> Path:
    copy = tmp_path / "index"
    shutil.copytree(library[1], copy)
    return copy


class FakeServer:
    """Answers /healthz as `xmr serve` would for `index_dir` (trickled a byte at a time
    when asked), and never answers anything else: it reads the request and waits."""

    def __init__(self, index_dir: Path, trickle: bool = False):
        self.index_dir = index_dir
        self.trickle = trickle
        self.done = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        record = {"url": self.url, "pid": os.getpid(), "token": None}
        (index_dir / "server.json").write_text(json.dumps(record))
        self.asked = []

    def _serve(self):
        self.listener.settimeout(0.2)
        while not self.done.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by stop()
                return
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket):
        with connection:
            request = connection.recv(65536).decode("latin-1")
            self.asked.append(request.split(" ", 2)[1] if " " in request else request)
            if not request.startswith("GET /healthz"):
                self.done.wait(120)  # stall: the CLI must give up first
                return
            body = json.dumps(
                {"status": "ok", "pid": os.getpid(), "index": str(self.index_dir)}
            ).encode()
            reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            reply += f"Content-Length: {len(body)}\r\n\r\n".encode() + body
            if not self.trickle:
                connection.sendall(reply)
                self.done.wait(120)
                return
            for byte in reply:  # one byte every 0.3 s: 30 s for the whole reply
                if self.done.wait(0.3):
                    return
                try:
                    connection.sendall(bytes([byte]))
                except BrokenPipeError:  # the CLI gave up and closed: what the test wants
                    return

    def stop(self):
        self.done.set()
        self.listener.close()


def test_a_server_that_stalls_after_healthz_costs_a_timeout_not_a_hang(index_copy):
    fake = FakeServer(index_copy)
    try:
        started = time.monotonic()
        result = run_xmr(
            "search",
            "a photo",
            "--index",
            index_copy,
            "-k",
            2,
            "-p",
            "--server-timeout",
            2,
            timeout=150,
        )
        elapsed = time.monotonic() - started
    finally:
        fake.stop()
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2  # answered in this process
    assert "did not answer within 2 s" in result.stderr and fake.url in result.stderr
    assert any(path.startswith("/api/search") for path in fake.asked)  # it was asked first
    assert elapsed < 120


def test_a_server_that_trickles_healthz_is_given_up_on(index_copy):
    fake = FakeServer(index_copy, trickle=True)
    try:
        result = run_xmr("search", "a photo", "--index", index_copy, "-k", 2, "-p", timeout=150)
    finally:
        fake.stop()
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2
    assert fake.asked == ["/healthz"]  # never trusted with the query


def _serve(index: str | Path, log: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(XMR), "serve", "--index", str(index), "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        env=xmr_env(),
        cwd=cwd,
    )


def _wait_for_record(index_dir: Path, pids: set[int], seconds: float = 180) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            record = json.loads((index_dir / "server.json").read_text())
            if record["pid"] in pids:
                return record
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise AssertionError("no server announced itself")


def _stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.terminate()
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def test_one_server_per_index_recorded_by_its_absolute_path(index_copy, tmp_path):
    """Two `xmr serve` on one index (the second 0.5 s after the first, given a relative
    --index): one serves, the other refuses naming it; `xmr search --index /abs/path`
    from another folder finds the one that serves; stopping the refused one leaves the
    record alone, stopping the server removes it."""
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    first = _serve("index", logs[0], cwd=index_copy.parent)  # relative to its folder
    time.sleep(0.5)
    second = _serve(index_copy, logs[1], cwd=tmp_path)
    try:
        record = _wait_for_record(index_copy, {first.pid, second.pid})
        assert record["index"] == str(index_copy)  # absolute, though given as "index"
        assert second.wait(timeout=120) == 1  # refused (it lost the claim)
        refusal = logs[1].read_text()
        assert "another xmr serve" in refusal and str(first.pid) in refusal
        assert record["pid"] == first.pid and first.poll() is None
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        result = run_xmr("search", "a photo", "--index", index_copy, "-k", 2, cwd=elsewhere)
        assert result.returncode == 0, result.stderr
        assert "GET /api/search?" in logs[0].read_text()  # the server answered it
        assert json.loads((index_copy / "server.json").read_text())["pid"] == first.pid
    finally:
        codes = _stop(first), _stop(second)
    assert codes[0] == 0
    assert not (index_copy / "server.json").exists()


WIDER_CFG = {
    "embed_dim": 48,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.mark.parametrize("copied", [("images.faiss", "images.faiss.json"), ("manifest.json",)])
def test_a_file_of_another_models_index_is_named_in_one_line(library, index_copy, copied):
    folder, _ = library
    config = index_copy.parent / "wider.json"
    config.write_text(json.dumps(WIDER_CFG))
    other = index_copy.parent / "other-index"
    result = run_xmr("index", folder, "--index", other, "--model", f"{config}:none", "-q")
    assert result.returncode == 0, result.stderr
    for name in copied:
        shutil.copy(other / name, index_copy / name)
    result = run_xmr("search", "a photo", "--index", index_copy, "--no-server", "-k", 2)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("Error:") and "xmr check" in lines[0]
