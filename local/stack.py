"""``kiosk up``: Kiosk's local shape, as supervised processes on one machine.

Redis (with an append-only file), the janitor, the model server, the frontend and the consumers
(one or more per job type, and one zip fan-out consumer per job type) start in that order, each
once the one before is ready. The models bundled with Kiosk are copied into the bucket's
``models/`` first, where the model server reads them. A process that dies is restarted, with
backoff; one that keeps dying stops the stack with its last log lines. Ctrl-C (or SIGTERM)
stops them in reverse: the frontend first so no new jobs arrive, consumers next so they finish
or hand back their jobs, the model server, and Redis last so everything is on disk. Children
run in their own sessions, so a terminal's Ctrl-C reaches only the supervisor, which decides
the order.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from rich.console import Console
from rich.markup import escape

from kiosk.keys import MODELS_PREFIX, zip_queue
from kiosk.processes import ServiceSpec, Supervised, free_port, port_in_use
from kiosk.queue import JobQueue, connect
from kiosk.settings import ConsumerSettings, StackSettings
from kiosk.signals import StopSignals
from kiosk.storage import Bucket, open_bucket

TICK = 0.25
MODEL_SERVER_READY_TIMEOUT = 180.0  # importing TensorFlow, loading and warming up models
STOP_ORDER = ("frontend", "autoscaler", "consumer", "model", "janitor", "redis")
BUNDLED_MODELS = Path(__file__).resolve().parents[1] / "models"
SAMPLES = Path(__file__).resolve().parents[1] / "samples"
REDIS_INSTALL_HINT = (
    "redis-server was not found on PATH. Install it: `sudo apt-get install redis-server` "
    "(Debian/Ubuntu), `sudo dnf install redis` (Fedora), `brew install redis` (macOS); "
    "or run `make setup`, which installs it"
)


class StackError(RuntimeError):
    pass


class Supervisor:
    def __init__(self, log_dir: Path, console: Console, signals: StopSignals) -> None:
        self.log_dir = log_dir
        self.console = console
        self.signals = signals
        self.children: list[Supervised] = []

    def start(self, spec: ServiceSpec) -> Supervised:
        child = Supervised(spec, self.log_dir)
        self.children.append(child)
        child.start()
        deadline = time.monotonic() + spec.ready_timeout
        ready, pid = spec.ready, child.pid
        while True:
            if self.signals.count:
                raise StackError("interrupted while starting")
            if not child.alive():
                raise StackError(
                    f"{spec.name} exited with code {child.returncode} while starting:\n"
                    f"{child.tail()}\n(full log: {child.log_path})"
                )
            if ready is None or (pid is not None and _quietly(lambda: ready(pid))):
                return child
            if time.monotonic() > deadline:
                raise StackError(
                    f"{spec.name} was not ready after {spec.ready_timeout:.0f}s:\n{child.tail()}"
                )
            time.sleep(TICK)

    def check(self) -> None:
        """Restart children that died, with backoff; give up on one that keeps dying."""
        now = time.monotonic()
        for child in self.children:
            if child.alive():
                continue
            if child.restart_at is None:
                child.crashes.record(now)
                if child.crashes.exhausted:
                    raise StackError(
                        f"{child.spec.name} died {child.crashes.count} times in "
                        f"{child.crashes.window:.0f}s; last lines:\n{child.tail()}"
                    )
                delay = child.crashes.restart_delay()
                child.restart_at = now + delay
                self.console.print(
                    f"[yellow]{child.spec.name} exited with code {child.returncode}; "
                    f"restarting in {delay:.0f}s[/] (log: {escape(str(child.log_path))})"
                )
            elif now >= child.restart_at:
                child.wait(0)
                child.start()

    def stop_all(self) -> None:
        """Frontend first (no new jobs), then consumers (they finish or hand back their jobs),
        the janitor, and Redis last (so its append-only file has everything). Another Ctrl-C
        while stopping asks the group again, which makes consumers hand back at once; a third
        kills it."""
        kinds = [k for k in STOP_ORDER if any(_kind(c.spec.name) == k for c in self.children)]
        kinds += [_kind(c.spec.name) for c in self.children if _kind(c.spec.name) not in kinds]
        for kind in kinds:
            group = [c for c in self.children if _kind(c.spec.name) == kind]
            for child in group:
                child.signal(signal.SIGTERM)
            deadline = time.monotonic() + max(c.spec.stop_timeout for c in group)
            asked = self.signals.count
            while any(c.alive() for c in group) and time.monotonic() < deadline:
                if self.signals.count > asked:
                    asked = self.signals.count
                    sig = signal.SIGTERM if asked < 3 else signal.SIGKILL
                    for child in group:
                        child.signal(sig)
                time.sleep(TICK)
            for child in group:
                child.wait(0)  # kills what is left


def _kind(name: str) -> str:
    return name.split("-", 1)[0]


def _quietly(check: Callable[[], bool]) -> bool:
    try:
        return bool(check())
    except Exception:
        return False


def install_models(source: Path, bucket: Bucket) -> list[str]:
    """Copy model versions (``{Name}/{version}/...``) missing from the bucket's ``models/``;
    versions already there are left alone, so a model a user replaced stays theirs."""
    installed: list[str] = []
    if not source.is_dir():
        return installed
    for version_dir in sorted(p for p in source.glob("*/*") if p.is_dir() and p.name.isdigit()):
        prefix = f"{MODELS_PREFIX}{version_dir.parent.name}/{version_dir.name}/"
        if next(iter(bucket.list(prefix)), None) is not None:
            continue
        for path in sorted(p for p in version_dir.rglob("*") if p.is_file()):
            bucket.upload_file(path, prefix + path.relative_to(version_dir).as_posix())
        installed.append(prefix)
    return installed


def plan(
    settings: StackSettings,
    data_dir: Path,
    redis_server: str,
    redis_port: int,
    model_ports: tuple[int, int] | None = None,
) -> list[ServiceSpec]:
    """The processes of the local stack, in start order."""
    python = sys.executable
    public_url = (
        settings.public_url
        if "public_url" in settings.model_fields_set
        else f"http://{_client_host(settings.host)}:{settings.port}"
    )
    bucket = (
        settings.bucket
        if "bucket" in settings.model_fields_set
        else f"file://{data_dir / 'bucket'}"
    )
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    grpc_port, http_port = model_ports or (free_port(), free_port())
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "KIOSK_REDIS_URL": redis_url,
        "KIOSK_BUCKET": bucket,
        "KIOSK_QUEUES": ",".join(settings.queues),
        "KIOSK_PUBLIC_URL": public_url,
        "KIOSK_HOST": settings.host,
        "KIOSK_PORT": str(settings.port),
    }
    if settings.embedded_model_server:
        env |= {
            "KIOSK_MODEL_SERVER": f"127.0.0.1:{grpc_port}",
            "KIOSK_MODEL_SERVER_HOST": "127.0.0.1",
            "KIOSK_MODEL_SERVER_PORT": str(grpc_port),
            "KIOSK_MODEL_SERVER_HTTP_PORT": str(http_port),
            "KIOSK_MODEL_CACHE_DIR": str(data_dir / "model-cache"),
        }
    autoscaled = settings.consumers_per_queue == 0
    probe = connect(redis_url, retries=0, socket_timeout=1)
    jobs = JobQueue(probe)

    def heartbeating(pid: int) -> bool:
        """A consumer is ready once it heartbeats: it does so before its first claim."""
        return any(beat.pid == pid for beat in jobs.live_consumers().values())

    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    specs = [
        ServiceSpec(
            "redis",
            [
                redis_server,
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(redis_dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                settings.redis_appendfsync,
                "--save",
                "",
                "--daemonize",
                "no",
                "--logfile",
                "",
            ],
            env,
            ready=lambda pid: probe.ping(),
            stop_timeout=60,
        ),
        ServiceSpec("janitor", [python, "-m", "kiosk.janitor"], env),
    ]
    if autoscaled:
        specs.append(_autoscaler_spec(settings, env, data_dir, http_port))
    elif settings.embedded_model_server:
        specs.append(
            ServiceSpec(
                "model-server",
                [python, "-m", "model_server"],
                env,
                ready=lambda pid: (
                    httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=1).status_code == 200
                ),
                ready_timeout=MODEL_SERVER_READY_TIMEOUT,
                stop_timeout=30,
            )
        )
    specs += [
        ServiceSpec(
            "frontend",
            [python, "-m", "frontend"],
            env,
            ready=lambda pid: (
                httpx.get(
                    f"http://{_client_host(settings.host)}:{settings.port}/api/health-check",
                    timeout=1,
                ).status_code
                == 200
            ),
        ),
    ]
    grace = ConsumerSettings().shutdown_grace
    for job_type in settings.queues if not autoscaled else ():
        runs = [(job_type, i) for i in range(settings.consumers_per_queue)]
        for queue, index in [*runs, (zip_queue(job_type), 0)]:
            specs.append(
                ServiceSpec(
                    f"consumer-{queue}-{index}",
                    [python, "-m", "consumers", queue],
                    env,
                    ready=heartbeating,
                    stop_timeout=grace + 10,
                )
            )
    return specs


def _autoscaler_spec(
    settings: StackSettings, env: dict[str, str], data_dir: Path, model_http_port: int
) -> ServiceSpec:
    """The autoscaler with its local backend: it starts the model server and consumers when
    work arrives and stops them when it is done (``python -m autoscaler``)."""
    metrics_port = free_port()
    autoscaler_env = {
        **env,
        "KIOSK_AUTOSCALER_BACKEND": "local",
        "KIOSK_DATA_DIR": str(data_dir),
        "KIOSK_EXPORTER_PORT": str(metrics_port),
        "KIOSK_MODEL_SERVER_METRICS_URL": (
            f"http://127.0.0.1:{model_http_port}/monitoring/prometheus/metrics"
            if settings.embedded_model_server
            else ""
        ),
    }
    autoscaler_env.setdefault("KIOSK_AUTOSCALER_INTERVAL", "1")
    consumer = ConsumerSettings()
    return ServiceSpec(
        "autoscaler",
        [sys.executable, "-m", "autoscaler"],
        autoscaler_env,
        ready=lambda pid: (
            httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=1).status_code == 200
        ),
        stop_timeout=consumer.shutdown_grace + 10 + 30,  # consumers, then the model server
    )


def _job_types_that_cannot_start(settings: StackSettings, env: dict[str, str]) -> str:
    """What the consumers of the configured job types would say if they could not start
    (an unknown job type, a plugin that does not import); empty when they all can."""
    problems = []
    for job_type in settings.queues:
        check = subprocess.run(
            [sys.executable, "-m", "consumers", job_type, "--check"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check.returncode != 0:
            lines = (check.stdout + check.stderr).strip().splitlines()
            problems.append(f"consumer-{job_type} cannot start: " + " ".join(lines[-3:]))
    return "\n".join(problems)


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


class Demo:
    """``kiosk up --demo``: once the stack is up, segment the bundled samples through the CLI
    (as a user would) and say where the labels are."""

    def __init__(self, url: str, job_type: str, results: Path, console: Console) -> None:
        self.results = results
        self.console = console
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "local",
                "--url",
                url,
                "submit",
                str(SAMPLES),
                "--job-type",
                job_type,
                "--out",
                str(results),
            ],
            stdin=subprocess.DEVNULL,
        )
        self.reported = False

    def check(self) -> None:
        if self.reported or self.process.poll() is None:
            return
        self.reported = True
        if self.process.returncode == 0:
            self.console.print(
                f"[bold green]demo done:[/] label images of the samples in {SAMPLES} are in "
                f"[bold]{escape(str(self.results))}[/] (TIFF: open them in Fiji or napari). "
                "Kiosk keeps running; press Ctrl-C to stop."
            )
        else:
            self.console.print(
                f"[bold red]demo failed[/] (kiosk submit exited {self.process.returncode}); "
                "the logs are in the data directory's logs/"
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def run_stack(settings: StackSettings, console: Console, demo: bool = False) -> int:
    """Start the stack, supervise it until Ctrl-C or SIGTERM, stop it; the exit code."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        console.print(f"[bold red]error:[/] {REDIS_INSTALL_HINT}")
        return 1
    if port_in_use(settings.host, settings.port):
        console.print(
            f"[bold red]error:[/] port {settings.port} on {settings.host} is in use (another "
            "Kiosk?): stop it, or choose another port with --port or KIOSK_PORT"
        )
        return 1
    data_dir = Path(settings.data_dir).resolve()
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    lock = open(data_dir / ".lock", "w")  # noqa: SIM115 - held for the stack's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        console.print(
            f"[bold red]error:[/] another `kiosk up` is using {escape(str(data_dir))}; stop it "
            "or pass --data-dir"
        )
        return 1

    signals = StopSignals().install()
    supervisor = Supervisor(data_dir / "logs", console, signals)
    specs = plan(settings, data_dir, redis_server, free_port())
    if settings.embedded_model_server:
        models = Path(settings.models_dir) if settings.models_dir else BUNDLED_MODELS
        bucket = open_bucket(specs[0].env["KIOSK_BUCKET"])
        for prefix in install_models(models, bucket):
            console.print(f"installed model {escape(prefix)} into the bucket")
        if next(iter(bucket.list(MODELS_PREFIX)), None) is None:
            console.print(
                f"[yellow]no models in {escape(bucket.url)}/{MODELS_PREFIX}[/]: the model server "
                "starts empty and picks up models/{Name}/{version}/ when you add one"
            )
            for spec in specs:
                if spec.name == "model-server":
                    spec.ready = None
    code = 0
    running_demo: Demo | None = None
    if settings.consumers_per_queue == 0:  # consumers start later: find a broken job type now
        broken = _job_types_that_cannot_start(settings, specs[0].env)
        if broken:
            console.print(f"[bold red]error:[/] {escape(broken)}")
            return 1
    try:
        for spec in specs:
            supervisor.start(spec)
        _banner(console, settings, specs, data_dir)
        if demo and settings.queues:
            url = specs[0].env["KIOSK_PUBLIC_URL"]
            running_demo = Demo(url, settings.queues[0], data_dir / "demo-results", console)
        while not signals.count:
            supervisor.check()
            if running_demo:
                running_demo.check()
            time.sleep(TICK)
        console.print(
            "stopping: frontend, consumers (finishing or handing back jobs), model server, "
            "janitor, Redis"
        )
    except StackError as exc:
        if not signals.count:
            console.print(f"[bold red]error:[/] {escape(str(exc))}")
            code = 1
    finally:
        if running_demo:
            running_demo.stop()
        supervisor.stop_all()
        lock.close()
    console.print("Kiosk stopped." if code == 0 else "Kiosk stopped after an error.")
    return code


def _banner(
    console: Console, settings: StackSettings, specs: list[ServiceSpec], data_dir: Path
) -> None:
    url = specs[0].env["KIOSK_PUBLIC_URL"]
    queues = ", ".join(settings.queues)
    console.print(f"[bold green]Kiosk is running at {escape(url)}[/]")
    console.print(f"  API docs    {escape(url)}/docs")
    if queues and settings.consumers_per_queue == 0:
        console.print(
            f"  job types   {queues}: the model server and consumers start with the first job "
            "and scale with the work"
        )
    elif queues:
        console.print(
            f"  job types   {queues} ({settings.consumers_per_queue} consumer each, "
            "plus one for zips)"
        )
    else:
        console.print(
            "  job types   none configured: set KIOSK_QUEUES (and, for job types "
            "of your own, KIOSK_JOB_TYPE_PLUGINS)"
        )
    console.print(f"  data        {escape(str(data_dir))} (bucket, Redis append-only file, logs/)")
    console.print("Press Ctrl-C to stop.")
