"""`xmr serve`: a real server subprocess on loopback over a real index, real HTTP.

Every endpoint's contract, the same answers as the CLI, an index that changes under a
running server, concurrent clients, the token, and what the server refuses.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import (
    Served,
    index_with,
    indexed_paths,
    make_image,
    make_images,
    multipart,
    run_xmr,
)
from PIL import Image

TEXTS = [f"caption number {i} about {w}" for i, w in enumerate("abcdefghij")]
TWINS = 8  # images with an exact copy under another name: each one's known nearest


@pytest.fixture(scope="module")
def photo_index(tmp_path_factory, encoder):
    """24 distinct images, 8 of them with an exact twin, an EXIF-rotated JPEG and a text
    corpus, indexed with the tiny encoder."""
    root = tmp_path_factory.mktemp("served")
    folder = root / "photos"
    make_images(folder, 24)
    for i in range(TWINS):
        shutil.copy(folder / f"img{i:04d}.png", folder / f"twin{i:04d}.png")
    _rotated_jpeg(folder / "rotated.jpg")
    index_dir = root / "index"
    index_with(index_dir, encoder, [folder])
    corpus = root / "captions.txt"
    corpus.write_text("\n".join(TEXTS) + "\n")
    result = run_xmr("add-texts", corpus, "--index", index_dir, "-q")
    assert result.returncode == 0, result.stderr
    return folder, index_dir


@pytest.fixture(scope="module")
def served(photo_index):
    server = Served(photo_index[1])
    yield server
    server.stop()


def _rotated_jpeg(path: Path) -> None:
    """60 wide x 30 high as stored, EXIF orientation 6: a viewer shows it 30 x 60."""
    image = make_image(path.with_suffix(".png"), seed=500, size=(60, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(image).convert("RGB").save(path, exif=exif.tobytes())
    image.unlink()


def _no_server_json(*args) -> list[dict]:
    result = run_xmr("search", *args, "--json", "--no-server")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _same_results(served: list[dict], cli: list[dict]) -> bool:
    """The same hits with the same fields; scores may differ in their last printed digit
    (the server's warm encoder and a fresh process may run different runtimes)."""
    scores = ("score", "stage1_score")

    def rest(hits):
        return [{k: v for k, v in h.items() if k not in scores} for h in hits]

    return rest(served) == rest(cli) and all(
        h[k] == pytest.approx(c[k], abs=2e-6)
        for h, c in zip(served, cli, strict=True)
        for k in scores
    )


# -- the contract ----------------------------------------------------------------------
def test_search_answers_with_the_cli_fields_notices_and_timings(served, photo_index):
    _, index_dir = photo_index
    status, answer = served.json("/api/search?q=" + quote("a red square") + "&k=7")
    assert status == 200
    assert set(answer) == {"results", "reranked", "notices", "timings_ms", "page"}
    assert answer["page"]["offset"] == 0 and answer["page"]["k"] == 7
    assert set(answer["timings_ms"]) == {"encode", "stage1", "rerank", "total"}
    assert answer["reranked"] is False  # the tiny test model ships no re-ranker
    assert _same_results(
        answer["results"], _no_server_json("a red square", "--index", index_dir, "-k", 7)
    )
    for hit in answer["results"]:
        assert set(hit) == {
            "rank",
            "score",
            "id",
            "stage1_score",
            "kind",
            "path",
            "date",
            "date_from",
        }
    # Texts: exactly the CLI's text fields.
    status, answer = served.json("/api/search?q=caption&target=texts&k=3")
    assert status == 200
    expected = _no_server_json("caption", "--texts", "--index", index_dir, "-k", 3)
    assert _same_results(answer["results"], expected) and len(expected) == 3
    assert set(expected[0]) == {"rank", "score", "id", "stage1_score", "kind", "text", "source"}


def test_info_health_examples_and_openapi(served, photo_index):
    _, index_dir = photo_index
    status, info = served.json("/api/info")
    result = run_xmr("info", "--json", "--index", index_dir)
    assert status == 200 and info == json.loads(result.stdout)
    assert info["images"] == 24 + TWINS + 1
    status, health = served.json("/healthz")
    assert status == 200 and health["pid"] == served.process.pid
    assert Path(health["index"]) == index_dir
    status, examples = served.json("/api/examples")
    assert examples["texts"] == len(TEXTS) and examples["images"] == info["images"]
    assert examples["examples"] and set(examples["examples"]) <= set(TEXTS)
    status, spec = served.json("/openapi.json")
    assert {"/api/search", "/api/images/{image_id}", "/api/info"} <= set(spec["paths"])


def test_files_and_thumbnails_are_served_by_id(served, photo_index):
    folder, index_dir = photo_index
    ids = indexed_paths(index_dir)
    path = folder / "img0005.png"
    status, headers, body = served.request(f"/api/images/{ids[str(path)]}")
    assert status == 200 and body == path.read_bytes()
    # The thumbnail is upright as a viewer shows the photo (EXIF applied), fits the size.
    rotated = ids[str(folder / "rotated.jpg")]
    status, headers, body = served.request(f"/api/images/{rotated}/thumbnail?size=32")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(body)).size == (16, 32)
    kept = index_dir / "thumbnails" / f"{rotated}-32.jpg"
    assert kept.read_bytes() == body  # cached on disk, served again from there
    assert served.request(f"/api/images/{rotated}/thumbnail?size=32")[2] == body


