"""Fixtures: a real redis-server (flushed before each test), buckets, the app, and services run
as real processes whose logs are printed when a test fails."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from frontend.app import create_app
from kiosk.queue import JobQueue, connect
from kiosk.settings import FrontendSettings
from kiosk.storage.local import LocalBucket
from tests.support.jobtypes import QUEUES
from tests.support.kiosk_up import kiosk_up  # noqa: F401 - a fixture for every test module
from tests.support.kube_emulator import cluster  # noqa: F401 - the Kubernetes API emulator
from tests.support.servers import GcsEmulator, RedisServer
from tests.support.services import Service, service_env


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    client = redis_server.client()
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def queue(redis_url: str) -> JobQueue:
    return JobQueue(connect(redis_url), max_attempts=3, finished_ttl=600)


@pytest.fixture
def bucket_dir(tmp_path: Path) -> Path:
    return tmp_path / "bucket"


@pytest.fixture
def bucket(bucket_dir: Path) -> LocalBucket:
    return LocalBucket(bucket_dir)


@pytest.fixture
def env(redis_url: str, bucket_dir: Path) -> dict[str, str]:
    return service_env(redis_url, bucket_dir)


@pytest.fixture
def frontend_settings(redis_url: str, bucket_dir: Path) -> FrontendSettings:
    return FrontendSettings(
        redis_url=redis_url,
        bucket=f"file://{bucket_dir}",
        queues=tuple(QUEUES.split(",")),
        public_url="http://testserver",
        max_upload_bytes=4 * 1024 * 1024,
    )


@pytest.fixture
def api(frontend_settings: FrontendSettings) -> Iterator[TestClient]:
    with TestClient(create_app(frontend_settings)) as client:
        yield client


class ServiceGroup:
    """Starts services and stops them all at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Service] = []

    def add(self, service: Service) -> Service:
        self.started.append(service)
        return service

    def stop_all(self) -> None:
        """SIGTERM everything at once, then wait for each."""
        for service in self.started:
            service.terminate()
        for service in reversed(self.started):
            service.stop()


@pytest.fixture
def processes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServiceGroup]:
    group = ServiceGroup(tmp_path / "logs")
    yield group
    group.stop_all()
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        for service in group.started:
            print(f"\n----- {service.name} log -----\n{service.log()[-6000:]}")


@pytest.fixture(scope="session")
def shared_model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The embedded model server with the bundled models, shared by the session: its gRPC
    target and HTTP base URL."""
    from tests.support import services

    root = tmp_path_factory.mktemp("model-server")
    server, target, http_url = services.model_server(root / "bucket", root / "logs")
    yield target, http_url
    server.stop()


@pytest.fixture(scope="session")
def nuclear_model_server(shared_model_server: tuple[str, str]) -> str:
    """The shared model server's gRPC target."""
    return shared_model_server[0]


@pytest.fixture
def model_server_metrics(shared_model_server: tuple[str, str]) -> Callable[[], str]:
    """Reads the shared model server's Prometheus metrics."""
    url = f"{shared_model_server[1]}/monitoring/prometheus/metrics"
    return lambda: httpx.get(url, timeout=10).text


@pytest.fixture
def segmentation_env(env: dict[str, str], nuclear_model_server: str) -> dict[str, str]:
    """Services' environment for the segmentation job type against the shared model server."""
    return {
        **env,
        "KIOSK_QUEUES": "segmentation",
        "KIOSK_MODEL_SERVER": nuclear_model_server,
        "KIOSK_COLD_START_WAIT": "30",
    }


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[GcsEmulator]:
    emulator = GcsEmulator().start()
    yield emulator
    emulator.stop()


class RunningStack:
    def __init__(self, url: str, queue: JobQueue, group: ServiceGroup, env: dict) -> None:
        self.url = url
        self.queue = queue
        self.group = group
        self.env = env


def start_stack(
    env: dict, queue: JobQueue, group: ServiceGroup, consumers: dict[str, int]
) -> RunningStack:
    """Janitor, frontend and the given consumers (queue -> how many), as real processes."""
    from tests.support import services

    env = services.with_public_url(env)
    group.add(services.janitor(env, group.log_dir))
    frontend, url = services.frontend(env, group.log_dir)
    group.add(frontend)
    for queue_name, count in consumers.items():
        for index in range(count):
            group.add(services.consumer(queue_name, env, group.log_dir, index=index))
    return RunningStack(url, queue, group, env)


@pytest.fixture
def stack(env: dict, queue: JobQueue, processes: ServiceGroup) -> RunningStack:
    """Janitor, frontend and one consumer per test job type."""
    return start_stack(env, queue, processes, {"echo": 1, "slow": 1})


# ------------------------------------------------------------------ the portal's browser


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's Chromium through Playwright, one per test (it starts in about a second), so no
    test sees another's state."""
    from playwright.sync_api import sync_playwright

    from tests.test_portal import launch

    with sync_playwright() as playwright:
        started = launch(playwright)
        yield started
        started.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A desktop-sized page."""
    from tests.test_portal import DESKTOP, open_page

    yield from open_page(browser, request, DESKTOP)


@pytest.fixture
def phone(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A phone-sized page."""
    from tests.test_portal import PHONE, open_page

    yield from open_page(browser, request, PHONE)
