"""A running `xmr serve` announces itself in the index folder, so `xmr search` on that
index can ask it instead of loading models (a warm query instead of a cold start).

    DIR/server.lock   held (flock) by the one server of this index while it runs
    DIR/server.json   {"url": "http://127.0.0.1:8765", "pid": 1234, "token": null,
                       "index": "/abs/path/DIR", "reranker": "auto"}

A server claims the index before it loads anything: the lock is taken without waiting,
so a second `xmr serve` on the same index refuses at once, naming the first; the kernel
releases the lock when its holder dies, however it dies. server.json is written
atomically once the server answers, and removed only by the process it names. After a
crash the file stays behind: a reader checks that the process lives and that the server
answers for this index before it trusts the file.

Every call to a server has a deadline for the whole exchange (connect, send, the reply's
last byte): a server that stalls or trickles its answer costs the caller that long, then
the caller searches in its own process. Only the standard library is used here, so the
check costs milliseconds.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from xmr.retrieval.errors import InputError

SERVER_FILE = "server.json"
LOCK_FILE = "server.lock"
HEALTH_TIMEOUT = 2.0  # a live server on loopback answers /healthz in milliseconds
SEARCH_TIMEOUT = 30.0  # a warm query takes well under a second; a re-ranked one seconds
MAX_ANSWER_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class RunningServer:
    url: str
    pid: int
    token: str | None = None
    reranker: str = "auto"  # what the server re-ranks with (`xmr serve --reranker`)


class Claim:
    """This process's hold on an index as its one server (see `claim`)."""

    def __init__(self, fd: int):
        self.fd = fd

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def claim(directory: Path) -> Claim | None:
    """Become the one server of the index in `directory`, or raise InputError naming the
    server that already is. None where the folder cannot be written (a read-only mount):
    such a server runs unannounced, so it cannot be told apart from another."""
    import fcntl

    path = Path(directory) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        other = _read(Path(directory) / SERVER_FILE)  # the holder's, once it is ready
        if other is not None and holder in (None, other.pid):
            where = f"runs at {other.url} (pid {other.pid})"
        else:
            where = "is starting" + (f" (pid {holder})" if holder else "")
        raise InputError(
            f"another xmr serve {where} for {directory}; stop it first, or search through it"
        ) from None
    except OSError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return Claim(fd)


def _holder(fd: int) -> int | None:
    """The pid the claiming server wrote into the lock file."""
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None


def record(directory: Path, server: RunningServer) -> Path:
    """Announce `server` for the index in `directory` (readable by its owner only: it may
    hold the token). Raises DiskFull or ReadOnlyIndex where the folder cannot take it."""
    from xmr.retrieval.storage import atomic_write_bytes

    directory = Path(directory).absolute()
    path = directory / SERVER_FILE
    data = json.dumps(
        {
            "url": server.url,
            "pid": server.pid,
            "token": server.token,
            "index": str(directory),
            "reranker": server.reranker,
        }
    )
    atomic_write_bytes(path, data.encode(), mode=0o600)  # DiskFull, ReadOnlyIndex
    return path


def forget(directory: Path, pid: int) -> None:
    """Remove the announcement if it is still this server's."""
    found = _read(Path(directory) / SERVER_FILE)
    if found is not None and found.pid == pid:
        (Path(directory) / SERVER_FILE).unlink(missing_ok=True)


def find(directory: Path) -> RunningServer | None:
    """The live server for this index, or None (none announced, a stale file, or a server
    that does not answer /healthz for this index within HEALTH_TIMEOUT)."""
    server = _read(Path(directory) / SERVER_FILE)
    if server is None or not _alive(server.pid):
        return None
    try:
        health = get_json(server, "/healthz", timeout=HEALTH_TIMEOUT)
    except (OSError, ValueError, ServerError):
        return None
    if health.get("pid") != server.pid or not _same_dir(health.get("index"), directory):
        return None
    return server


def get_json(server: RunningServer, path: str, timeout: float = HEALTH_TIMEOUT) -> dict:
    status, body = _exchange(server, "GET", path, None, {}, timeout)
    return _answer(status, body)


def _auth(server: RunningServer) -> dict:
    return {"Authorization": f"Bearer {server.token}"} if server.token else {}


def _read(path: Path) -> RunningServer | None:
    try:
        data = json.loads(path.read_text())
        reranker = str(data.get("reranker") or "auto")
        return RunningServer(str(data["url"]), int(data["pid"]), data.get("token"), reranker)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _same_dir(a, b) -> bool:
    try:
        return a is not None and os.path.samefile(a, b)
    except OSError:
        return False


class ServerError(Exception):
    """The server answered with an error: its message (one line) and HTTP status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def call(
    server: RunningServer,
    path: str,
    fields: dict,
    upload: tuple | None = None,
    timeout: float = SEARCH_TIMEOUT,
) -> dict:
    """GET `path` with `fields` as the query string, or POST them as multipart form data
    with `upload` = (field, filename, bytes). Raises ServerError for an error answer,
    TimeoutError when the whole exchange takes longer than `timeout` seconds and OSError
    when the server cannot be reached."""
    query = {k: v for k, v in fields.items() if v is not None}
    if upload is None:
        target = f"{path}?{urllib.parse.urlencode(query, doseq=True)}"
        status, body = _exchange(server, "GET", target, None, {}, timeout)
    else:
        data, content_type = _multipart(query, upload)
        headers = {"Content-Type": content_type}
        status, body = _exchange(server, "POST", path, data, headers, timeout)
    return _answer(status, body)


def _answer(status: int, body: bytes) -> dict:
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if status >= 400:
        message = data.get("error") if isinstance(data, dict) else None
        raise ServerError(str(message or f"HTTP {status}"), status)
    if not isinstance(data, dict):
        raise ValueError("the server's answer is not a JSON object")
    return data


def _exchange(server, method, target, body, headers, timeout: float) -> tuple[int, bytes]:
    """One request with a deadline on the whole exchange: the socket's own timeout
    bounds each wait, and a timer shuts the socket down when the total is spent, so a
    reply trickled a byte at a time cannot hold the caller either."""
    parts = urllib.parse.urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    expired = threading.Event()

    def expire():
        expired.set()
        sock = connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        connection.request(method, target, body=body, headers={**_auth(server), **headers})
        response = connection.getresponse()
        data = response.read(MAX_ANSWER_BYTES + 1)
        if len(data) > MAX_ANSWER_BYTES:
            raise ValueError("the server's answer is too large")
        return response.status, data
    except (OSError, http.client.HTTPException) as exc:
        if expired.is_set() or isinstance(exc, TimeoutError | socket.timeout):
            raise TimeoutError(f"{server.url} did not answer within {timeout:g} s") from None
        raise ConnectionError(f"{server.url}: {exc}") from None
    finally:
        timer.cancel()
        connection.close()


def _multipart(fields: dict, upload: tuple) -> tuple[bytes, str]:
    boundary = "xmr-" + os.urandom(12).hex()
    parts = []
    for name, value in fields.items():
        for item in value if isinstance(value, list | tuple) else [value]:
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                f"{item}\r\n".encode()
            )
    field_name, filename, data = upload
    safe_name = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; '
        f'filename="{safe_name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
