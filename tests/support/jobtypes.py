"""Job types the tests register through KIOSK_JOB_TYPE_PLUGINS; none ships in the product.

Each records a completed piece of work in the Redis hash ``test:completions`` (job key ->
count), so tests can tell how many times the work of a job was really done.
"""

from __future__ import annotations

import os
import time
from typing import ClassVar, cast

from pydantic import Field

from consumers.base import Consumer, Finish, Job, JobError, Result
from kiosk.jobs import Stages
from kiosk.queue import connect
from kiosk.settings import JobTypeSettings

COMPLETIONS = "test:completions"
EVENTS = "test:events"


class Echo(Consumer):
    """Returns its input unchanged as its result."""

    def setup(self) -> None:
        self._redis = connect(self.settings.redis_url)  # redis+sentinel:// too

    def work(self, job: Job) -> None:
        """Subclasses add their behaviour here."""

    def process(self, job: Job) -> Result:
        with job.input_file() as path:
            if b"CORRUPT" in path.read_bytes()[:64]:
                raise JobError(f"{job.get('original_name')} is corrupt: export it again")
            with job.stage(Stages.PREDICT):
                self.work(job)
            key = job.upload_output(path, "result" + path.suffix)
        self._redis.hincrby(COMPLETIONS, job.key, 1)
        return Result(key)


class Slow(Echo):
    """Takes TEST_SLOW_SECONDS (default 3) in small steps, reporting progress."""

    def work(self, job: Job) -> None:
        seconds = float(os.environ.get("TEST_SLOW_SECONDS", "3"))
        steps = 10
        for step in range(steps):
            time.sleep(seconds / steps)
            job.set_progress(int(100 * (step + 1) / steps))


class Fails(Echo):
    """Always raises: the worker retries it, then fails it."""

    def work(self, job: Job) -> None:
        raise RuntimeError("simulated failure: this job type always fails")


class FinishesBehind(Echo):
    """Leaves its upload to a :class:`Finish` that takes TEST_FINISH_SECONDS (default 1), and
    logs what it does in ``test:events`` (``process <key>``, ``finish <key>``, ``finished
    <key>``). A job whose input holds ``FINISH-FAILS`` fails in its finish; ``FINISH-CRASHES``
    raises a plain error there (retried)."""

    def process(self, job: Job) -> Finish:
        self._redis.rpush(EVENTS, f"process {job.key}")
        with job.input_file() as path:
            data = path.read_bytes()
        return Finish(lambda: self._finish(job, data))

    def _finish(self, job: Job, data: bytes) -> Result:
        self._redis.rpush(EVENTS, f"finish {job.key}")
        time.sleep(float(os.environ.get("TEST_FINISH_SECONDS", "1")))
        if b"FINISH-FAILS" in data:
            raise JobError("the finish found the result unusable: submit it again")
        if b"FINISH-CRASHES" in data:
            raise RuntimeError("simulated crash while finishing")
        key = job.put_output("result.bin", data)
        self._redis.hincrby(COMPLETIONS, job.key, 1)
        self._redis.rpush(EVENTS, f"finished {job.key}")
        return Result(key)


class TaggedSettings(JobTypeSettings):
    """A plugin job type's own settings, read from KIOSK_* like the built-in ones."""

    service_name: ClassVar[str] = "tagged"

    tag: str = Field("untagged", description="Text the tagged job type writes into its results.")


class Tagged(Echo):
    """Echoes its input with its ``tag`` setting in front."""

    settings_class = TaggedSettings

    def process(self, job: Job) -> Result:
        with job.input_file() as path:
            data = path.read_bytes()
        tag = cast(TaggedSettings, self.job_settings).tag
        return Result(job.put_output("tagged.bin", tag.encode() + data))


PLUGINS = ",".join(
    f"{name}=tests.support.jobtypes:{cls.__name__}"
    for name, cls in {
        "echo": Echo,
        "slow": Slow,
        "fails": Fails,
        "behind": FinishesBehind,
    }.items()
)
QUEUES = "echo,slow,fails,behind"
