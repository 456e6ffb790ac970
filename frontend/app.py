"""The FastAPI application."""

from __future__ import annotations

from fastapi import FastAPI

from frontend.deps import Services
from frontend.errors import install_error_handlers
from frontend.limits import BodyLimit
from frontend.routes import files, legacy, v1
from kiosk import __version__
from kiosk.queue import JobQueue
from kiosk.settings import FrontendSettings
from kiosk.storage import Bucket, open_bucket

REDIS_RETRIES = 3  # a request waits a few seconds for Redis, then gets 503


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
    for router in (legacy.health, legacy.router, v1.health, v1.router, files.router):
        app.include_router(router)

    # kiosk-client GETs "/" and takes the URL it ends on, after redirects, as the API's base:
    # the root must answer in place.
    @app.get("/", include_in_schema=False)
    def index() -> dict[str, str]:
        return {"service": "Kiosk", "version": __version__, "api": v1.PREFIX, "docs": "/docs"}

    return app
