"""Random and hostile requests against `xmr serve`: does every one get a reasoned answer?

    python benchmarks/fuzz_api.py                           # 2,000 requests, 4 clients
    python benchmarks/fuzz_api.py --requests 300 --images 100   # a quick look

1. Builds (once, kept in --work) an xmr-tiny index of generated scenes (bench_serve's) and
   starts `xmr serve` on a free loopback port.
2. --clients threads, each on its own keep-alive connection, send --requests requests in
   all (or stop after --seconds), drawn with --seed from a grammar of the API: every
   route, every search field, with values from a pool of ordinary and hostile ones (NUL
   bytes, ids past 2**63, NaN, dates past year 9999, 8000-term queries, a thousand
   repeats of a field, decompression bombs, garbage uploads, ...).
3. Reports the status counts, answers >= 500 (must be 0), connections reset or broken
   without an answer (must be 0; a connection the server closes after a complete answer,
   as after a 413, is counted apart), whether /healthz still answers, and the server's
   RSS (sampled every 0.5 s).
Traffic goes to 127.0.0.1 only; every phase is bounded in count and time.
"""

from __future__ import annotations

import argparse
import http.client
import io
import random
import struct
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote, urlsplit

import bench_serve
import common

ORDINARY = {
    "q": ["a red circle", "sunset + 2:boats - people", "+ at night", "C++ book", "12:30 train"],
    "target": ["images", "texts"],
    "k": ["1", "5", "10", "100"],
    "candidates": ["8", "64", "128"],
    "rerank": ["true", "false"],
    "under": ["/tmp", "/", "photos"],
    "after": ["2020-01-01", "2024-03-01T10:30"],
    "before": ["2030-01-01", "2025-12-31T23:59:59+02:00"],
    "ext": ["png", "jpg,png", ".JPEG"],
    "min_score": ["0.1", "-0.5", "0.9"],
    "dedup": ["0.95", "0.5", "1"],
    "offset": ["0", "40", "9990"],
    "order": ["relevance", "newest", "oldest"],
    "like": ["1", "2", "3"],
    "add": ["at night", "blue"],
    "sub": ["people", "red"],
}
HOSTILE = [
    "",
    "\x00",
    "a\x00b",
    "-1",
    "0",
    str(2**63),
    str(2**64),
    str(-(2**63) - 1),
    "1e400",
    "nan",
    "inf",
    "-inf",
    "true",
    "yes please",
    "3000-01-01",
    "0001-01-01",
    "9999-12-31T23:59:59-14:00",
    "2024-02-30",
    "../../etc/passwd",
    "/etc/shadow",
    "%00",
    "%",
    "\u202e\u0000\ud800x" * 3,
    "+ + +",
    "2:",
    "x" * 5000,
    " + ".join(f"term{i}" for i in range(8000)),
    "é" * 3000,
    "a" * 100_000,
]
FIELDS = list(ORDINARY)
MAX_QUERY_STRING = 900 * 1024  # under the server's 1 MiB request head


def value(rng: random.Random, name: str) -> str:
    return rng.choice(HOSTILE) if rng.random() < 0.35 else rng.choice(ORDINARY[name])


def fields(rng: random.Random) -> list[tuple[str, str]]:
    """Up to 6 fields, some repeated; a request head stays under the server's 1 MiB
    (server/run.py MAX_REQUEST_HEAD: beyond it the HTTP parser cuts the connection)."""
    chosen = []
    for name in rng.sample(FIELDS, rng.randint(1, 6)):
        text = value(rng, name)
        many = rng.random() < 0.03 and len(text) < 200
        chosen += [(name, text)] * (1000 if many else rng.choice((1, 1, 1, 2)))
    return chosen


def query_string(pairs) -> str:
    return "&".join(
        f"{quote(k, safe='')}={quote(v, safe='', errors='surrogatepass')}" for k, v in pairs
    )


def jpeg_bomb() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(out, "JPEG")
    data = bytearray(out.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 13000, 13000)
    return bytes(data)


