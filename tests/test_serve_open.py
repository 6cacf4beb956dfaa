"""`xmr serve --open` opens the page in the person's browser where there is one, and says
the address to open by hand where there is none (never an error): real `xmr serve`
subprocesses, the browser a script that $BROWSER names."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from conftest import XMR, make_images, xmr_env


@pytest.fixture
def served_index(cli, tiny_spec, tmp_path) -> Path:
    folder = tmp_path / "photos"
    make_images(folder, 3)
    index = tmp_path / "index"
    assert cli("index", folder, "--index", index, "--model", tiny_spec).exit_code == 0
    return index


def _serve_until(index: Path, env: dict, log: Path, done, seconds: float = 240) -> str:
    """Run `xmr serve --open` until `done(stderr)` holds; stop it; return its stderr."""
    process = subprocess.Popen(
        [str(XMR), "serve", "--index", str(index), "--port", "0", "--open"],
        stdout=subprocess.DEVNULL, stderr=log.open("w"), env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            text = log.read_text()
            if done(text):
                assert process.poll() is None, text  # still serving
                return text
            assert process.poll() is None, text
            time.sleep(0.2)
        raise AssertionError(f"xmr serve --open did not get there: {log.read_text()}")
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_open_hands_the_page_address_to_the_browser(served_index, tmp_path):
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\necho "$1" > "{opened}"\n')
    browser.chmod(0o755)
    env = xmr_env(BROWSER=str(browser))
    log = _serve_until(served_index, env, tmp_path / "serve.log", lambda _: opened.exists())
    url = opened.read_text().strip()
    assert url.startswith("http://127.0.0.1:") and url.endswith("/")
    assert f"opening {url} in your browser" in log
    assert f"at {url}" in log  # the address the server announced


def test_open_without_a_browser_says_where_to_go_and_keeps_serving(served_index, tmp_path):
    env = xmr_env()
    for name in ("BROWSER", "DISPLAY", "WAYLAND_DISPLAY"):
        env.pop(name, None)
    log = _serve_until(
        served_index, env, tmp_path / "serve.log", lambda text: "press Ctrl-C" in text
    )
    assert "no browser on this machine: open http://127.0.0.1:" in log
    assert "Error" not in log and "Traceback" not in log
