"""`xmr serve` under attack (issue 34): a real server subprocess on loopback, real files,
symlinks and FIFOs, real HTTP on keep-alive connections.

Files are served only while they are what was indexed; every bad parameter is a 4xx
that leaves the connection usable; a decompression bomb is refused every time; no
request can block the server or take unbounded work.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import (
    Served,
    bump_mtime,
    index_with,
    indexed_paths,
    jpeg_scan_bomb,
    make_image,
    make_images,
    multipart,
    run_xmr,
)
from PIL import Image


@pytest.fixture(scope="module")
def library(tmp_path_factory, encoder):
    """10 distinct images, one with an exact copy, indexed with the tiny encoder."""
    root = tmp_path_factory.mktemp("hostile")
    folder = root / "photos"
    make_images(folder, 10)
    shutil.copy(folder / "img0003.png", folder / "copy0003.png")
    index_with(root / "index", encoder, [folder])
    return folder, root / "index"


@pytest.fixture(scope="module")
def served(library):
    server = Served(library[1])
    yield server
    server.stop()


def _connection(server: Served, timeout: float = 60) -> http.client.HTTPConnection:
    host, port = server.url.split("//")[1].rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=timeout)


def _ask(connection: http.client.HTTPConnection, path: str, body=None, headers=None):
    connection.request("POST" if body else "GET", path, body=body, headers=headers or {})
    response = connection.getresponse()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


# -- parameters ------------------------------------------------------------------------------
HOSTILE = [
    "/api/search?q=x&under=a%00b",  # NUL in a path
    "/api/duplicates?under=%2Ftmp%00x",
    "/api/search?q=x&" + "&".join(["under=a"] * 1000),  # SQLite's expression depth
    "/api/search?q=x&under=" + "a" * 5000,
    f"/api/search?like={2**63}",  # beyond SQLite's integers
    f"/api/search?like={2**64}",
    f"/api/search?like=-{2**63 + 5}",
    f"/api/images/{2**63}",
    f"/api/images/{2**63}/thumbnail",
    "/api/search?q=x&after=9999-12-31T23:59:59-14:00",  # past year 9999 in local time
    "/api/search?q=x&k=100000000000000000000",
    "/api/search?q=x&candidates=99999999",
    "/api/search?q=x&min_score=nan",
    "/api/search?q=x&dedup=inf",
    "/api/search?q=x&rerank=maybe",
    "/api/search?q=x&k=1&k=2",
    "/api/search?q=x&ext=" + "a" * 1000,
    "/api/duplicates?threshold=nan",
    "/api/search?q=" + quote(" + ".join(["a"] * 40)),  # 40 terms
    "/api/images/1/thumbnail?size=nan",
    "/api/search?q=" + "a" * 200_000,  # a 200 KB query string: read whole, refused by the API
]


def test_every_bad_parameter_is_a_4xx_and_the_connection_survives(served):
    connection = _connection(served)
    status, _, _ = _ask(connection, "/api/search?q=x&k=1")
    assert status == 200
    port = connection.sock.getsockname()[1]
    for path in HOSTILE:
        status, headers, body = _ask(connection, path)
        assert 400 <= status < 500, (path[:80], status, body[:200])
        assert "error" in json.loads(body) and b"Traceback" not in body
        assert headers.get("connection") != "close", path[:80]
        status, _, _ = _ask(connection, "/api/search?q=x&k=1")  # the same connection
        assert status == 200 and connection.sock.getsockname()[1] == port, path[:80]
    connection.close()


def test_dates_past_the_range_of_file_times_are_handled(served, library):
    everything = len(indexed_paths(library[1]))
    for dates in ("before=3000-01-01", "after=0001-01-01", "before=9999-12-31T23:59:59%2B14:00"):
        status, answer = served.json(f"/api/search?q=x&k=100&{dates}")
        assert status == 200, answer
        assert len(answer["results"]) == everything, dates  # every file time is inside
    status, answer = served.json("/api/search?q=x&k=100&after=3000-01-01")
    assert status == 200 and answer["results"] == []


def test_a_100kb_query_is_refused_at_once_while_others_answer(served, library):
    folder, _ = library
    query = " + ".join(f"photo{i:05d}" for i in range(8000))  # 8000 terms, ~100 KB
    assert len(query) > 90_000
    image = (folder / "img0001.png").read_bytes()
    body, headers = multipart({"q": query}, "image", "a.png", image)
    results = {}

    def big():
        started = time.monotonic()
        results["big"] = (_ask(_connection(served), "/api/search", body, headers), started)
        results["big_s"] = time.monotonic() - started

    def small():
        time.sleep(0.2)  # while the big one is in flight
        results["small"] = _ask(_connection(served), "/api/search?q=a%20red%20square&k=3")

    threads = [threading.Thread(target=big), threading.Thread(target=small)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    (status, _, answer), _ = results["big"]
    assert status == 400 and "at most 4,096" in json.loads(answer)["error"]
    assert results["big_s"] < 1  # refused before any model work (13 s of it unbounded)
    assert results["small"][0] == 200


# -- uploads ---------------------------------------------------------------------------------
def _jpeg_bomb(width: int = 13000, height: int = 13000) -> bytes:
    """A few hundred bytes of JPEG whose header claims width x height pixels."""
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(out, "JPEG", quality=50)
    data = bytearray(out.getvalue())
    sof = data.index(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_a_decompression_bomb_is_refused_every_time_also_concurrently(served, library):
    folder, _ = library
    bomb = _jpeg_bomb()
    assert len(bomb) < 1000 and Image.open(io.BytesIO(bomb)).size == (13000, 13000)
    good = (folder / "img0002.png").read_bytes()
    uploads = [("bomb.jpg", bomb)] * 8 + [("scans.jpg", jpeg_scan_bomb())] * 4
    uploads += [("good.png", good)] * 4
    start = threading.Barrier(len(uploads))

    def send(upload):
        body, headers = multipart({"k": "3"}, "image", *upload)
        start.wait()
        status, _, answer = _ask(_connection(served), "/api/search", body, headers)
        return upload[0], status, json.loads(answer)

    with ThreadPoolExecutor(len(uploads)) as pool:
        answers = list(pool.map(send, uploads))
    for name, status, answer in answers:
        if name == "bomb.jpg":  # refused on its header, never decoded
            assert status == 400 and "exceeds the limit" in answer["error"], answer
        elif name == "scans.jpg":  # refused on its scan count: decoding work has a bound
            assert status == 400 and "2,010 scans" in answer["error"], answer
        else:
            assert status == 200, answer


def test_an_upload_and_xmr_search_image_share_one_rule(served, library, tmp_path):
    """A file outside the index with the content of an indexed image is that image: left
    out of its own answers, whether it is uploaded, sent by `xmr search` to the server,
    or searched in-process."""
    folder, index_dir = library
    ids = indexed_paths(index_dir)
    outside = tmp_path / "outside.png"
    shutil.copy(folder / "img0007.png", outside)
    body, headers = multipart({"k": "5"}, "image", outside.name, outside.read_bytes())
    status, answer = served.json("/api/search", data=body, headers=headers)
    uploaded = [h["id"] for h in answer["results"]]
    runs = [run_xmr("search", "--image", outside, "--index", index_dir, "-k", 5, "--json")]
    runs.append(
        run_xmr(
            "search", "--image", outside, "--index", index_dir, "-k", 5, "--json", "--no-server"
        )
    )
    for result in runs:
        assert result.returncode == 0, result.stderr
        assert [h["id"] for h in json.loads(result.stdout)] == uploaded
    assert ids[str(folder / "img0007.png")] not in uploaded


# -- files that are no longer what was indexed -----------------------------------------------
@pytest.fixture
def own_server(tmp_path, encoder):
    """A server of its own over files the test may replace."""
    folder = tmp_path / "photos"
    make_images(folder, 6)
    near = Image.open(folder / "img0004.png").convert("RGB")
    near.putpixel((0, 0), (0, 0, 0))  # another file, the same picture: a near-duplicate
    near.save(folder / "near0004.png")
    elsewhere = make_image(tmp_path / "elsewhere" / "kept.png", seed=77)
    (folder / "link.png").symlink_to(elsewhere)  # indexed as a link: still served
    index_with(tmp_path / "index", encoder, [folder])
    server = Served(tmp_path / "index")
    yield folder, tmp_path / "index", server
    server.stop()


def test_a_file_replaced_after_indexing_is_not_served(own_server):
    folder, index_dir, server = own_server
    ids = indexed_paths(index_dir)
    secret = Path("/etc/passwd")
    swapped = folder / "img0001.png"
    swapped.unlink()
    swapped.symlink_to(secret)
    changed = folder / "img0002.png"
    make_image(changed, seed=999, size=(50, 50))
    bump_mtime(changed)
    relinked = folder / "img0003.png"
    relinked.unlink()
    relinked.symlink_to(folder / "img0000.png")  # another indexed picture
    (folder / "img0005.png").unlink()
    connection = _connection(server)
    for path, wanted in (
        (swapped, 409),
        (changed, 409),
        (relinked, 409),
        (folder / "img0005.png", 404),
    ):
        for suffix in ("", "/thumbnail?size=32"):
            status, _, body = _ask(connection, f"/api/images/{ids[str(path)]}{suffix}")
            assert status == wanted, (path.name, suffix, status, body)
            assert b"root:" not in body and "error" in json.loads(body)
            if wanted == 409:
                assert "since indexing" in json.loads(body)["error"]
    untouched = folder / "img0000.png"
    status, headers, body = _ask(connection, f"/api/images/{ids[str(untouched)]}")
    assert status == 200 and body == untouched.read_bytes()
    assert headers["content-type"] == "image/png"
    if str(folder / "link.png") in ids:  # a link the indexer followed is served while intact
        status, _, body = _ask(connection, f"/api/images/{ids[str(folder / 'link.png')]}")
        assert status == 200 and body == (folder / "link.png").read_bytes()


def test_a_fifo_swapped_in_blocks_nothing_and_sigterm_still_stops(own_server):
    folder, index_dir, server = own_server
    ids = indexed_paths(index_dir)
    fifos = [folder / "img0001.png", folder / "near0004.png"]
    for path in fifos:
        path.unlink()
        os.mkfifo(path)
    fifo_id = ids[str(fifos[0])]
    paths = [f"/api/images/{fifo_id}/thumbnail?size=32", f"/api/images/{fifo_id}"] * 24

    def ask(path):
        return _ask(_connection(server, timeout=20), path)[0]

    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(ask, paths)) == {409}
    started = time.monotonic()
    assert _ask(_connection(server, timeout=20), "/healthz")[0] == 200
    assert time.monotonic() - started < 1  # not stuck behind blocked threads
    # Near-duplicates compare pixels of files whose vectors agree: a FIFO is nobody's twin.
    status, _, body = _ask(_connection(server, timeout=20), "/api/duplicates")
    assert status == 200, body
    groups = [{i["id"] for i in g["items"]} for g in json.loads(body)["groups"]]
    assert ids[str(fifos[1])] not in set().union(*groups)
    server.process.terminate()
    assert server.process.wait(timeout=30) == 0
    assert not (index_dir / "server.json").exists()


# -- the token -------------------------------------------------------------------------------
TOKEN = "s3cret-token-42"


@pytest.fixture(scope="module")
def token_server(library, tmp_path_factory):
    index_dir = tmp_path_factory.mktemp("token") / "index"
    shutil.copytree(library[1], index_dir, ignore=shutil.ignore_patterns("server.*"))
    server = Served(index_dir, "--token", TOKEN)
    yield server
    server.stop()


def test_the_token_hand_off_keeps_every_value_intact(token_server):
    from urllib.parse import parse_qsl, urlsplit

    connection = _connection(token_server)
    sent = [("q", "salt & pepper #1 + more"), ("under", "/photos/a&b#c"), ("k", "5")]
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in sent)
    status, headers, _ = _ask(connection, f"/?token={TOKEN}&{query}")
    assert status == 303
    location = urlsplit(headers["location"])
    assert location.path == "/" and parse_qsl(location.query) == sent
    assert "httponly" in headers["set-cookie"].lower()
    # A wrong token gets no cookie and no page.
    status, headers, _ = _ask(connection, "/?token=wrong-token-123&q=x")
    assert status == 401 and "set-cookie" not in headers
    # The access log shows these requests, without the token.
    log = token_server.stderr()
    assert "GET /?token=***&q=" in log and TOKEN not in log


def test_with_a_token_only_a_bare_liveness_answer_is_open(token_server):
    connection = _connection(token_server)
    for path in ("/docs", "/openapi.json", "/", "/static/app.js", "/api/info"):
        status, _, body = _ask(connection, path)
        assert status == 401 and "token" in json.loads(body)["error"], path
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/docs", "/openapi.json", "/"):
        assert _ask(connection, path, headers=bearer)[0] == 200, path
    status, _, body = _ask(connection, "/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok"}  # no path, no pid
    status, _, body = _ask(connection, "/healthz", headers=bearer)
    assert json.loads(body)["pid"] == token_server.process.pid
    # The Host check holds in token mode too: a rebound name is refused, token or not.
    for headers in ({"Host": "evil.example"}, {"Host": "evil.example", **bearer}):
        status, _, body = _ask(connection, "/healthz", headers=headers)
        assert status == 400 and b"pid" not in body


def test_the_search_documentation_lists_the_request_fields(served):
    status, spec = served.json("/openapi.json")
    names = {p["name"] for p in spec["paths"]["/api/search"]["get"]["parameters"]}
    assert {"q", "like", "k", "under", "after", "before", "min_score", "dedup"} <= names
