"""The HTTP API and the web page over one Engine (FastAPI).

    GET  /api/search?q=TEXT|like=ID&target=images|texts&k=&candidates=&rerank=
                    &under=&after=&before=&ext=&min_score=&dedup=&add=&sub=
                    &offset=&order=relevance|newest|oldest
    POST /api/search            multipart: image=<file> plus the same fields
    GET  /api/images/{id}       the indexed file (by id only, never by a client's path)
    GET  /api/images/{id}/thumbnail?size=256
    GET  /api/info              what `xmr info --json` prints
    GET  /api/config            the page's defaults (k, duplicate threshold, examples)
    GET  /api/duplicates?threshold=&under=   what `xmr duplicates --json` prints
    GET  /healthz               {"status": "ok"} (with the token: also "pid", "index")
    GET  /                      the page (static files, no build step)

The search fields are engine/request.py's SearchRequest, read the same way from a query
string and a form. Errors are JSON `{"error": "..."}` with 400 / 401 / 404 / 409 / 413 /
422, never a traceback; an unexpected error is logged once with its traceback and
answered with a 500 that keeps the connection. Files are served only while they are
still what was indexed (engine/indexed_files.py). With a token, everything but a bare /healthz
needs `Authorization: Bearer T` (or the cookie the page gets from `/?token=T`). Requests
run in the server's thread pool; the engine decides what is shared and what is serialised.
"""

from __future__ import annotations

import hmac
import json
import logging
import mimetypes
import os
from importlib import resources
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from xmr.engine.engine import Engine
from xmr.engine.indexed_files import FileChanged, open_indexed, read_chunks
from xmr.engine.request import DUPLICATE_THRESHOLD, FIELD_DOCS, BadField, SearchRequest
from xmr.engine.thumbnails import Thumbnails
from xmr.retrieval.errors import IndexNotFound, ItemNotFound, XmrError
from xmr.server.limits import UploadLimit

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
        if token and not _open_without_token(request, token) and not _authorised(request, token):
            return _error("missing or wrong token: send Authorization: Bearer TOKEN", 401)
        return await call_next(request)

    app.add_middleware(CatchUnexpected)  # outermost: whatever escapes is logged once

    @app.get("/healthz")
    def healthz(request: Request) -> dict:
        """Liveness for anyone; which process serves which index only for the token."""
        if token and not _authorised(request, token):
            return {"status": "ok"}
        return {"status": "ok", "pid": os.getpid(), "index": str(engine.directory.absolute())}

    @app.get("/api/info")
    def info() -> dict:
        return engine.info()

    @app.get("/api/duplicates")
    def duplicates(
        threshold: Annotated[float, Query(gt=0, le=1)] = DUPLICATE_THRESHOLD,
        under: Annotated[list[str] | None, Query()] = None,
    ) -> dict:
        """Groups of near-duplicate images, biggest first (what `xmr duplicates` lists)."""
        return {"groups": engine.duplicates(threshold=threshold, under=under or [])}

    @app.get("/api/config")
    def config() -> dict:
        """The defaults the page starts from (one constant each, in the engine) and the
        examples it offers."""
        return engine.config()

    @app.get("/api/examples")
    def examples() -> dict:
        """Queries the page offers, and what the index holds."""
        return engine.examples()

    @app.get("/api/search", openapi_extra={"parameters": _search_parameters("query")})
    def search_get(request: Request) -> dict:
        """q is a query expression (text terms; image files only as uploads or like=ID);
        the fields are engine/request.py's SearchRequest."""
        fields = request.query_params.getlist
        asked = SearchRequest.from_fields(fields, paths_allowed=False)
        return engine.search(asked).as_dict()

    @app.post("/api/search", openapi_extra=_upload_body())
    async def search_post(request: Request) -> dict:
        """An uploaded image, alone or with the same fields as GET (q="+ at night")."""
        async with request.form() as form:
            image = form.get("image")
            if not isinstance(image, UploadFile):
                raise BadField("image", "attach an image file as the form field 'image'")
            data = await image.read()

            def fields(name: str) -> list[str]:
                return [v for v in form.getlist(name) if isinstance(v, str)]

            def answer() -> dict:
                hint = fields("path_hint")
                asked = SearchRequest.from_fields(
                    fields,
                    image_bytes=data,
                    image_name=Path(image.filename or "upload").name,
                    path_hint=hint[0] if hint else None,
                    paths_allowed=False,
                )
                return engine.search(asked).as_dict()

            return await run_in_threadpool(answer)

    @app.get("/api/images/{image_id}")
    def image_file(image_id: int):
        record = engine.indexed_file(image_id)
        fd, info = open_indexed(record)  # still what was indexed, or 404 / 409
        kind = mimetypes.guess_type(record.path)[0] or "application/octet-stream"
        headers = {
            "Cache-Control": "private, max-age=3600",
            "Content-Length": str(info.st_size),
            "X-Content-Type-Options": "nosniff",
        }
        return StreamingResponse(read_chunks(fd, info.st_size), media_type=kind, headers=headers)

    @app.get("/api/images/{image_id}/thumbnail")
    def thumbnail(image_id: int, size: Annotated[int, Query(ge=16, le=1024)] = 256):
        data = thumbnails.jpeg(image_id, size)
        return Response(
            data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"}
        )

    @app.get("/", include_in_schema=False)
    def page(request: Request):
        if request.query_params.get("token") is not None:
            # keep it in a cookie and take it out of the address bar, every other value intact
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = "/" + ("?" + urlencode(rest) if rest else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(
                TOKEN_COOKIE, request.query_params["token"], httponly=True, samesite="strict"
            )
            return response
        return FileResponse(_static_dir() / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=_static_dir()), name="static")
    return app


