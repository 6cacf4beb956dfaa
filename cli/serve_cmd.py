"""`xmr serve`: keep the engine warm behind an HTTP API and a web page."""

from __future__ import annotations

from typing import Annotated

import typer

from xmr.cli.errors import handle_errors
from xmr.cli.options import Device, FeatureCache, IndexDir, SearchReranker, index_dir


@handle_errors
def serve(
    index: IndexDir = None,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            metavar="HOST",
            help="Address to listen on; anything but loopback needs --token.",
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", metavar="PORT", min=0, max=65535, help="0 picks a free port.")
    ] = 8765,
    device: Device = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            metavar="TOKEN",
            envvar="XMR_TOKEN",
            help="Require 'Authorization: Bearer TOKEN' on every /api call (the page: open "
            "/?token=TOKEN once).",
            show_default=False,
        ),
    ] = None,
    open_page: Annotated[
        bool,
        typer.Option("--open", help="Open the page in your browser once it is ready."),
    ] = False,
    log_level: Annotated[
        str,
        typer.Option(
            "--log-level",
            metavar="LEVEL",
            help="What goes to stderr: info logs every request; warning and error only "
            "problems (critical, error, warning, info, debug).",
        ),
    ] = "info",
    reranker: SearchReranker = "auto",
    feature_cache: FeatureCache = None,
):
    """Serve the index: an HTTP API (/api/search, /docs) and a web page at /.

    `xmr search` on the same index asks this server while it runs (no model loading),
    unless it asks for another --reranker. One server per index: a second `xmr serve` on
    it refuses, naming the first.
    """
    from xmr.server.run import serve as run_server

    def ready(url: str, loaded: list[str], notices: list[str]) -> None:
        from xmr.cli.output import print_notices

        print_notices(notices)
        typer.echo(
            f"xmr serving {index_dir(index)} at {url}/  ({', '.join(loaded)} loaded)", err=True
        )
        if open_page:
            from xmr.cli.launch import open_in_browser

            page = f"{url}/" if token is None else f"{url}/?token={token}"
            typer.echo(open_in_browser(page), err=True)
        typer.echo("press Ctrl-C to stop", err=True)

    run_server(
        index_dir(index),
        host,
        port,
        device,
        token,
        on_ready=ready,
        log_level=log_level,
        reranker=reranker,
        feature_cache=feature_cache,
    )
