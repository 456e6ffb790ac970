"""The FastAPI application."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from frontend.deps import Services
from frontend.errors import install_error_handlers
from frontend.limits import BodyIdleTimeout, BodyLimit
from frontend.routes import files, legacy, sessions, users, v1
from kiosk import __version__
from kiosk.queue import JobQueue
from kiosk.settings import FrontendSettings
from kiosk.storage import Bucket, open_bucket

REDIS_RETRIES = 3  # a request waits a few seconds for Redis, then gets 503
STATIC_DIR = Path(__file__).parent / "static"  # the web portal: plain HTML, CSS and JS


def wants_html(request: Request) -> bool:
    """Browsers name text/html first; kiosk-client and scripts send */* or nothing, and a
    client that names application/json at least as high gets the JSON it asked for."""
    weights: dict[str, float] = {}
    for part in request.headers.get("accept", "").split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = next((p[2:] for p in params if p.startswith("q=")), "1")
        try:
            weights[media.lower()] = float(q)
        except ValueError:
            continue
    return weights.get("text/html", 0) > weights.get("application/json", 0)


def create_app(
    settings: FrontendSettings | None = None,
    queue: JobQueue | None = None,
    bucket: Bucket | None = None,
) -> FastAPI:
    settings = settings or FrontendSettings()
    app = FastAPI(
        title="Kiosk",
        version=__version__,
        summary="Submit microscopy images for deep-learning segmentation; follow and fetch jobs.",
        description=(
            "`/api/v1` is Kiosk's API. The `/api` routes are the DeepCell Kiosk's, kept "
            "compatible for kiosk-client and the ImageJ plugin."
        ),
    )
    app.state.services = Services(
        settings=settings,
        queue=queue or JobQueue.from_settings(settings, retries=REDIS_RETRIES),
        bucket=bucket or open_bucket(settings.bucket),
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimit, streaming_paths={"/api/upload", f"{v1.PREFIX}/jobs"})
    app.add_middleware(BodyIdleTimeout, timeout=settings.body_idle_timeout)
    routers = (legacy.health, legacy.router, v1.health, v1.router, users.router, sessions.router)
    for router in (*routers, files.router):
        app.include_router(router)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # kiosk-client GETs "/" and takes the URL it ends on, after redirects, as the API's base:
    # the root must answer in place. Browsers get the portal there, everyone else the JSON.
    @app.get("/", include_in_schema=False)
    def index(request: Request) -> Response:
        if wants_html(request):
            return FileResponse(
                STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache", "Vary": "Accept"}
            )
        return JSONResponse(
            {"service": "Kiosk", "version": __version__, "api": v1.PREFIX, "docs": "/docs"},
            headers={"Vary": "Accept"},
        )

    return app
