"""Limits on request bodies: a cap on their size outside the upload routes, which stream and
limit their own (Starlette reads a JSON body whole before parsing it, so without a cap one large
POST to /api/predict could take all the frontend's memory), and a limit on how long any body
may send nothing.
"""

from __future__ import annotations

import asyncio

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


class BodyIdleTimeout:
    """A request whose body sends nothing for ``timeout`` seconds is answered 408 and dropped.

    Without it a client that trickles (or stalls) holds a connection, and for an upload a
    half-written file, for as long as it likes. Only the wait for body bytes is timed: once the
    body has ended, a handler waiting for the client to go away waits as long as it needs. The
    handler sees the client leave (``http.disconnect``), so an upload removes what it wrote.
    """

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = False
        timed_out = False
        started = False

        async def timed() -> Message:
            nonlocal body_done, timed_out
            if timed_out:
                return {"type": "http.disconnect"}
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except TimeoutError:
                timed_out = True  # the handler cleans up as if the client left; 408 follows
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def unless_timed_out(message: Message) -> None:
            nonlocal started
            if timed_out:
                return
            started = True
            await send(message)

        try:
            await self.app(scope, timed, unless_timed_out)
        finally:
            if timed_out and not started:  # after the handler removed what it wrote
                await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        response = JSONResponse(
            {
                "message": f"the request body sent nothing for {self.timeout:g} s: send it "
                "again over a steadier connection"
            },
            status_code=408,
            headers={"Connection": "close"},
        )

        async def no_body() -> Message:
            return {"type": "http.disconnect"}

        await response(scope, no_body, send)
