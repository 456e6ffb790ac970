"""The local backend: ``kiosk up``'s model server and consumers as child processes.

The autoscaler process owns them, so on one machine the model server idles to zero and consumers
grow under load up to a cap that fits the machine, with the same policy a cluster runs. A
scale-down sends SIGTERM, idle consumers first (a consumer then finishes or hands back its job);
one still running after its grace is killed, and the janitor gives its job back. A process that
keeps dying is not restarted in a loop: once its kind's :class:`~kiosk.processes.CrashWindow` is
exhausted, the kind waits ``CRASH_PAUSE`` seconds before the next start.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from autoscaler.backends import Replicas
from kiosk.processes import CrashWindow, ServiceSpec, Supervised
from kiosk.queue import JobQueue

log = logging.getLogger(__name__)

MODEL_SERVER = "model-server"
CRASH_PAUSE = 30.0


@dataclass
class _Group:
    """The processes of one kind (the model server, or one queue's consumers)."""

    running: list[Supervised] = field(default_factory=list)
    stopping: list[tuple[Supervised, float]] = field(default_factory=list)  # (child, kill at)
    crashes: CrashWindow = field(default_factory=CrashWindow)
    paused_until: float = 0.0


class LocalBackend:
    """Starts and stops ``python -m model_server`` and ``python -m consumers QUEUE``."""

    def __init__(
        self,
        queue: JobQueue,
        queues: Collection[str],
        env: Mapping[str, str],
        log_dir: Path,
        *,
        model_server_health_url: str | None,
        stop_grace: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queue = queue
        self.queues = list(queues)
        self.env = dict(env)
        self.log_dir = log_dir
        self.health_url = model_server_health_url
        self.stop_grace = stop_grace
        self._clock = clock
        self._groups: dict[str, _Group] = {name: _Group() for name in [MODEL_SERVER, *self.queues]}
        self._ready: set[int] = set()  # pids of model servers that answered /healthz
        log_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ Backend

    def replicas(self) -> Replicas:
        self._reap()
        servers = self._groups[MODEL_SERVER].running
        return Replicas(
            model_servers=len(servers),
            model_servers_ready=sum(self._is_ready(child) for child in servers),
            consumers={q: len(self._groups[q].running) for q in self.queues},
        )

    def scale_model_servers(self, replicas: int) -> None:
        if self.health_url is None:  # a model server of the user's own: nothing to run
            return
        self._scale(MODEL_SERVER, replicas, [sys.executable, "-m", "model_server"], ())

    def scale_consumers(self, queue: str, replicas: int, busy: Collection[str] = ()) -> None:
        self._scale(queue, replicas, [sys.executable, "-m", "consumers", queue], busy)

    def mark_deletion_costs(self, queue: str, busy: Collection[str]) -> int:
        """Nothing to mark: this backend does every scale-down itself, idle consumers first."""
        return 0

    # ------------------------------------------------------------------ shutdown

    def stop_all(self, timeout: float | None = None) -> None:
        """Consumers first (they finish or hand back their jobs), then the model server."""
        for kind in [*self.queues, MODEL_SERVER]:
            self._scale(kind, 0, [], ())
        deadline = self._clock() + (self.stop_grace + 10 if timeout is None else timeout)
        while any(g.stopping for g in self._groups.values()) and self._clock() < deadline:
            self._reap()
            time.sleep(0.2)
        for group in self._groups.values():
            for child, _ in group.stopping:
                child.wait(0)  # kills what is left
            group.stopping.clear()

    def pids(self, kind: str) -> list[int]:
        return [c.pid for c in self._groups[kind].running if c.pid is not None]

    # ------------------------------------------------------------------ internals

    def _scale(self, kind: str, replicas: int, argv: list[str], busy: Collection[str]) -> None:
        group = self._groups[kind]
        self._reap()
        now = self._clock()
        while len(group.running) < replicas and now >= group.paused_until:
            child = Supervised(ServiceSpec(self._name(kind), argv, self.env), self.log_dir)
            child.start()
            group.running.append(child)
            log.info("started %s (pid %s)", child.spec.name, child.pid)
        if len(group.running) > replicas:
            for child in self._removal_order(group.running)[: len(group.running) - replicas]:
                group.running.remove(child)
                child.signal(signal.SIGTERM)
                group.stopping.append((child, now + self.stop_grace + 10))
                self._ready.discard(child.pid or -1)
                log.info("stopping %s (pid %s)", child.spec.name, child.pid)

    def _name(self, kind: str) -> str:
        """The model server's name, or a consumer's by the lowest free slot, so logs are
        ``model-server.log`` and ``consumer-{queue}-{slot}.log`` however often they scale."""
        if kind == MODEL_SERVER:
            return MODEL_SERVER
        group = self._groups[kind]
        taken = {c.spec.name for c in group.running} | {c.spec.name for c, _ in group.stopping}
        slot = next(i for i in range(len(taken) + 1) if f"consumer-{kind}-{i}" not in taken)
        return f"consumer-{kind}-{slot}"

    def _removal_order(self, children: list[Supervised]) -> list[Supervised]:
        """Idle consumers first (by their heartbeats), newest first among equals."""
        try:
            holding = {beat.pid for beat in self.queue.live_consumers().values() if beat.busy}
        except Exception as exc:  # Redis down: no way to tell, newest first
            log.warning("cannot tell busy consumers from idle ones (%s)", exc)
            holding = set()
        return sorted(reversed(children), key=lambda child: child.pid in holding)

    def _reap(self) -> None:
        now = self._clock()
        for kind, group in self._groups.items():
            for child in [c for c in group.running if not c.alive()]:
                group.running.remove(child)
                self._ready.discard(child.pid or -1)
                child.wait(0)
                group.crashes.record(now)
                log.warning(
                    "%s exited with code %s; last lines:\n%s",
                    child.spec.name,
                    child.returncode,
                    child.tail(5),
                )
                if group.crashes.exhausted:
                    group.paused_until = now + CRASH_PAUSE
                    log.error(
                        "%s died %d times in %.0fs; not starting another for %.0fs (log: %s)",
                        kind,
                        group.crashes.count,
                        group.crashes.window,
                        CRASH_PAUSE,
                        child.log_path,
                    )
            kept = []
            for child, kill_at in group.stopping:
                if not child.alive():
                    child.wait(0)
                elif now >= kill_at:
                    log.warning("%s did not stop in time; killing it", child.spec.name)
                    child.wait(0)
                else:
                    kept.append((child, kill_at))
            group.stopping = kept

    def _is_ready(self, child: Supervised) -> bool:
        if child.pid in self._ready:
            return True
        if self.health_url is None:
            return True
        try:
            ok = httpx.get(self.health_url, timeout=0.5).status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok and child.pid is not None:
            self._ready.add(child.pid)
        return ok