def uploads(photo: bytes) -> list[tuple[str, bytes]]:
    return [
        ("photo.png", photo),
        ("bomb.jpg", jpeg_bomb()),
        ("notes.png", b"a shopping list, not a photo"),
        ("empty.png", b""),
        ("half.png", photo[: len(photo) // 2]),
        ('we"ird\r\nname.png', photo),
    ]


def multipart(pairs, upload) -> tuple[bytes, str]:
    boundary = "fuzzboundary4242"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'.encode()
        + v.encode("utf-8", "surrogatepass")
        + b"\r\n"
        for k, v in pairs
    ]
    if upload is not None:
        name = upload[0].replace('"', "%22").replace("\r", "").replace("\n", "")
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"'
            "\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
            + upload[1]
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def request(rng: random.Random, files: list[tuple[str, bytes]]):
    """(method, path, body, headers) drawn from the API's grammar."""
    roll = rng.random()
    if roll < 0.45:
        query = query_string(fields(rng))
        while len(query) > MAX_QUERY_STRING:
            query = query_string(fields(rng))
        return "GET", "/api/search?" + query, None, {}
    if roll < 0.60:
        upload = rng.choice(files) if rng.random() < 0.9 else None
        body, kind = multipart(fields(rng), upload)
        return "POST", "/api/search", body, {"Content-Type": kind}
    image_id = rng.choice(["1", "5", "-1", "0", str(2**63), "abc", "1.5", "%2e%2e", "99999"])
    if roll < 0.70:
        return "GET", f"/api/images/{quote(image_id, safe='%')}", None, {}
    if roll < 0.80:
        size = rng.choice(["16", "256", "1024", "0", "100000", "nan", ""])
        return "GET", f"/api/images/{quote(image_id, safe='%')}/thumbnail?size={size}", None, {}
    if roll < 0.88:
        pairs = [("threshold", rng.choice(["0.95", "0", "nan", "2", "x"]))]
        under = value(rng, "under")
        pairs += [("under", under)] * rng.choice((0, 1, 3, 1000 if len(under) < 200 else 2))
        return "GET", "/api/duplicates?" + query_string(pairs), None, {}
    path = rng.choice(
        [
            "/api/info",
            "/api/examples",
            "/healthz",
            "/",
            "/?token=x&q=a%26b",
            "/static/..%2F..%2Fetc%2Fpasswd",
            "/docs",
            "/openapi.json",
            "/nope",
        ]
    )
    headers = {"Host": "evil.example"} if rng.random() < 0.1 else {}
    return "GET", path, None, headers


def fuzz(url: str, n: int, clients: int, seconds: float, seed: int, photo: bytes) -> dict:
    host = urlsplit(url).netloc
    statuses: Counter = Counter()
    broken: Counter = Counter()  # exception type -> count: no complete answer
    closed_after_answer = 0
    broken_by: list[str] = []
    server_errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(n))
    stop_at = time.monotonic() + seconds
    files = uploads(photo)

    def client(number: int) -> None:
        nonlocal closed_after_answer
        rng = random.Random(seed * 1000 + number)
        connection = http.client.HTTPConnection(host, timeout=60)
        while time.monotonic() < stop_at:
            with lock:
                if next(counter, None) is None:
                    break
            method, path, body, headers = request(rng, files)
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
                closes = (response.getheader("connection") or "").lower() == "close"
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    broken[type(exc).__name__] += 1
                    broken_by.append(
                        f"{method} {path[:80]} ({len(path)} + {len(body or b'')} bytes)"
                    )
                connection.close()
                connection = http.client.HTTPConnection(host, timeout=60)
                continue
            with lock:
                statuses[response.status] += 1
                if response.status >= 500:
                    server_errors.append(f"{method} {path[:120]} -> {answer[:200]!r}")
                if closes:
                    closed_after_answer += 1
            if closes:
                connection.close()
                connection = http.client.HTTPConnection(host, timeout=60)
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "requests": sum(statuses.values()) + sum(broken.values()),
        "wall_s": round(time.perf_counter() - started, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "answers_500_or_more": sum(v for k, v in statuses.items() if k >= 500),
        "broken_connections": dict(broken),
        "broken_by": broken_by[:20],
        "closed_after_a_complete_answer": closed_after_answer,
        "server_errors": server_errors[:20],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--work", type=Path, default=Path("/tmp/xmr-fuzz-api"))
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=common.RESULTS)
    args = parser.parse_args()

    index, _ = bench_serve.build_index(args.work / f"n{args.images}", args.images)
    photo = next((args.work / f"n{args.images}" / "corpus" / "images").glob("*.*")).read_bytes()
    process, url = bench_serve.start_server(index)
    rss = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            rss.append(bench_serve.rss_mib(process.pid))

    sampler = threading.Thread(target=sample)
    try:
        rss_start = bench_serve.rss_mib(process.pid)
        sampler.start()
        result = fuzz(url, args.requests, args.clients, args.seconds, args.seed, photo)
        done.set()
        sampler.join()
        connection = http.client.HTTPConnection(urlsplit(url).netloc, timeout=10)
        connection.request("GET", "/healthz")
        alive = connection.getresponse().status == 200
    finally:
        done.set()
        process.terminate()
        process.wait(timeout=60)
    data = {
        "host": common.host(),
        "images": args.images,
        "clients": args.clients,
        "seed": args.seed,
        **result,
        "alive_after": alive,
        "rss_mib": {"start": round(rss_start), "max": round(max(rss, default=rss_start))},
    }
    lines = [
        "# fuzz_api: random and hostile requests against `xmr serve`",
        "",
        f"`python benchmarks/fuzz_api.py --requests {args.requests} --clients {args.clients} "
        f"--seed {args.seed} --images {args.images}` (xmr-tiny, loopback)",
        "",
        f"- requests: {data['requests']} in {data['wall_s']} s",
        f"- statuses: {data['statuses']}",
        f"- answers >= 500: {data['answers_500_or_more']}",
        f"- connections broken without an answer: {sum(result['broken_connections'].values())}"
        f" {result['broken_connections'] or ''}",
        f"- closed by the server after a complete answer (413, malformed HTTP): "
        f"{data['closed_after_a_complete_answer']}",
        f"- /healthz afterwards: {'ok' if alive else 'NO ANSWER'}",
        f"- server RSS: {data['rss_mib']['start']} MiB at the start, "
        f"{data['rss_mib']['max']} MiB at most",
    ]
    raise SystemExit(common.publish("fuzz_api", data, lines, args.out))


if __name__ == "__main__":
    main()
