"""Process supervision shared by ``kiosk up`` and the autoscaler's local backend.

A :class:`ServiceSpec` says how to start a process and how to tell it is ready; a
:class:`Supervised` is one running child with its log file; a :class:`CrashWindow` counts a kind
of process's deaths so that one that keeps dying is restarted with growing delays and, past a
limit, given up on (by the stack) or paused (by the local backend), never restarted in a loop.
"""

from __future__ import annotations

import socket
import subprocess
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

CRASH_WINDOW = 60.0
"""Seconds over which deaths are counted."""
MAX_CRASHES = 5
"""Deaths in the window after which a kind of process is not simply restarted again."""
MAX_RESTART_DELAY = 30.0
READY_TIMEOUT = 60.0


@dataclass
class ServiceSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    ready: Callable[[int], bool] | None = None  # given the child's pid
    stop_timeout: float = 15.0
    ready_timeout: float = READY_TIMEOUT


@dataclass
class CrashWindow:
    """Deaths within the last ``window`` seconds, and the delay before the next start."""

    window: float = CRASH_WINDOW
    limit: int = MAX_CRASHES
    deaths: deque[float] = field(default_factory=deque)

    def record(self, now: float) -> None:
        self.deaths.append(now)
        while self.deaths and now - self.deaths[0] > self.window:
            self.deaths.popleft()

    @property
    def count(self) -> int:
        return len(self.deaths)

    @property
    def exhausted(self) -> bool:
        """Too many deaths in the window: the cause will not go away by restarting."""
        return len(self.deaths) >= self.limit

    def restart_delay(self) -> float:
        """1 s after the first death, doubling with each further one in the window."""
        return min(2.0 ** max(len(self.deaths) - 1, 0), MAX_RESTART_DELAY)


class Supervised:
    """One child process in its own session, its output appended to ``{log_dir}/{name}.log``."""

    def __init__(self, spec: ServiceSpec, log_dir: Path) -> None:
        self.spec = spec
        self.log_path = log_dir / f"{spec.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.crashes = CrashWindow()
        self.restart_at: float | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def returncode(self) -> int | None:
        return self.process.returncode if self.process else None

    def start(self) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.process = subprocess.Popen(
            self.spec.argv,
            env=self.spec.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.restart_at = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.process is not None and self.alive():
            self.process.send_signal(sig)

    def wait(self, timeout: float) -> None:
        """Wait for the child to exit, kill it after ``timeout``, close its log."""
        if self.process is None:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        if self._log:
            self._log.close()
            self._log = None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now on ``host`` (the process that binds it does so a moment later)."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False
