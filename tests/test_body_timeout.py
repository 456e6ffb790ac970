"""A request body that stalls is answered 408 and leaves nothing behind (a real frontend over a
real socket: the test client would read the whole body before the app sees it)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from kiosk.keys import JOB_INDEX
from kiosk.queue import JobQueue
from tests.conftest import ServiceGroup
from tests.helpers import TIFF
from tests.support import services

IDLE = 1.0


def _stalled_upload(url: str, path: str) -> tuple[bytes, float]:
    """Send the headers and the start of a multipart body, then nothing; the reply and how long
    it took to come."""
    host, port = url.removeprefix("http://").split(":")
    boundary = "stall"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="job_type"\r\n\r\necho\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.tif"\r\n'
        "Content-Type: image/tiff\r\n\r\n"
    ).encode() + TIFF
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(head) + 100_000}\r\n\r\n"
    ).encode() + head
    with socket.create_connection((host, int(port)), timeout=IDLE * 10) as sock:
        sock.sendall(request)
        started = time.monotonic()
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        return reply, time.monotonic() - started


def test_a_stalled_upload_is_answered_408_and_leaves_nothing(
    env: dict, queue: JobQueue, processes: ServiceGroup, bucket_dir: Path
) -> None:
    env = services.with_public_url({**env, "KIOSK_BODY_IDLE_TIMEOUT": str(IDLE)})
    frontend, url = services.frontend(env, processes.log_dir)
    processes.add(frontend)
    for path in ("/api/v1/jobs", "/api/upload"):
        reply, waited = _stalled_upload(url, path)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b"sent nothing for 1 s" in reply
        assert IDLE * 0.9 <= waited < IDLE * 5
    assert not [p for p in (bucket_dir / "uploads").rglob("*") if p.is_file()]
    assert queue.redis.zcard(JOB_INDEX) == 0
