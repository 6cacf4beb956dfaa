"""`xmr search`: ask a running `xmr serve` for this index when there is one (a warm query),
else the engine in this process, which loads only the tower the query needs. Both ways
print exactly the same."""

from __future__ import annotations

from pathlib import Path

import typer

from xmr.cli.errors import handle_errors
from xmr.cli.options import DeviceOption, IndexOption, index_dir

DEDUP_DEFAULT = 0.95  # `--dedup` alone: cosine at which two results are one picture


@handle_errors
def search(
    query: str = typer.Argument(
        None,
        help="Text, or an expression: 'beach + 2:sunset - people', './ref.jpg + at night'.",
    ),
    image: Path = typer.Option(None, "--image", "-i", help="Query by this image."),
    like: list[int] = typer.Option(
        [], "--like", help="Query by an indexed image's id, no decoding (repeatable)."
    ),
    add: list[str] = typer.Option([], "--add", help="Add this term, taken whole (repeatable)."),
    sub: list[str] = typer.Option(
        [], "--sub", help="Subtract this term, taken whole (repeatable)."
    ),
    texts: bool = typer.Option(
        False, "--texts", "-t", help="Search the text corpus instead of images."
    ),
    k: int = typer.Option(10, "-k", "--top", min=1, help="How many results."),
    candidates: int = typer.Option(
        None, "--candidates", "-K", min=1, help="Stage-1 depth re-ranked [default: 128]."
    ),
    no_rerank: bool = typer.Option(False, "--no-rerank", help="Stage 1 only (dual encoder)."),
    reranker: str = typer.Option(
        "auto",
        "--reranker",
        help="Re-ranker folder, 'auto' (the model's own) or 'none', or a BLIP model for "
        "photos: blip-itm-base-coco, blip-itm-large-coco, a Hugging Face id or folder.",
    ),
    feature_cache: str = typer.Option(
        None,
        "--feature-cache",
        help="Size cap of the BLIP vision tokens cached in the index folder at search time "
        "(e.g. 4G; 0: none) [default: 2G].",
    ),
    index: Path = IndexOption,
    device: str = DeviceOption,
    as_json: bool = typer.Option(
        False, "--json", help="JSON array with rank, score, id, stage1_score, path/text."
    ),
    paths_only: bool = typer.Option(
        False, "--paths", "-p", help="Only paths (or texts), one a line."
    ),
    under: list[Path] = typer.Option(
        [], "--under", help="Only files at or below this folder (repeatable; texts: corpus files)."
    ),
    after: str = typer.Option(
        None, "--after", help="Only images taken (EXIF) or modified on or after YYYY-MM-DD."
    ),
    before: str = typer.Option(
        None, "--before", help="Only images taken (EXIF) or modified before YYYY-MM-DD."
    ),
    ext: str = typer.Option(None, "--ext", help="Only these extensions, e.g. jpg,png."),
    min_score: float = typer.Option(
        None, "--min-score", help="Leave out results whose stage-1 cosine is below this."
    ),
    dedup: float = typer.Option(
        None,
        "--dedup",
        min=0.0,
        max=1.0,
        help=f"Fold near-duplicates (cosine >= T) into the best-ranked; T defaults to "
        f"{DEDUP_DEFAULT}.",
    ),
    print0: bool = typer.Option(
        False, "--print0", "-0", help="Only paths, each ended by NUL (for xargs -0)."
    ),
    no_server: bool = typer.Option(
        False, "--no-server", help="Search in this process even when `xmr serve` runs."
    ),
    server_timeout: float = typer.Option(
        30.0,
        "--server-timeout",
        min=0.1,
        help="Seconds to wait for a running `xmr serve`; then search in this process.",
    ),
):
    """Search: text->image (default), image->image (--image), image->text (--image --texts).

    A query may combine terms: QUERY is an expression ('+' and '-' standing alone join
    terms, '2:' weighs one, a path is an image), and --image, --like, --add, --sub add
    terms. Filters (--under, --after, --before, --ext) act inside the search: k results
    come back whenever k items match. When `xmr serve` runs on this index, the query
    goes there (warm models, milliseconds); --no-server, --device, another --reranker or
    an image path inside QUERY keep it in this process.
    """
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
    if not (no_server or device or reranker != "auto" or local_paths or feature_cache):
        answer = _through_server(directory, request, server_timeout, notices)
    if answer is None:
        answer = _in_process(directory, request, device, reranker, feature_cache)
    print_notices(notices + answer["notices"])
    print_answer(answer["results"], as_json, paths_only, print0)


def _through_server(directory: Path, request, timeout: float, notices: list) -> dict | None:
    """The running server's answer, or None when no server serves this index or it does
    not answer in time (then `notices` says so)."""
    from xmr.engine import running
    from xmr.retrieval.errors import InputError

    server = running.find(directory)
    if server is None:
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

    engine = Engine(directory, device, "none" if not request.rerank else reranker, feature_cache)
    return engine.search(request).as_dict()
