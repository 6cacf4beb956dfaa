"""`xmr search`: ask a running `xmr serve` for this index when there is one (a warm query),
else the engine in this process, which loads only the tower the query needs. Both ways
print exactly the same."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.errors import handle_errors
from cli.options import DeviceOption, IndexOption, index_dir, print_notices


@handle_errors
def search(
    query: str = typer.Argument(None, help="Text query (omit with --image)."),
    image: Path = typer.Option(None, "--image", "-i", help="Query by this image."),
    texts: bool = typer.Option(
        False, "--texts", "-t", help="Search the text corpus instead of images."
    ),
    k: int = typer.Option(10, "-k", "--top", min=1, help="How many results."),
    candidates: int = typer.Option(
        None, "--candidates", "-K", min=1, help="Stage-1 depth re-ranked [default: 128]."
    ),
    no_rerank: bool = typer.Option(False, "--no-rerank", help="Stage 1 only (dual encoder)."),
    reranker: str = typer.Option(
        "auto", "--reranker", help="Re-ranker folder, 'auto' (the model's own) or 'none'."
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
    no_server: bool = typer.Option(
        False, "--no-server", help="Search in this process even when `xmr serve` runs."
    ),
):
    """Search: text->image (default), image->image (--image), image->text (--image --texts).

    Filters (--under, --after, --before, --ext) act inside the search: k results come
    back whenever k items match. When `xmr serve` runs on this index, the query goes
    there (warm models, milliseconds); --no-server, --device or another --reranker keep
    it in this process.
    """
    if query is None and image is None:
        raise typer.BadParameter("give a text QUERY or --image PATH")
    if query is not None and image is not None:
        raise typer.BadParameter("give a text QUERY or --image PATH, not both")
    from cli.output import print_answer

    directory = index_dir(index)
    request = {
        "target": "texts" if texts else "images",
        "k": k,
        "candidates": candidates,
        "rerank": not no_rerank,
        "under": [str(Path(p).expanduser().resolve()) for p in under],
        "after": after,
        "before": before,
        "ext": ext,
    }
    answer = None
    if not (no_server or device or reranker != "auto"):
        answer = _through_server(directory, query, image, request)
    if answer is None:
        answer = _in_process(directory, query, image, request, device, reranker)
    print_notices(answer["notices"])
    print_answer(answer["results"], as_json, paths_only)


def _through_server(directory: Path, query, image, request: dict) -> dict | None:
    """The running server's answer, or None when no server serves this index."""
    from engine import running
    from retrieval.errors import InputError

    server = running.find(directory)
    if server is None:
        return None
    fields = {**request, "rerank": str(request["rerank"]).lower()}
    try:
        if image is None:
            return running.call(server, "/api/search", {**fields, "q": query})
        path = Path(image).expanduser()
        data = _read_query_image(path)
        fields["path_hint"] = str(path.resolve())
        return running.call(server, "/api/search", fields, ("image", path.name, data))
    except running.ServerError as exc:
        raise InputError(str(exc)) from None
    except OSError:  # it went away since find(): answer here instead
        return None


def _read_query_image(path: Path) -> bytes:
    from retrieval.errors import InputError

    if not path.exists():
        raise InputError(f"query image {path} does not exist")
    if not path.is_file():
        raise InputError(f"query image {path} is not a regular file")
    return path.read_bytes()


def _in_process(directory: Path, query, image, request: dict, device, reranker) -> dict:
    from engine.engine import Engine, QueryInput
    from retrieval.filters import SearchFilter

    where = SearchFilter.parse(
        request["under"], request["after"], request["before"], request["ext"]
    )
    engine = Engine(directory, device, "none" if not request["rerank"] else reranker)
    answer = engine.search(
        QueryInput(text=query, image_path=image),
        request["target"],
        request["k"],
        request["candidates"],
        request["rerank"],
        where,
    )
    return answer.as_dict()
