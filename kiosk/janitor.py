"""The janitor: gives back the jobs of consumers whose heartbeat lapsed.

A consumer killed with SIGKILL, preempted, or removed by a scale-down while busy leaves its job
in ``processing-{queue}:{consumer}`` with no heartbeat. Each sweep moves such jobs back to the
front of their queue in one atomic step (or fails them once their attempts are used up), and
now and then drops index entries of jobs that have expired.

``python -m kiosk.janitor`` runs it until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

import redis

from kiosk.keys import all_queues
from kiosk.logs import setup_logging
from kiosk.queue import JobQueue, Sweep
from kiosk.settings import JanitorSettings
from kiosk.signals import StopSignals

log = logging.getLogger("janitor")

PRUNE_EVERY = 30  # sweeps between index prunes
TICK = 0.25  # seconds between looks at the stop flags


class Janitor:
    def __init__(self, queue: JobQueue, settings: JanitorSettings) -> None:
        self.queue = queue
        self.settings = settings
        self.stopped = threading.Event()
        self.sweeps = 0

    def sweep(self) -> list[Sweep]:
        """One pass over the processing lists of every configured queue."""
        results = self.queue.requeue_lapsed(all_queues(self.settings.queues))
        for r in results:
            log.warning(
                "consumer %s stopped heartbeating: requeued %d, failed %d (out of attempts), "
                "dropped %d (deleted or finished) from %s",
                r.consumer_id,
                r.requeued,
                r.failed,
                r.dropped,
                r.processing_list,
            )
        self.sweeps += 1
        if self.sweeps % PRUNE_EVERY == 0:
            pruned = self.queue.prune_index()
            if pruned:
                log.info("dropped %d expired jobs from the job index", pruned)
        return results

    def run(self, signals: StopSignals | None = None) -> None:
        """Sweep every ``janitor_interval`` seconds until stopped (or signalled)."""
        log.info("janitor watching %s", ", ".join(all_queues(self.settings.queues)) or "nothing")
        signals = signals or StopSignals()
        while not self.stopped.is_set() and not signals.count:
            try:
                self.sweep()
            except redis.RedisError as exc:
                log.warning("Redis unavailable (%s); sweeping again later", exc)
            wake = time.monotonic() + self.settings.janitor_interval
            while time.monotonic() < wake and not signals.count:
                if self.stopped.wait(min(TICK, max(0.0, wake - time.monotonic()))):
                    break
        log.info("janitor stopped")


def main() -> int:
    settings = JanitorSettings()
    setup_logging(settings.log_level, "janitor")
    janitor = Janitor(JobQueue.from_settings(settings, retries=3), settings)
    janitor.run(StopSignals().install())
    return 0


if __name__ == "__main__":
    sys.exit(main())
