"""A consumer's job lifecycle, in one file: claim, heartbeat, work, settle, shut down.

The *main* thread supervises: it takes signals, sends heartbeats and enforces the shutdown
grace. The *jobs* thread claims one job at a time, runs the job type's ``process`` and settles
the outcome:

    done      -> finish: status done, output_url, timings; the hash gets its finished TTL
    Finish    -> the rest of the job (its outputs) runs on a *finishing* thread, settled there
                 like a result, while the jobs thread claims and predicts the next job
    Waiting   -> park: status waiting, off this consumer's list (a zip parent's children run)
    JobError  -> fail now: status failed with the message as ``reason``, a dead-letter copy
    other     -> retry: queued again, or failed once ``max_attempts`` are used up
    JobLost   -> nothing: the job was deleted, or the janitor gave it to another consumer;
                 a deleted job's results written meanwhile are removed

One job finishes at a time, so a consumer holds at most two jobs: one predicting, one
finishing. On SIGTERM (or SIGINT) the jobs thread stops claiming; the jobs in hand get
``shutdown_grace`` seconds to finish, after which the main thread hands them back to the front
of their queue without counting the attempt, and the process exits. A second signal hands back
at once. Lost Redis connections are waited out; nothing is dropped while Redis is away. The
supervisor talks to Redis through its own client that gives up quickly (``control``), so a
consumer told to stop while Redis is down still stops.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping

import redis
from prometheus_client import CollectorRegistry

from consumers.base import Consumer, Finish, Job, JobError, JobLost, Result, Waiting
from consumers.metrics import ConsumerMetrics
from kiosk.jobs import Stage
from kiosk.keys import JobField, file_url
from kiosk.queue import Claim, Heartbeat, JobQueue, Liveness, Outcome, Settled
from kiosk.settings import ConsumerSettings
from kiosk.signals import StopSignals

log = logging.getLogger(__name__)

SUPERVISOR_TICK = 0.25  # seconds between the main thread's checks
IDLE_EXIT_MARGIN = 5.0  # beyond claim_timeout, before a stopping idle consumer stops waiting
MAX_BACKOFF = 10.0
FINISHING_NICENESS = 10  # added to the finishing thread's nice value


def new_consumer_id() -> str:
    """Unique per process: host (the pod name on Kubernetes), pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Worker:
    def __init__(
        self,
        consumer: Consumer,
        queue: JobQueue,
        queue_name: str,
        settings: ConsumerSettings,
        metrics: ConsumerMetrics | None = None,
        consumer_id: str | None = None,
        control: JobQueue | None = None,
    ) -> None:
        self.consumer = consumer
        self.queue = queue
        self.control = control or queue
        self.queue_name = queue_name
        self.settings = settings
        self.metrics = metrics or ConsumerMetrics(CollectorRegistry())
        self.consumer_id = consumer_id or new_consumer_id()
        self._stopping = threading.Event()
        self._deadline: float | None = None
        self._stop_asked: float | None = None
        self._signals = StopSignals()
        self._in_hand: dict[str, Claim] = {}  # claimed and not yet settled, by job key
        self._in_hand_lock = threading.Lock()
        self._finishing: threading.Thread | None = None
        self._check_held = True
        self._stranded = False  # a hand-back failed: leave the heartbeat to lapse

    # ------------------------------------------------------------------ supervisor (main thread)

    def run(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._signals.install()
        self.consumer.setup()
        # Heartbeat before the first claim, so the janitor never sees a held job without one.
        self._beat()
        jobs = threading.Thread(target=self._work, name=f"jobs-{self.queue_name}", daemon=True)
        jobs.start()
        log.info("consumer %s serving queue %r", self.consumer_id, self.queue_name)
        next_beat = time.monotonic() + self.settings.heartbeat_interval
        handled_signals = 0
        idle_exit_after = self.settings.claim_timeout + IDLE_EXIT_MARGIN
        while jobs.is_alive():
            jobs.join(SUPERVISOR_TICK)
            now = time.monotonic()
            if self._signals.count != handled_signals:
                handled_signals = self._signals.count
                self.stop(grace=0 if handled_signals > 1 else self.settings.shutdown_grace)
            if not jobs.is_alive():
                break
            if self._deadline is not None and now >= self._deadline:
                self._hand_back_in_hand()
                break
            if (
                self._stop_asked is not None
                and not self._claims()
                and (now - self._stop_asked > idle_exit_after)
            ):
                log.warning("the jobs thread is stuck waiting for Redis; stopping without it")
                break
            if now >= next_beat:
                self._beat()
                next_beat = now + self.settings.heartbeat_interval
        self._shutdown()

    def stop(self, grace: float) -> None:
        """Stop claiming; the jobs in hand have ``grace`` seconds before they are handed back."""
        if not self._stopping.is_set():
            log.info("stopping: no new claims; %.0fs for the jobs in hand", grace)
            self._stop_asked = time.monotonic()
        self._stopping.set()
        deadline = time.monotonic() + grace
        self._deadline = deadline if self._deadline is None else min(self._deadline, deadline)

    def _liveness(self) -> Liveness:
        beat = Heartbeat(
            queue=self.queue_name,
            host=socket.gethostname(),
            pid=os.getpid(),
            jobs=tuple(claim.key for claim in self._claims()),
            stopping=self._stopping.is_set(),
        )
        return Liveness(beat, self.settings.heartbeat_ttl)

    def _beat(self) -> None:
        alive = self._liveness()
        try:
            self.control.heartbeat(self.consumer_id, alive.ttl, alive.beat)
        except redis.RedisError as exc:
            log.warning("heartbeat failed (%s); retrying next beat", exc)

    def _claims(self) -> list[Claim]:
        with self._in_hand_lock:
            return list(self._in_hand.values())

    def _hold(self, claim: Claim) -> None:
        with self._in_hand_lock:
            self._in_hand[claim.key] = claim
            self.metrics.holding(self.queue_name, len(self._in_hand))

    def _release(self, claim: Claim) -> int:
        """Forget a settled claim; how many are still in hand."""
        with self._in_hand_lock:
            self._in_hand.pop(claim.key, None)
            self.metrics.holding(self.queue_name, len(self._in_hand))
            return len(self._in_hand)

    def _hand_back_in_hand(self) -> None:
        for claim in self._claims():
            self._hand_back(claim)

    def _hand_back(self, claim: Claim) -> None:
        settled = self._settle(lambda: self.control.hand_back(claim, self.consumer_id), retries=3)
        self._release(claim)
        if settled and settled.outcome is Outcome.APPLIED:
            log.info("handed back %s unfinished; its attempt does not count", claim.key)
            self.metrics.settled(self.queue_name, "handed_back", 0.0)
        elif settled is None:
            self._stranded = True
            log.error("could not hand back %s; the janitor will requeue it", claim.key)

    def _shutdown(self) -> None:
        if self._stranded:
            return  # keep the heartbeat: it lapses and the janitor requeues what we hold
        try:
            self.control.stop_heartbeat(self.consumer_id)
        except redis.RedisError as exc:
            log.warning("could not clear heartbeat (%s); it will lapse", exc)
        log.info("consumer %s stopped", self.consumer_id)

    # ------------------------------------------------------------------ jobs thread

    def _work(self) -> None:
        delay = 0.0
        while not self._stopping.is_set():
            try:
                claim = self._next_claim()
                delay = 0.0
            except redis.RedisError as exc:
                delay = min(max(delay * 2, 0.5), MAX_BACKOFF)
                log.warning("Redis unavailable (%s); claiming again in %.1fs", exc, delay)
                self._check_held = True
                self._stopping.wait(delay)
                continue
            if claim is None:
                continue
            self._hold(claim)  # at once: the supervisor hands back what is in hand
            if self._stopping.is_set():
                self._hand_back(claim)
                break
            self._process(claim)
        self._wait_for_finishing()

    def _next_claim(self) -> Claim | None:
        if self._check_held:
            in_hand = {claim.key for claim in self._claims()}
            held = self.queue.held(
                self.queue_name, self.consumer_id, skip=in_hand, alive=self._liveness()
            )
            self._check_held = False
            if held is not None:
                log.info("resuming %s, already in this consumer's list", held.key)
                return held
        claim = self.queue.claim(
            self.queue_name, self.consumer_id, self.settings.claim_timeout, self._liveness()
        )
        if claim is None:
            self._check_held = True  # idle: a cheap look for anything stranded in our list
        return claim

    def _process(self, claim: Claim) -> None:
        started = time.perf_counter()
        log.info("claimed %s (attempt %d)", claim.key, claim.attempt)
        job = Job(claim, self.consumer.bucket, lambda f: self._update(claim, f), self._on_stage)
        finish = self._attempt(claim, job, started, lambda: self.consumer.process(job))
        if finish is not None:
            self._wait_for_finishing()  # one job finishing at a time
            self._finishing = threading.Thread(
                target=self._finish,
                args=(claim, job, started, finish),
                name=f"finishing-{self.queue_name}",
                daemon=True,  # a stuck upload must not keep a stopped consumer alive
            )
            self._finishing.start()

    def _finish(self, claim: Claim, job: Job, started: float, finish: Finish) -> None:
        _lower_thread_priority()
        self._attempt(claim, job, started, lambda: _result_of(finish))

    def _wait_for_finishing(self) -> None:
        if self._finishing is not None:
            self._finishing.join()
            self._finishing = None

    def _attempt(
        self,
        claim: Claim,
        job: Job,
        started: float,
        work: Callable[[], Result | Finish | Waiting],
    ) -> Finish | None:
        """Run ``work`` for a held job and settle what it ends with; a :class:`Finish` is
        returned unsettled, for the caller to run."""
        settled: Settled | None = None
        job_lost: JobLost | None = None
        outcome = ""
        paced = True
        try:
            result = work()
            if isinstance(result, Finish):
                return result
        except JobLost as exc:
            log.warning("abandoned %s: %s", claim.key, exc)
            job_lost = exc
            settled = Settled(exc.outcome)
        except JobError as exc:
            log.info("failed %s: %s", claim.key, exc)
            why = str(exc)
            self._write_unwritten(claim, job)
            settled = self._settle(lambda: self.queue.fail(claim, self.consumer_id, why))
        except Exception as exc:
            log.exception("error in %s (attempt %d)", claim.key, claim.attempt)
            reason = f"{type(exc).__name__}: {exc}"
            self._write_unwritten(claim, job)
            settled = self._settle(lambda: self.queue.retry(claim, self.consumer_id, reason))
        else:
            unwritten = {**job.unwritten(), **job.usage_fields(self.settings.prices)}
            settled = self._settle_result(claim, unwritten, result, started)
            outcome = "waiting" if isinstance(result, Waiting) else "done"
            paced = not (isinstance(result, Waiting) and result.woken_early)
        still_in_hand = self._release(claim)
        if settled is not None and settled.outcome is Outcome.APPLIED:
            self._add_usage(job)
        if settled is not None and settled.outcome in _CONSUMER_FREED and paced:
            took = time.perf_counter() - started if outcome == "done" else None
            self._note_pace(claim, took)
        if settled is None or settled.outcome is not Outcome.APPLIED:
            outcome = _outcome_name(settled)
        if settled and settled.outcome is Outcome.LOST and job_lost is None:
            log.warning("%s was taken over by another consumer; result discarded", claim.key)
        if settled and settled.outcome is Outcome.GONE and job.outputs:
            self._discard_outputs(claim, job)
        self.metrics.settled(self.queue_name, outcome, time.perf_counter() - started)
        if settled and settled.still_held > still_in_hand:
            self._check_held = True  # something in our list that no thread is working on
        return None

    def _settle_result(
        self, claim: Claim, unwritten: Mapping[str, str], result: Result | Waiting, started: float
    ) -> Settled | None:
        if isinstance(result, Waiting):
            fields = {**unwritten, **result.fields}
            return self._settle(
                lambda: self.queue.wait_for_children(claim, self.consumer_id, fields)
            )
        fields = {
            **unwritten,
            JobField.OUTPUT_FILE_NAME: result.output_file_name,
            JobField.OUTPUT_URL: file_url(self.settings.public_url, result.output_file_name),
            JobField.TOTAL_JOBS: "1",
            JobField.TOTAL_TIME: f"{time.perf_counter() - started:.6f}",
            **result.fields,
        }
        return self._settle(lambda: self.queue.finish(claim, self.consumer_id, fields))

    def _add_usage(self, job: Job) -> None:
        """Add a settled attempt's usage to its owner's running totals (best effort: the job
        hash, written when it settled, stays the exact record)."""
        try:
            self.queue.add_usage(
                job.get(JobField.OWNER),
                job.get(JobField.GROUP),
                job.attempt_usage(self.settings.prices),
            )
        except redis.RedisError as exc:
            log.warning("usage of %s not added to its owner's totals: %s", job.key, exc)

    def _note_pace(self, claim: Claim, seconds: float | None) -> None:
        """Count the settled job toward its queue's measured pace, which the ETAs users see
        come from (best effort, as the usage totals)."""
        try:
            self.queue.note_settled(claim.queue, seconds)
        except redis.RedisError as exc:
            log.warning("%s not counted in the pace of %s: %s", claim.key, claim.queue, exc)

    def _discard_outputs(self, claim: Claim, job: Job) -> None:
        """A job deleted (or expired) while it ran leaves no results behind: its deletion
        removed the files it had, not those written after."""
        try:
            self.consumer.bucket.delete_many(job.outputs)
        except Exception as exc:  # the retention removes them later
            log.warning("could not remove the results of deleted job %s: %s", claim.key, exc)
            return
        log.info("removed %d results of %s, deleted while it ran", len(job.outputs), claim.key)

    def _write_unwritten(self, claim: Claim, job: Job) -> None:
        """Keep the stage times and usage of a job that failed: best effort, since failing
        comes first."""
        unwritten = {**job.unwritten(), **job.usage_fields(self.settings.prices)}
        try:
            self._update(claim, unwritten)
        except (JobLost, redis.RedisError) as exc:
            log.debug("stage times of %s not kept: %s", claim.key, exc)

    def _update(self, claim: Claim, fields: Mapping[str, object]) -> None:
        outcome = self.queue.update(claim, self.consumer_id, fields)
        if outcome is Outcome.GONE:
            raise JobLost("the job was deleted or expired while it ran", Outcome.GONE)
        if outcome is Outcome.LOST:
            raise JobLost("the janitor gave the job to another consumer", Outcome.LOST)

    def _on_stage(self, stage: Stage, seconds: float) -> None:
        self.metrics.stage_timed(self.queue_name, stage.name, seconds)

    def _settle(self, op: Callable[[], Settled], retries: int | None = None) -> Settled | None:
        """Run a settling operation until Redis answers (it is fenced, so retrying is safe)."""
        delay, tries = 0.5, 0
        while True:
            try:
                return op()
            except redis.RedisError as exc:
                tries += 1
                past_deadline = self._deadline is not None and time.monotonic() > self._deadline
                if (retries is not None and tries >= retries) or (past_deadline and tries > 1):
                    return None
                log.warning("Redis unavailable (%s); settling again in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)


def _lower_thread_priority() -> None:
    """Let a finishing job fill idle CPU rather than slow the next job's prediction (on this
    machine's model server, on the local stack) or its post-processing. Linux only: there a
    thread's id takes a nice value of its own."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), FINISHING_NICENESS)
    except (AttributeError, OSError) as exc:  # not Linux, or not allowed: run as is
        log.debug("finishing thread keeps its priority (%s)", exc)


def _result_of(finish: Finish) -> Result:
    result = finish.run()
    if not isinstance(result, Result):  # settling anything else would leave the job held
        raise TypeError(f"a Finish must end in a Result, not {type(result).__name__}")
    return result


_CONSUMER_FREED = frozenset({Outcome.APPLIED, Outcome.RETRYING, Outcome.FAILED})
"""Settles that free a consumer for the next job: what a queue's measured pace counts."""


def _outcome_name(settled: Settled | None) -> str:
    if settled is None:
        return "unsettled"
    return {
        Outcome.APPLIED: "done",
        Outcome.RETRYING: "retried",
        Outcome.FAILED: "failed",
        Outcome.GONE: "cancelled",
        Outcome.LOST: "lost",
    }[settled.outcome]
