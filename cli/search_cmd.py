"""`xmr search`: ask a running `xmr serve` for this index when there is one (a warm query),
else the engine in this process, which loads only the tower the query needs. Both ways
print exactly the same."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from xmr.cli.errors import handle_errors
from xmr.cli.options import Device, FeatureCache, IndexDir, SearchReranker, index_dir
from xmr.engine.request import DUPLICATE_THRESHOLD

DEDUP_DEFAULT = DUPLICATE_THRESHOLD  # `--dedup` alone: the engine's one threshold


@handle_errors
def search(
    query: Annotated[
        str | None,
        typer.Argument(
            metavar="QUERY",
            help="Text, or an expression: 'beach + 2:sunset - people', './ref.jpg + at night'.",
        ),
    ] = None,
    image: Annotated[
        Path | None, typer.Option("--image", "-i", metavar="FILE", help="Query by this image.")
    ] = None,
    like: Annotated[
        list[int] | None,
        typer.Option(
            "--like", metavar="ID", help="Query by an indexed image's id, no decoding (repeatable)."
        ),
    ] = None,
    add: Annotated[
        list[str] | None,
        typer.Option("--add", metavar="TERM", help="Add this term, taken whole (repeatable)."),
    ] = None,
    sub: Annotated[
        list[str] | None,
        typer.Option("--sub", metavar="TERM", help="Subtract this term, taken whole (repeatable)."),
    ] = None,
    texts: Annotated[
        bool, typer.Option("--texts", "-t", help="Search the text corpus instead of images.")
    ] = False,
    k: Annotated[
        int, typer.Option("-k", "--top", metavar="N", min=1, help="How many results (the API's k).")
    ] = 10,
    candidates: Annotated[
        int | None,
        typer.Option(
            "--candidates", "-K", metavar="N", min=1, help="Stage-1 depth re-ranked [default: 128]."
        ),
    ] = None,
    no_rerank: Annotated[
        bool, typer.Option("--no-rerank", help="Stage 1 only (dual encoder).")
    ] = False,
    reranker: SearchReranker = "auto",
    feature_cache: FeatureCache = None,
    index: IndexDir = None,
    device: Device = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            metavar="FILE",
            help="JSON array: rank, score (0..1), id, path or text, and the raw stage1_score, "
            "rerank_logit and fused_score.",
        ),
    ] = False,
    paths_only: Annotated[
        bool, typer.Option("--paths", "-p", help="Only paths (or texts), one a line.")
    ] = False,
    under: Annotated[
        list[Path] | None,
        typer.Option(
            "--under",
            metavar="FOLDER",
            help="Only files at or below this folder (repeatable; texts: corpus files).",
        ),
    ] = None,
    after: Annotated[
        str | None,
        typer.Option(
            "--after",
            metavar="DATE",
            help="Only images taken (EXIF) or modified on or after YYYY-MM-DD.",
        ),
    ] = None,
    before: Annotated[
        str | None,
        typer.Option(
            "--before",
            metavar="DATE",
            help="Only images taken (EXIF) or modified before YYYY-MM-DD.",
        ),
    ] = None,
    ext: Annotated[
        str | None,
        typer.Option("--ext", metavar="EXTS", help="Only these extensions, e.g. jpg,png."),
    ] = None,
    min_score: Annotated[
        float | None,
        typer.Option(
            "--min-score",
            metavar="0..1",
            help="Leave out results whose score (the one shown, 0 to 1) is below this.",
        ),
    ] = None,
    dedup: Annotated[
        float | None,
        typer.Option(
            "--dedup",
            metavar="0..1",
            min=0.0,
            max=1.0,
            help=f"Fold near-duplicates (cosine >= T) into the best-ranked; T defaults to "
            f"{DEDUP_DEFAULT}.",
        ),
    ] = None,
    preview: Annotated[
        bool,
        typer.Option(
            "--preview",
            help="Show thumbnails in terminals that can (kitty, iTerm2, WezTerm, sixel); "
            "plain lines elsewhere and in pipes.",
        ),
    ] = False,
    print0: Annotated[
        bool, typer.Option("--print0", "-0", help="Only paths, each ended by NUL (for xargs -0).")
    ] = False,
    no_server: Annotated[
        bool, typer.Option("--no-server", help="Search in this process even when `xmr serve` runs.")
    ] = False,
    server_timeout: Annotated[
        float,
        typer.Option(
            "--server-timeout",
            metavar="SECONDS",
            min=0.1,
            help="Seconds to wait for a running `xmr serve`; then search in this process.",
        ),
    ] = 30.0,
):
    """Search: text->image (default), image->image (--image), image->text (--image --texts).

    A query may combine terms: QUERY is an expression ('+' and '-' standing alone join
    terms, '2:' weighs one, a path is an image), and --image, --like, --add, --sub add
    terms. Filters (--under, --after, --before, --ext) act inside the search: N results
    come back whenever N items match. Scores run from 0 to 1 (a calibrated probability
    of a match; --json adds the raw stage1_score and rerank_logit).

    \b
    Where it runs: in the `xmr serve` of this index when one runs (warm: milliseconds);
    --no-server keeps it in this process, as do --device, another --reranker, an image in QUERY.
    """
    like, add, sub, under = like or [], add or [], sub or [], under or []
    if query is None and image is None and not (like or add or sub):
        raise typer.BadParameter("give a text QUERY, --image PATH or --like ID")
    from xmr.cli.output import print_answer, print_notices
    from xmr.engine.query_input import QueryInput
    from xmr.engine.request import SearchRequest

    asked = QueryInput(
        text=query, image_path=image, like=tuple(like), add=tuple(add), sub=tuple(sub)
    )
    # Every field is checked here, before any server or model (the same checks a server
    # makes of its clients' requests).
    request = SearchRequest(
        query=asked,
        target="texts" if texts else "images",
        k=k,
        candidates=candidates,
        rerank=not no_rerank,
        under=tuple(str(Path(p).expanduser().resolve()) for p in under),
        after=after,
        before=before,
        ext=ext,
        min_score=min_score,
        dedup=dedup,
    )
    directory = index_dir(index)
    answer: dict | None = None
    notices: list[str] = []
    local_paths = any(t.kind == "image" for t in asked.terms() if t.value != str(image))
    if not (no_server or device or local_paths or feature_cache):
        answer = _through_server(directory, request, reranker, server_timeout, notices)
    if answer is None:
        answer = _in_process(directory, request, device, reranker, feature_cache)
    print_notices(notices + answer["notices"])
    if preview and not (as_json or paths_only or print0):
        _print_previews(directory, answer["results"])
        return
    print_answer(answer["results"], as_json, paths_only, print0)


PREVIEW_PIXELS = 128  # thumbnail size asked of the engine
PREVIEW_ROWS = 6  # terminal rows a picture takes (kitty, iTerm2 scale it to fit)


def _print_previews(directory: Path, results: list[dict]) -> None:
    """Each result's line under its thumbnail, in the terminal's image protocol
    (cli/preview.py); the plain lines where the terminal shows no pictures or stdout
    is not a terminal."""
    import os

    from xmr.cli import preview
    from xmr.cli.output import print_answer, result_line

    protocol = preview.detect(os.environ, preview.stdout_is_tty())
    if protocol is None:
        print_answer(results, False, False)
        return
    from xmr.engine.engine import Engine
    from xmr.engine.thumbnails import Thumbnails
    from xmr.retrieval.errors import XmrError

    thumbnails = Thumbnails(Engine(directory))
    for hit in results:
        picture = ""
        if hit["kind"] == "image":
            try:
                jpeg = thumbnails.jpeg(hit["id"], PREVIEW_PIXELS)
                picture = preview.picture(protocol, jpeg, PREVIEW_ROWS) + "\n"
            except XmrError:  # changed or gone since it was indexed: its line alone
                picture = ""
        typer.echo(picture + result_line(hit))


def _through_server(
    directory: Path, request, reranker: str, timeout: float, notices: list
) -> dict | None:
    """The running server's answer, or None when no server serves this index, it runs
    another re-ranker than the one asked for (`auto` takes the server's), or it does not
    answer in time (then `notices` says so)."""
    from xmr.engine import running
    from xmr.retrieval.errors import InputError

    server = running.find(directory)
    if server is None or reranker not in ("auto", server.reranker):
        return None
    fields = request.as_fields()
    image = request.query.image_path
    try:
        if image is None:
            return running.call(server, "/api/search", fields, timeout=timeout)
        path = Path(image).expanduser()
        data = _read_query_image(path)
        fields["path_hint"] = str(path.resolve())
        upload = ("image", path.name, data)
        return running.call(server, "/api/search", fields, upload, timeout=timeout)
    except running.ServerError as exc:
        raise InputError(str(exc)) from None
    except (OSError, ValueError) as exc:  # it stalled, or went away since find()
        notices.append(f"{exc}; searched in this process instead")
        return None


def _read_query_image(path: Path) -> bytes:
    from xmr.retrieval.errors import InputError

    if not path.exists():
        raise InputError(f"query image {path} does not exist")
    if not path.is_file():
        raise InputError(f"query image {path} is not a regular file")
    return path.read_bytes()


def _in_process(directory: Path, request, device, reranker, feature_cache=None) -> dict:
    from xmr.engine.engine import Engine

    reranker = "none" if not request.rerank else reranker
    engine = Engine(directory, device, reranker, feature_cache, short_lived=True)
    return engine.search(request).as_dict()
