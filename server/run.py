"""`xmr serve`: check the address, load the engine, announce the server, run uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from xmr.retrieval.errors import DiskFull, InputError, ReadOnlyIndex

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def _few_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates under contention an arena of its own and
    rarely returns their memory: with dozens of request threads a long-running server's
    RSS keeps climbing. Two arenas hold it flat at no measurable cost in latency."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "mallopt"):
            libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except OSError:  # not glibc: its allocator decides
        pass


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_address(host: str, token: str | None) -> None:
    """Anything but loopback exposes the index's photos: only with a token."""
    if not is_loopback(host) and not token:
        raise InputError(
            f"serving on {host} would let anyone who can reach this machine browse the "
            "indexed photos; give a token (clients then send Authorization: Bearer TOKEN) "
            "or serve on 127.0.0.1"
        )
    if token is not None and len(token) < 8:
        raise InputError("a token of at least 8 characters, please")


LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
# A request line and headers up to this size are read whole, so that an over-long query
# string is refused by the API's own checks (a JSON 4xx, the connection kept) rather
# than cut off by the HTTP parser (16 KB by default: a 400, and the connection reset).
MAX_REQUEST_HEAD = 1024 * 1024


def serve(
    index: Path,
    host: str = "127.0.0.1",
    port: int = 8765,
    device: str | None = None,
    token: str | None = None,
    on_ready: Callable[[str, list[str], list[str]], None] | None = None,
    log_level: str = "info",
    reranker: str = "auto",
    feature_cache: str | None = None,
) -> None:
    """Serve until interrupted. `on_ready(url, loaded, notices)` is called once the models
    are warm and the port is open; the server is announced in the index folder for
    `xmr search` where the folder can be written. Requests (at "info") and unexpected
    errors, with their tracebacks, are logged to stderr."""
    from xmr.engine import running

    check_address(host, token)
    if log_level not in LOG_LEVELS:
        raise InputError(f"unknown log level '{log_level}'; use one of {', '.join(LOG_LEVELS)}")
    directory = Path(index).expanduser().absolute()
    # Claimed before anything loads, so a second server stops here; nothing is written
    # into a folder that holds no index (opening it fails below with the reason).
    is_index = (directory / "manifest.json").exists()
    claim = running.claim(directory) if is_index else None
    try:
        from xmr.engine.engine import Engine

        engine = Engine(directory, device, reranker, feature_cache)
        _serve_claimed(directory, engine, host, port, token, on_ready, log_level, claim)
    finally:
        if claim is not None:
            claim.release()


def _serve_claimed(directory, engine, host, port, token, on_ready, log_level, claim) -> None:
    import uvicorn

    from xmr.engine import running
    from xmr.server.app import create_app

    other = None if claim is not None else running.find(directory)
    if other is not None:
        raise InputError(
            f"a server for {directory} already runs at {other.url} (pid {other.pid}); "
            "stop it first, or search through it"
        )
    _log_to_stderr(log_level)
    _few_malloc_arenas()
    engine.info()  # a missing or unreadable index fails here, before the port opens
    loaded = engine.warm_up()
    app = create_app(engine, token)
    if is_loopback(host):
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        # A page on another site must not reach this server through a name it controls
        # that resolves to 127.0.0.1 (DNS rebinding): only loopback names are accepted,
        # with or without a token.
        app.add_middleware(
            TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "[::1]", "::1"]
        )
    sock = _bind(host, port)
    url = f"http://{_url_host(host)}:{sock.getsockname()[1]}"
    config = uvicorn.Config(
        app,
        log_level=log_level,
        log_config=_uvicorn_logging(),
        access_log=log_level in ("info", "debug"),
        timeout_keep_alive=30,
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD,
    )
    server = uvicorn.Server(config)
    announced = running.RunningServer(url, os.getpid(), token, engine.reranker_choice)
    # uvicorn shuts down gracefully on SIGINT / SIGTERM, then raises the signal again with
    # the handlers it found: these end the run quietly, so the record is removed.
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    notices = []
    try:
        running.record(directory, announced)
    except (DiskFull, ReadOnlyIndex):  # a reader's folder: serve all the same, unannounced
        notices.append(
            f"{directory} cannot be written, so `xmr search` there will not find this "
            "server (it loads the models itself); the page and the API work"
        )
    try:
        if on_ready is not None:
            on_ready(url, loaded, notices)
        server.run(sockets=[sock])
    except _Stopped:
        pass
    finally:
        running.forget(directory, os.getpid())
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _uvicorn_logging() -> dict:
    """uvicorn's own logging setup, with request lines on stderr as well (its default
    is stdout): a server's stdout stays free for whatever a caller pipes from it."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    config.setdefault("filters", {})["redact"] = {"()": RedactToken}
    config["handlers"]["access"]["filters"] = ["redact"]
    return config


class RedactToken(logging.Filter):
    """Access lines without the token the page's address carries once (`/?token=T`):
    a log is read by more people than the token is meant for."""

    PATTERN = re.compile(r"(?i)([?&]token=)[^&#\s]*")

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            path = self.PATTERN.sub(r"\1***", args[2])
            record.args = (*args[:2], path, *args[3:])
        return True


def _log_to_stderr(level: str) -> None:
    """xmr's own loggers (the server's unexpected errors) to stderr, in uvicorn's style;
    uvicorn configures its own (requests, startup) from the same level."""
    import sys

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
    logger = logging.getLogger("xmr")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


class _Stopped(Exception):
    """A stop signal arrived (after uvicorn's graceful shutdown, or before it started)."""


def _stop(_signum, _frame) -> None:
    raise _Stopped


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, opened here so that a busy port is one clear error."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Connections inherit it: the server writes a response's headers and body separately,
    # and with Nagle the body waits for the client's delayed ACK (40 ms a request).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise InputError(
            f"cannot listen on {host}:{port} ({exc.strerror}); pick another port"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", "[::]"):
        return "127.0.0.1"
    return f"[{host.strip('[]')}]" if ":" in host else host
