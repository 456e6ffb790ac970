"""The janitor: gives back the jobs of consumers whose heartbeat lapsed, and reclaims storage.

A consumer killed with SIGKILL, preempted, or removed by a scale-down while busy leaves its job
in ``processing-{queue}:{consumer}`` with no heartbeat. Each sweep moves such jobs back to the
front of their queue in one atomic step (or fails them once their attempts are used up), and
now and then drops index entries of jobs that have expired (and forgets them as users of their
inputs).

On a ``file://`` bucket (the local stack) it also deletes files under ``uploads/`` and
``output/`` older than ``KIOSK_RETENTION`` seconds, as the DeepCell Kiosk's bucket monitor did,
and logs what it reclaimed (:func:`kiosk.reclaim.reclaim_expired`). A ``gs://`` bucket's
lifecycle rules do that on a cluster (``k8s/bucket-lifecycle.json``).

``python -m kiosk.janitor`` runs it until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

import redis

from kiosk.census import census, record
from kiosk.filetypes import human_bytes
from kiosk.keys import all_queues
from kiosk.logs import setup_logging
from kiosk.queue import JobQueue, Sweep
from kiosk.reclaim import Reclaimed, reclaim_expired
from kiosk.settings import JanitorSettings
from kiosk.signals import StopSignals
from kiosk.storage import Bucket, open_bucket
from kiosk.storage.local import LocalBucket

log = logging.getLogger("janitor")

PRUNE_EVERY = 30  # sweeps between index prunes
TICK = 0.25  # seconds between looks at the stop flags
MAX_RECLAIM_INTERVAL = 600.0  # seconds between looks for expired files, at most


def reclaim_interval(retention: float, janitor_interval: float) -> float:
    """Seconds between looks for expired files: a tenth of the retention (so a file outlives
    it by at most 10 %), between one sweep and ten minutes."""
    return min(MAX_RECLAIM_INTERVAL, max(janitor_interval, retention / 10))


class Janitor:
    def __init__(
        self,
        queue: JobQueue,
        settings: JanitorSettings,
        bucket: Bucket | None = None,
        census_bucket: Bucket | None = None,
    ) -> None:
        self.queue = queue
        self.settings = settings
        self.stopped = threading.Event()
        self.sweeps = 0
        self.bucket = bucket if settings.retention > 0 else None
        self.census_bucket = census_bucket if settings.storage_census_interval > 0 else None
        self._next_reclaim = 0.0
        self._next_census = 0.0

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
            forgotten = self.queue.prune_inputs()
            if forgotten:
                log.info("forgot %d inputs whose jobs have all expired", forgotten)
        if self.bucket is not None and time.monotonic() >= self._next_reclaim:
            self._next_reclaim = time.monotonic() + reclaim_interval(
                self.settings.retention, self.settings.janitor_interval
            )
            try:
                self.reclaim()
            except redis.RedisError:
                raise
            except Exception:  # a bucket problem must not stop the queue's recovery
                log.exception("could not reclaim expired files; trying again later")
        if self.census_bucket is not None and time.monotonic() >= self._next_census:
            self._next_census = time.monotonic() + self.settings.storage_census_interval
            try:
                self.count_storage()
            except redis.RedisError:
                raise
            except Exception:
                log.exception("could not count what users store; trying again later")
        return results

    def count_storage(self) -> dict[str, int]:
        """Count what each owner stores in the bucket, for the byte quotas."""
        if self.census_bucket is None:
            return {}
        stored = census(self.queue, self.census_bucket)
        record(self.queue, stored)
        log.info(
            "counted what %d users store: %s in all",
            len(stored),
            human_bytes(sum(stored.values())),
        )
        return stored

    def reclaim(self, now: float | None = None) -> Reclaimed:
        """Delete files older than the retention; log what was reclaimed."""
        if self.bucket is None:
            return Reclaimed()
        retention = self.settings.retention
        done = reclaim_expired(
            self.queue, self.bucket, retention, time.time() if now is None else now
        )
        if done.files or done.kept:
            log.info(
                "reclaimed %d files (%s) under uploads/ and output/ not written for %s "
                "(KIOSK_RETENTION); kept %d inputs of jobs that have not ended",
                done.files,
                human_bytes(done.bytes),
                _duration(retention),
                done.kept,
            )
        return done

    def run(self, signals: StopSignals | None = None) -> None:
        """Sweep every ``janitor_interval`` seconds until stopped (or signalled)."""
        log.info("janitor watching %s", ", ".join(all_queues(self.settings.queues)) or "nothing")
        if self.bucket is not None:
            log.info(
                "files under uploads/ and output/ of %s go %s after they were last written "
                "(KIOSK_RETENTION)",
                self.bucket.url,
                _duration(self.settings.retention),
            )
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


def _duration(seconds: float) -> str:
    """259200 -> '3 days', 3600 -> '1 hour', 90 -> '90 seconds'."""
    units = (("day", 86400), ("hour", 3600), ("minute", 60))
    whole = [(unit, size) for unit, size in units if seconds >= size and seconds % size == 0]
    unit, size = whole[0] if whole else ("second", 1)
    count = seconds / size
    return f"{count:g} {unit}{'' if count == 1 else 's'}"


def retention_bucket(settings: JanitorSettings) -> Bucket | None:
    """The bucket whose files the janitor expires: a local one. A gs:// bucket expires its
    files by its lifecycle rules, which cost nothing to run."""
    bucket = open_bucket(settings.bucket) if settings.bucket.startswith("file://") else None
    return bucket if isinstance(bucket, LocalBucket) else None


def main() -> int:
    settings = JanitorSettings()
    setup_logging(settings.log_level, "janitor")
    queue = JobQueue.from_settings(settings, retries=3)
    census_bucket = open_bucket(settings.bucket) if settings.storage_census_interval else None
    janitor = Janitor(queue, settings, retention_bucket(settings), census_bucket)
    janitor.run(StopSignals().install())
    return 0


if __name__ == "__main__":
    sys.exit(main())
