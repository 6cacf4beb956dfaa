"""A cap on request bodies, enforced while they arrive: an upload over the limit is refused
with 413 before it is read into memory or spooled to disk, whether or not the client
announced its length."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp


class UploadTooLarge(HTTPException):
    """An HTTP error, so the framework's body parsing passes it on unchanged."""

    def __init__(self, message: str):
        super().__init__(413, message)


class UploadLimit:
    """ASGI middleware: at most `limit` bytes of body (plus room for the form's fields)."""

    FORM_OVERHEAD = 64 * 1024  # boundaries, headers and the other fields of a form
    # A client reads an answer only once it has sent its body: up to this much more is
    # read and dropped so that it sees the 413; past it, the connection is simply closed.
    DRAIN = 256 * 1024 * 1024

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        cap = self.limit + self.FORM_OVERHEAD
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            await self._drain(receive)
            return await self._refuse(send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    raise UploadTooLarge(self.message())
            return message

        try:
            return await self.app(scope, counted, send)
        except UploadTooLarge:
            await self._drain(receive)
            return await self._refuse(send)

    def message(self) -> str:
        return f"upload larger than {self.limit // (1024 * 1024)} MB; send a smaller image"

    async def _drain(self, receive) -> None:
        dropped = 0
        while dropped < self.DRAIN:
            message = await receive()
            if message["type"] != "http.request":
                return
            dropped += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async def _refuse(self, send):
        body = json.dumps({"error": self.message()}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
