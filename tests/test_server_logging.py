"""`xmr serve` says what went wrong (issue 31): requests are logged, an unexpected error
is logged once with its traceback on stderr, and the client gets `{"error": ...}` on a
connection that stays open.

The failure is injected by this test, not by a switch in the product: a sitecustomize
module on the server's PYTHONPATH replaces one engine method with one that raises.
"""

from __future__ import annotations

import http.client
import json

import pytest
from conftest import Served, index_with, make_images, xmr_env

INJECTED = "injected by test_server_logging"
SITECUSTOMIZE = f'''
import xmr.engine.engine as engine


def broken(self, n=4):
    raise RuntimeError("{INJECTED}")


engine.Engine.examples = broken
'''


@pytest.fixture(scope="module")
def broken_server(tmp_path_factory, encoder):
    root = tmp_path_factory.mktemp("logging")
    make_images(root / "photos", 4)
    index_with(root / "index", encoder, [root / "photos"])
    (root / "inject").mkdir()
    (root / "inject" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    server = Served(root / "index", env=xmr_env(PYTHONPATH=str(root / "inject")))
    yield server
    server.stop()


def test_an_unexpected_error_is_logged_once_and_answered_as_json(broken_server):
    host, port = broken_server.url.split("//")[1].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("GET", "/api/examples")
    response = connection.getresponse()
    body = json.loads(response.read())
    assert response.status == 500 and "RuntimeError" in body["error"]
    assert INJECTED not in body["error"] and "Traceback" not in body["error"]
    local_port = connection.sock.getsockname()[1]
    connection.request("GET", "/api/info")  # the same keep-alive connection
    response = connection.getresponse()
    assert response.status == 200 and json.loads(response.read())["images"] == 4
    assert connection.sock.getsockname()[1] == local_port
    connection.close()
    broken_server.stop()
    log = broken_server.stderr_text
    assert log.count("Traceback (most recent call last)") == 1, log
    assert log.count(f"RuntimeError: {INJECTED}") == 1, log
    assert "unexpected error in GET /api/examples" in log
    assert '"GET /api/examples HTTP/1.1" 500' in log  # uvicorn's access lines
    assert '"GET /api/info HTTP/1.1" 200' in log
