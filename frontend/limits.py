"""A cap on request bodies outside the upload routes, which stream and limit their own.

Starlette reads a JSON body whole before parsing it, so without a cap one large POST to
/api/predict could take all the frontend's memory.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

JSON_BODY_LIMIT = 1024 * 1024


class BodyLimit:
    def __init__(self, app: ASGIApp, streaming_paths: set[str], limit: int = JSON_BODY_LIMIT):
        self.app = app
        self.streaming_paths = streaming_paths
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") in self.streaming_paths:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        received = 0
        refused = False

        async def counted() -> Message:
            """Past the limit: answer 413 now, and tell the app the client has gone."""
            nonlocal received, refused
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                if not refused:
                    refused = True
                    await self._refuse(scope, receive, send)
                return {"type": "http.disconnect"}
            return message

        async def unless_refused(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counted, unless_refused)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {
                "message": f"the request body is larger than {self.limit // 1024} KiB: "
                "send files to /api/upload or /api/v1/jobs, not inside JSON"
            },
            status_code=413,
        )
        await response(scope, receive, send)
