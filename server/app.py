"""The HTTP API and the web page over one Engine (FastAPI).

    GET  /api/search?q=TEXT|like=ID&target=images|texts&k=&candidates=&rerank=
                    &under=&after=&before=&ext=
    POST /api/search            multipart: image=<file> plus the same fields
    GET  /api/images/{id}       the indexed file (by id only, never by a client's path)
    GET  /api/images/{id}/thumbnail?size=256
    GET  /api/info              what `xmr info --json` prints
    GET  /healthz               {"status": "ok", "pid", "index"}
    GET  /                      the page (static files, no build step)

Errors are JSON `{"error": "..."}` with 400 / 401 / 404 / 413 / 422, never a traceback.
With a token, every /api call needs `Authorization: Bearer T` (or the cookie the page
gets from `/?token=T`). Requests run in the server's thread pool; the engine decides
what is shared and what is serialised.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from xmr.engine.engine import Engine
from xmr.engine.query_input import QueryInput
from xmr.retrieval.errors import IndexNotFound, ItemNotFound, XmrError
from xmr.retrieval.filters import SearchFilter
from xmr.server.limits import UploadLimit
from xmr.server.thumbnails import Thumbnails

TOKEN_COOKIE = "xmr_token"


class AsciiJSONResponse(JSONResponse):
    """JSON in ASCII: a file name that is not UTF-8 travels as its surrogate escapes
    (\\udcff), which a client's JSON parser turns back into the same name."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False).encode("ascii")


DEFAULT_UPLOAD_LIMIT = 20 * 1024 * 1024
log = logging.getLogger("xmr.server")


def create_app(
    engine: Engine, token: str | None = None, upload_limit: int = DEFAULT_UPLOAD_LIMIT
) -> FastAPI:
    app = FastAPI(
        default_response_class=AsciiJSONResponse,
        title="xmr",
        summary="Cross-modal search over one index: text->image, image->image, image->text.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.add_middleware(UploadLimit, limit=upload_limit)
    thumbnails = Thumbnails(engine)
    _add_error_handlers(app)

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        if token and request.url.path.startswith("/api") and not _authorised(request, token):
            return _error("missing or wrong token: send Authorization: Bearer TOKEN", 401)
        return await call_next(request)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "pid": os.getpid(), "index": str(engine.directory)}

    @app.get("/api/info")
    def info() -> dict:
        return engine.info()

    @app.get("/api/duplicates")
    def duplicates(
        threshold: float = Query(0.95, gt=0, le=1), under: list[str] = Query([])
    ) -> dict:
        """Groups of near-duplicate images, biggest first (what `xmr duplicates` lists)."""
        return {"groups": engine.duplicates(threshold, under)}

    @app.get("/api/examples")
    def examples() -> dict:
        """Queries the page offers, and what the index holds."""
        return engine.examples()

    @app.get("/api/search")
    def search_get(
        q: str | None = None,
        like: list[int] = Query([]),
        add: list[str] = Query([]),
        sub: list[str] = Query([]),
        target: str = "images",
        k: int = Query(10, ge=1),
        candidates: int | None = Query(None, ge=1),
        rerank: bool = True,
        under: list[str] = Query([]),
        after: str | None = None,
        before: str | None = None,
        ext: str | None = None,
        min_score: float | None = None,
        dedup: float | None = Query(None, ge=0, le=1),
    ) -> dict:
        """q is a query expression (text terms; image files only as uploads or like=ID)."""
        query = QueryInput(q, like=tuple(like), add=tuple(add), sub=tuple(sub), paths_allowed=False)
        where = SearchFilter.parse(under, after, before, ext)
        answer = engine.search(query, target, k, candidates, rerank, where, min_score, dedup)
        return answer.as_dict()

    @app.post("/api/search")
    def search_post(
        image: UploadFile = File(...),
        path_hint: str | None = Form(None),
        q: str | None = Form(None),
        like: list[int] = Form([]),
        add: list[str] = Form([]),
        sub: list[str] = Form([]),
        target: str = Form("images"),
        k: int = Form(10, ge=1),
        candidates: int | None = Form(None, ge=1),
        rerank: bool = Form(True),
        under: list[str] = Form([]),
        after: str | None = Form(None),
        before: str | None = Form(None),
        ext: str | None = Form(None),
        min_score: float | None = Form(None),
        dedup: float | None = Form(None, ge=0, le=1),
    ) -> dict:
        """An uploaded image, alone or with the same fields as GET (q="+ at night")."""
        query = QueryInput(
            q,
            image_bytes=image.file.read(),
            image_name=Path(image.filename or "upload").name,
            path_hint=path_hint,
            like=tuple(like),
            add=tuple(add),
            sub=tuple(sub),
            paths_allowed=False,
        )
        where = SearchFilter.parse(under, after, before, ext)
        answer = engine.search(query, target, k, candidates, rerank, where, min_score, dedup)
        return answer.as_dict()

    @app.get("/api/images/{image_id}")
    def image_file(image_id: int):
        path = engine.image_path(image_id)
        if not path.is_file():
            raise ItemNotFound(f"the file of image {image_id} is no longer on disk")
        return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/images/{image_id}/thumbnail")
    def thumbnail(image_id: int, size: int = Query(256, ge=16, le=1024)):
        data = thumbnails.jpeg(image_id, size)
        return Response(
            data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"}
        )

    @app.get("/", include_in_schema=False)
    def page(request: Request):
        given = request.query_params.get("token")
        if given is not None:  # keep it in a cookie and take it out of the address bar
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = "/" + ("?" + "&".join(f"{k}={v}" for k, v in rest) if rest else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(TOKEN_COOKIE, given, httponly=True, samesite="strict")
            return response
        return FileResponse(_static_dir() / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=_static_dir()), name="static")
    return app


def _authorised(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    given = (
        header[7:]
        if header.lower().startswith("bearer ")
        else request.cookies.get(TOKEN_COOKIE, "")
    )
    return hmac.compare_digest(given.encode(), token.encode())


def _static_dir() -> Path:
    return Path(str(resources.files("xmr.server") / "static"))


def _error(message: str, status: int) -> JSONResponse:
    return AsciiJSONResponse({"error": message}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(XmrError)
    async def library_error(_request, exc: XmrError):
        status = 404 if isinstance(exc, ItemNotFound | IndexNotFound) else 400
        return _error(str(exc), status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        return _error(_validation_message(exc), 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        return _error(str(exc.detail), exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(_request, exc: Exception):
        log.exception("unexpected error")
        return _error(f"internal error: {type(exc).__name__}", 500)


def _validation_message(exc: RequestValidationError) -> str:
    """FastAPI's list of problems as one line: 'k: Input should be ...; q: ...'."""
    parts = []
    for problem in exc.errors():
        where = ".".join(str(p) for p in problem.get("loc", ())[1:]) or "request"
        parts.append(f"{where}: {problem.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"