def test_uploaded_image_gets_the_same_ids_as_xmr_search_image(served, photo_index, tmp_path):
    folder, index_dir = photo_index
    outside = make_image(tmp_path / "outside.png", seed=9999)
    for path in (folder / "img0015.png", outside):  # indexed (left out) and new (encoded)
        body, headers = multipart({"k": "6"}, "image", path.name, path.read_bytes())
        status, answer = served.json("/api/search", data=body, headers=headers)
        assert status == 200, answer
        cli = _no_server_json("--image", path, "--index", index_dir, "-k", 6)
        assert [h["id"] for h in answer["results"]] == [h["id"] for h in cli]
        assert all(h["path"] != str(path) for h in answer["results"])  # never itself


# -- freshness and concurrency ---------------------------------------------------------
def test_server_sees_what_xmr_index_adds_and_deletes(photo_index, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(photo_index[0], folder)
    index_dir = tmp_path / "index"
    result = run_xmr("index", folder, "--index", index_dir, "-q", "--model", _spec(photo_index))
    assert result.returncode == 0, result.stderr
    server = Served(index_dir)
    try:
        before = {h["path"] for h in server.json("/api/search?q=x&k=500")[1]["results"]}
        added = make_images(folder / "new", 3, start_seed=700)
        gone = [folder / "img0020.png", folder / "img0021.png"]
        gone_ids = [indexed_paths(index_dir)[str(p)] for p in gone]
        for path in gone:
            path.unlink()
        result = run_xmr("index", folder, "--index", index_dir, "-q")
        assert result.returncode == 0, result.stderr
        after = {h["path"] for h in server.json("/api/search?q=x&k=500")[1]["results"]}
        assert after == (before | {str(p) for p in added}) - {str(p) for p in gone}
        assert server.json("/api/info")[1]["images"] == len(after)
        for image_id in gone_ids:  # their files are not served either
            assert server.request(f"/api/images/{image_id}")[0] == 404
    finally:
        server.stop()


def _spec(photo_index) -> str:
    manifest = json.loads((photo_index[1] / "manifest.json").read_text())
    return manifest["encoder"]["spec"]


def test_sixteen_concurrent_clients_each_get_their_own_answer(served, photo_index):
    from xmr.engine.engine import Engine

    folder, index_dir = photo_index
    ids = indexed_paths(index_dir)
    queries = {}  # path of the request -> the top-1 id it must get
    for i in range(TWINS):  # more like an image: its exact twin comes first
        queries[f"/api/search?like={ids[str(folder / f'img{i:04d}.png')]}&k=3"] = ids[
            str(folder / f"twin{i:04d}.png")
        ]
    engine = Engine(index_dir)  # the same text queries answered in this process
    for i in range(8):
        text = f"query number {i}: {'abcdefgh'[i] * (i + 1)}"
        expected = engine.search(text, k=3).hits[0].id
        queries[f"/api/search?q={quote(text)}&k=3"] = expected
    start = threading.Barrier(len(queries))

    def ask(path: str):
        start.wait()
        status, answer = served.json(path)
        return status, answer["results"][0]["id"]

    with ThreadPoolExecutor(len(queries)) as pool:
        answers = dict(zip(queries, pool.map(ask, queries), strict=True))
    assert answers == {path: (200, top) for path, top in queries.items()}


# -- the CLI on top of the server ------------------------------------------------------
def test_xmr_search_through_the_server_prints_what_it_prints_alone(served, photo_index):
    from test_cli import HEAVY, _imported, run_xmr_importtime

    folder, index_dir = photo_index
    for args in (
        ("a blue circle", "-k", "5"),
        ("a blue circle", "-k", "5", "--json"),
        ("--image", folder / "twin0003.png", "-k", "4"),  # a twin: its own copy is left out
        ("--image", folder / "img0009.png", "--texts", "-k", "3", "--json"),
    ):
        alone = run_xmr("search", *args, "--index", index_dir, "--no-server")
        through = run_xmr_importtime("search", *args, "--index", index_dir)
        assert alone.returncode == through.returncode == 0, through.stderr
        assert through.stdout == alone.stdout
        # The server answered, and the client read no index: a cold query costs an import
        # of the command line, not of NumPy, FAISS or SQLAlchemy.
        assert not _imported(through.stderr) & {*HEAVY, "numpy", "faiss", "sqlalchemy"}


def test_a_stale_server_file_is_ignored(photo_index, tmp_path):
    folder, index_dir = photo_index
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    (copy / "server.json").write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": 999999}))
    result = run_xmr("search", "a green star", "--index", copy, "-k", "2", "-p")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2


# -- security and refusals -------------------------------------------------------------
def test_token_is_required_everywhere_under_api(photo_index, tmp_path):
    index_dir = tmp_path / "index"
    shutil.copytree(photo_index[1], index_dir, ignore=shutil.ignore_patterns("server.json"))
    server = Served(index_dir, "--token", "s3cret-token-42")
    try:
        for path in ("/api/search?q=x", "/api/info", "/api/images/1", "/api/examples"):
            status, body = server.json(path, headers={"Authorization": "Bearer wrong-token"})
            assert status == 401 and "token" in body["error"]
            assert server.request(path, headers={"Authorization": ""})[0] == 401
        assert server.json("/api/search?q=x")[0] == 200  # with the right bearer token
        assert server.request("/healthz", headers={"Authorization": ""})[0] == 200
        # The page takes the token once from its address and keeps it in a cookie.
        import http.client

        connection = http.client.HTTPConnection(server.url.split("//")[1])
        connection.request("GET", "/?token=s3cret-token-42&q=red")
        response = connection.getresponse()
        assert response.status == 303 and response.getheader("location") == "/?q=red"
        cookie = response.getheader("set-cookie").split(";")[0]
        assert "httponly" in response.getheader("set-cookie").lower()
        status, _ = server.json("/api/info", headers={"Authorization": "", "Cookie": cookie})
        assert status == 200
        # `xmr search` finds the token in the server's record and prints what it would alone.
        alone = run_xmr("search", "red", "--index", index_dir, "--no-server", "-k", "3")
        through = run_xmr("search", "red", "--index", index_dir, "-k", "3")
        assert through.stdout == alone.stdout and through.returncode == 0
    finally:
        server.stop()
    assert not (index_dir / "server.json").exists()  # a clean exit removes the record


def test_other_addresses_need_a_token(photo_index, tmp_path):
    index_dir = tmp_path / "index"
    shutil.copytree(photo_index[1], index_dir, ignore=shutil.ignore_patterns("server.json"))
    result = run_xmr("serve", "--index", index_dir, "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "token" in lines[0]
    assert not (index_dir / "server.json").exists()


def test_nothing_outside_the_index_is_ever_served(served):
    for path, statuses in (
        ("/api/images/..%2F..%2Fetc%2Fpasswd", (404, 422)),
        ("/api/images/../../etc/passwd", (404, 422)),
        ("/api/images/-1", (404,)),
        ("/api/images/999999", (404,)),
        ("/api/images/999999/thumbnail", (404,)),
        ("/static/..%2F..%2F..%2Fetc%2Fpasswd", (404,)),
        ("/api/images/1/thumbnail?size=100000", (422,)),
    ):
        status, _, body = served.request(path)
        assert status in statuses, (path, status)
        assert b"root:" not in body and b"Traceback" not in body
        assert "error" in json.loads(body)


def test_bad_uploads_and_parameters_are_clear_json_errors(served, tmp_path):
    def upload(data: bytes, name: str = "x.png"):
        body, headers = multipart({}, "image", name, data)
        return served.json("/api/search", data=body, headers=headers)

    status, answer = upload(b"\0" * (25 * 1024 * 1024))
    assert status == 413 and "20 MB" in answer["error"]
    status, answer = upload(_png_bomb(30000, 30000), "bomb.png")
    assert status == 400 and "bomb.png" in answer["error"] and "exceeds" in answer["error"]
    status, answer = upload(b"this is a shopping list, not a photo", "notes.png")
    assert status == 400 and "not an image" in answer["error"]
    for path, status_wanted, says in (
        ("/api/search?q=x&k=0", 422, "k"),
        ("/api/search?q=x&target=videos", 400, "unknown target"),
        ("/api/search?q=x&after=yesterday", 400, "after 'yesterday' is not a date"),
        ("/api/search", 400, "give a query"),
        ("/api/search?q=.%2Fphoto.jpg", 400, "image paths are not accepted"),
        ("/api/search?like=999999", 404, "no indexed image has id 999999"),
        ("/api/search?q=%20%20", 400, "empty query"),
    ):
        status, answer = served.json(path)
        assert status == status_wanted and says in answer["error"], (path, answer)


def _png_bomb(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG that claim width x height pixels."""
    out = io.BytesIO()
    Image.new("L", (1, 1)).save(out, "PNG")
    data = bytearray(out.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


# -- query expressions, dedup, min-score and duplicates over HTTP ------------------------
def test_expressions_like_terms_and_an_upload_with_words(served, photo_index):
    from xmr.engine.engine import Engine
    from xmr.engine.query_input import QueryInput

    folder, index_dir = photo_index
    ids = indexed_paths(index_dir)
    engine = Engine(index_dir)  # the answers this process gives for the same queries
    like = [ids[str(folder / "img0010.png")], ids[str(folder / "img0011.png")]]
    status, answer = served.json(
        f"/api/search?q={quote('red - 0.5:blue')}&like={like[0]}&like={like[1]}&k=5"
    )
    expected = engine.search(QueryInput("red - 0.5:blue", like=tuple(like)), k=5)
    assert status == 200 and [h["id"] for h in answer["results"]] == [h.id for h in expected.hits]
    assert not set(like) & {h["id"] for h in answer["results"]}  # query images left out
    path = folder / "img0012.png"
    body, headers = multipart({"q": "+ at night", "k": "5"}, "image", path.name, path.read_bytes())
    status, answer = served.json("/api/search", data=body, headers=headers)
    expected = engine.search(QueryInput("+ at night", image_path=path), k=5)
    assert status == 200 and [h["id"] for h in answer["results"]] == [h.id for h in expected.hits]


def test_dedup_min_score_and_duplicates_over_http(served, photo_index):
    folder, index_dir = photo_index
    ids = indexed_paths(index_dir)
    status, answer = served.json(f"/api/search?like={ids[str(folder / 'rotated.jpg')]}&k=40")
    every = answer["results"]
    status, answer = served.json(
        f"/api/search?like={ids[str(folder / 'rotated.jpg')]}&k=40&dedup=0.95"
    )
    folded = {h["id"]: h["duplicates"] for h in answer["results"]}
    twins = {
        ids[str(folder / f"img{i:04d}.png")]: ids[str(folder / f"twin{i:04d}.png")]
        for i in range(TWINS)
    }
    # Each exact copy folds into its original (or the other way round), nothing else.
    pairs = {frozenset((owner, d)) for owner, ds in folded.items() for d in ds}
    assert pairs == {frozenset(p) for p in twins.items()}
    assert len(answer["results"]) == len(every) - TWINS
    cut = every[5]["score"]  # the score shown (0..1) is what min_score cuts on
    status, answer = served.json(
        f"/api/search?like={ids[str(folder / 'rotated.jpg')]}&k=40&min_score={cut}"
    )
    assert all(h["score"] >= cut for h in answer["results"])
    assert answer["below_min_score"] == len(every) - len(answer["results"]) > 0
    status, groups = served.json("/api/duplicates")
    assert status == 200
    found = {frozenset(item["id"] for item in g["items"]) for g in groups["groups"]}
    assert found == {frozenset(p) for p in twins.items()}
    result = run_xmr("duplicates", "--index", index_dir, "--json")
    assert json.loads(result.stdout) == groups["groups"]