class CatchUnexpected:
    """ASGI middleware: an error nobody expected is logged here once, with its traceback,
    and answered with a JSON 500. Letting it reach the server instead would log it twice
    and close the client's keep-alive connection."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except StarletteHTTPException:  # an answer already (413 from UploadLimit)
            raise
        except Exception as exc:
            log.exception("unexpected error in %s %s", scope.get("method"), scope.get("path"))
            if not started:
                message = f"internal error ({type(exc).__name__}); the server's log has details"
                await _error(message, 500)(scope, receive, send)


def _open_without_token(request: Request, token: str) -> bool:
    """A bare liveness answer, and the page's one-time hand-off of the right token."""
    if request.url.path == "/healthz":
        return True
    given = request.query_params.get("token")
    return request.url.path == "/" and given is not None and _same(given, token)


def _authorised(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    given = (
        header[7:]
        if header.lower().startswith("bearer ")
        else request.cookies.get(TOKEN_COOKIE, "")
    )
    return _same(given, token)


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode())


def _static_dir() -> Path:
    return Path(str(resources.files("xmr.server") / "static"))


def _error(message: str, status: int) -> JSONResponse:
    return AsciiJSONResponse({"error": message}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(XmrError)
    async def library_error(_request, exc: XmrError):
        return _error(str(exc), _status(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        return _error(_validation_message(exc), 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        return _error(str(exc.detail), exc.status_code)


def _status(exc: XmrError) -> int:
    if isinstance(exc, ItemNotFound | IndexNotFound):
        return 404
    if isinstance(exc, FileChanged):
        return 409
    return 422 if isinstance(exc, BadField) else 400


def _search_parameters(where: str) -> list[dict]:
    """The search fields for the API's documentation (/docs), as SearchRequest reads them."""
    return [
        {
            "name": name,
            "in": where,
            "required": False,
            "schema": {"type": kind},
            "description": text,
        }
        for name, (kind, text) in FIELD_DOCS.items()
    ]


def _upload_body() -> dict:
    fields = {
        p["name"]: {**p["schema"], "description": p["description"]}
        for p in _search_parameters("form")
    }
    fields["image"] = {"type": "string", "format": "binary"}
    fields["path_hint"] = {"type": "string", "description": "the sender's own path of it"}
    schema = {"type": "object", "properties": fields, "required": ["image"]}
    return {
        "requestBody": {"content": {"multipart/form-data": {"schema": schema}}, "required": True}
    }


def _validation_message(exc: RequestValidationError) -> str:
    """FastAPI's list of problems as one line: 'k: Input should be ...; q: ...'."""
    parts = []
    for problem in exc.errors():
        where = ".".join(str(p) for p in problem.get("loc", ())[1:]) or "request"
        parts.append(f"{where}: {problem.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"
