"""``python -m frontend``: serve the API with uvicorn."""

from __future__ import annotations

import sys

import uvicorn

from frontend.app import create_app
from kiosk.logs import setup_logging
from kiosk.settings import FrontendSettings

# Longer than any client's or proxy's idle timeout (httpx 5 s, Google Cloud load balancers
# 600 s), so that the client, not the server, closes an idle connection: a server that closes
# it first races the client's next request on it, which then fails with a reset.
KEEP_ALIVE_S = 620


def main() -> int:
    settings = FrontendSettings()
    setup_logging(settings.log_level, "frontend")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=settings.log_level.upper() == "DEBUG",
        timeout_graceful_shutdown=10,
        timeout_keep_alive=KEEP_ALIVE_S,
        log_config=None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
