"""A running `xmr serve` announces itself in the index folder, so `xmr search` on that
index can ask it instead of loading models (a warm query instead of a cold start).

    DIR/server.json   {"url": "http://127.0.0.1:8765", "pid": 1234, "token": null, ...}

Written atomically when the server is ready, removed on a clean exit. After a crash the
file stays behind: a reader checks that the process lives and that the server answers
for this index before it trusts the file. Only the standard library is used here, so the
check costs milliseconds.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

SERVER_FILE = "server.json"
HEALTH_TIMEOUT = 0.5  # a live server on loopback answers /healthz in milliseconds


@dataclass(frozen=True)
class RunningServer:
    url: str
    pid: int
    token: str | None = None


def record(directory: Path, server: RunningServer) -> Path:
    """Announce `server` for the index in `directory` (readable by its owner only: it may
    hold the token). Raises DiskFull or ReadOnlyIndex where the folder cannot take it."""
    from xmr.retrieval.storage import atomic_write_bytes

    path = Path(directory) / SERVER_FILE
    data = json.dumps({"url": server.url, "pid": server.pid, "token": server.token})
    atomic_write_bytes(path, data.encode(), mode=0o600)  # DiskFull, ReadOnlyIndex
    return path


def forget(directory: Path, pid: int) -> None:
    """Remove the announcement if it is still this server's."""
    found = _read(Path(directory) / SERVER_FILE)
    if found is not None and found.pid == pid:
        (Path(directory) / SERVER_FILE).unlink(missing_ok=True)


def find(directory: Path) -> RunningServer | None:
    """The live server for this index, or None (none announced, or a stale file)."""
    server = _read(Path(directory) / SERVER_FILE)
    if server is None or not _alive(server.pid):
        return None
    try:
        health = get_json(server, "/healthz", timeout=HEALTH_TIMEOUT)
    except (OSError, ValueError):
        return None
    if health.get("pid") != server.pid or not _same_dir(health.get("index"), directory):
        return None
    return server


def get_json(server: RunningServer, path: str, timeout: float | None = None) -> dict:
    request = urllib.request.Request(server.url + path, headers=_auth(server))
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _auth(server: RunningServer) -> dict:
    return {"Authorization": f"Bearer {server.token}"} if server.token else {}


def _read(path: Path) -> RunningServer | None:
    try:
        data = json.loads(path.read_text())
        return RunningServer(str(data["url"]), int(data["pid"]), data.get("token"))
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


def call(server: RunningServer, path: str, fields: dict, upload: tuple | None = None) -> dict:
    """GET `path` with `fields` as the query string, or POST them as multipart form data
    with `upload` = (field, filename, bytes). Raises ServerError for an error answer and
    OSError when the server cannot be reached."""
    query = {k: v for k, v in fields.items() if v is not None}
    if upload is None:
        url = f"{server.url}{path}?{urllib.parse.urlencode(query, doseq=True)}"
        request = urllib.request.Request(url, headers=_auth(server))
    else:
        body, content_type = _multipart(query, upload)
        request = urllib.request.Request(
            server.url + path,
            data=body,
            headers={**_auth(server), "Content-Type": content_type},
            method="POST",
        )
    try:
        with urllib.request.urlopen(request) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error") or exc.reason
        except ValueError:
            message = exc.reason
        raise ServerError(str(message), exc.code) from None


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
