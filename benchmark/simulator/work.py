"""The work itself: consumers taking jobs, model servers inferring them.

Exact per-image events would make a 10^6-image run take minutes, so work moves in *groups*:
consumers that took their jobs at the same moment go through pre-processing together (one
event), queue at one model server together, and come out of it as the TF Serving batch they
were inferred in (one event per batch), then post-process together (one event). A 10^6-image
run is then about three events per GPU batch (about 10^5), yet every consumer still holds
exactly one image at a time and every GPU serves its queue in order.

GPU model: first come, first served per model server, with TF Serving's batching (max batch
32, timeout 0): a free GPU takes everything queued, up to 32 images, and needs
``images / speed`` seconds for the batch. Consumers send each request to the model server
with the least queued work (seconds), among those that are ready and not draining.

A consumer pod that dies (preemption) loses its job to the janitor, which puts it back on
the queue ``requeue_delay`` seconds later; a request whose model server dies is retried on
another after ``retry`` seconds, the consumer keeping its job.

Waiting work sits in ``lines.WaitingLines`` (first come first served, or fair share between
users), and every group knows whose images it holds (its *parts*), so each submission's start
and end are recorded.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

from benchmark.simulator.events import Event, EventLoop
from benchmark.simulator.lines import Part, WaitingLines
from benchmark.simulator.model import StageTimes
from benchmark.simulator.workload import Submission


class Group:
    """``size`` consumers in step, each holding one job (a zip group holds one zip); ``parts``
    says whose: [submission, jobs] pairs adding up to ``size``."""

    __slots__ = ("parts", "server", "size", "stage")

    def __init__(self, size: int, stage: str, parts: list[Part] | None = None) -> None:
        self.size = size
        self.stage = stage  # pre | gpu_wait | gpu_busy | no_gpu | retry | post | fanout
        self.server: GpuServer | None = None
        self.parts: list[Part] = parts if parts is not None else []

    def split(self, n: int) -> Group:
        """The first ``n`` jobs leave as a group of their own."""
        moved: list[Part] = []
        left = n
        while left > 0:
            head = self.parts[0]
            if head[1] <= left:
                moved.append(self.parts.pop(0))
                left -= head[1]
            else:
                head[1] -= left
                moved.append([head[0], left])
                left = 0
        self.size -= n
        return Group(n, self.stage, moved)

    def drop_one(self) -> Submission:
        """One member's job is lost (its pod died); whose it was. The last part's, the
        latest claimed: which member dies decides no count, only (rarely) which submission
        waits for the janitor."""
        last = self.parts[-1]
        last[1] -= 1
        if last[1] == 0:
            self.parts.pop()
        self.size -= 1
        return last[0]


class Retirer:
    """What a pool calls when a consumer asked to stop has finished its job."""

    def retired_one(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


# ------------------------------------------------------------------------------ consumers


class ConsumerPool:
    """Running consumers of one queue: idle ones, busy ones (in groups), and busy ones asked
    to stop after their current job (``retire_pending``, the graceful scale-down)."""

    def __init__(
        self,
        loop: EventLoop,
        rng: random.Random,
        stages: StageTimes,
        requeue_delay: float,
        order: str = "fair",
    ) -> None:
        self.loop = loop
        self.rng = rng
        self.stages = stages
        self.requeue_delay = requeue_delay
        self.idle = 0
        self.busy = 0
        self.retire_pending = 0
        self.lines = WaitingLines(order)
        self.requeueing = 0  # jobs of dead consumers the janitor has not put back yet
        self.requeued = 0  # jobs put back, over the run
        self.groups: dict[Group, None] = {}  # insertion-ordered: runs repeat exactly
        self.retirer: Retirer | None = None

    # ---- what the deployment does to the pool
    def add_consumer(self) -> None:
        self.idle += 1
        self.dispatch()

    def remove_idle(self, n: int) -> int:
        """Stop up to ``n`` idle consumers now; returns how many."""
        k = min(n, self.idle)
        self.idle -= k
        return k

    def retire(self) -> None:
        """A busy consumer will stop after its current job."""
        self.retire_pending += 1

    def lose_consumer(self, retiring: bool) -> None:
        """A running consumer's pod died: if it held a job, the job goes back to the queue."""
        if retiring:
            self.retire_pending -= 1
            self._lose_busy_member()
            return
        busy_free = self.busy - self.retire_pending
        total = self.idle + busy_free
        if total <= 0:
            return
        if self.rng.random() * total < busy_free:
            self._lose_busy_member()
        else:
            self.idle -= 1

    # ---- queue state
    def queued(self) -> int:
        return len(self.lines)

    def in_flight(self) -> int:
        return self.busy + self.requeueing

    # ---- internals
    def jitter(self) -> float:
        j = self.stages.jitter
        return self.rng.uniform(1 - j, 1 + j) if j else 1.0

    def dispatch(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _finish(self, n: int) -> None:
        """``n`` consumers finished their jobs: retire those asked to stop, free the rest."""
        self.busy -= n
        r = min(self.retire_pending, n)
        self.retire_pending -= r
        self.idle += n - r
        for _ in range(r):
            if self.retirer is not None:
                self.retirer.retired_one()
        self.dispatch()

    def _pick_group(self) -> Group:
        target = self.rng.random() * self.busy
        last = None
        for group in self.groups:
            last = group
            target -= group.size
            if target < 0:
                return group
        assert last is not None, "busy consumers but no groups"
        return last

    def _lose_busy_member(self) -> None:
        group = self._pick_group()
        sub = group.drop_one()
        self.busy -= 1
        if group.stage == "gpu_wait" and group.server is not None:
            group.server.queued -= 1
        if group.size == 0:
            self.groups.pop(group, None)
        self.requeueing += 1
        self.loop.after(self.requeue_delay, self._requeued, sub)

    def _requeued(self, sub: Submission) -> None:
        """The janitor puts a dead consumer's job back, at the front of its owner's line."""
        self.requeueing -= 1
        self.requeued += 1
        self.lines.push(sub, 1, front=True)
        self.dispatch()

    def _take(self, n: int) -> list[Part]:
        parts = self.lines.take(n)
        now = self.loop.now
        for sub, _ in parts:
            sub.started(now)
        return parts


class SegmentationPool(ConsumerPool):
    """Consumers of the image queue: pre-process, a model server, post-process."""

    def __init__(
        self,
        loop: EventLoop,
        rng: random.Random,
        stages: StageTimes,
        requeue_delay: float,
        router: GpuRouter,
        on_done: Callable[[int], None],
        order: str = "fair",
    ) -> None:
        super().__init__(loop, rng, stages, requeue_delay, order)
        self.router = router
        router.pool = self
        self.on_done = on_done
        self.done = 0

    def push(self, sub: Submission, images: int = 1) -> None:
        """``images`` of ``sub`` join the image queue (a single image, or a zip fanned out)."""
        self.lines.push(sub, images)
        self.dispatch()

    def dispatch(self) -> None:
        k = min(self.idle, len(self.lines))
        if k <= 0:
            return
        self.idle -= k
        self.busy += k
        group = Group(k, "pre", self._take(k))
        self.groups[group] = None
        self.loop.after(self.stages.preprocess * self.jitter(), self._pre_done, group)

    def _pre_done(self, group: Group) -> None:
        if group.size > 0:
            self.router.submit(group)

    def regroup(self, consumed: list[Group], batch: Group) -> None:
        """A model server merged ``consumed`` (whole groups) and parts of others into one batch."""
        for group in consumed:
            self.groups.pop(group, None)
            group.size = 0
        self.groups[batch] = None

    def gpu_done(self, group: Group) -> None:
        if group.size <= 0:
            self.groups.pop(group, None)
            return
        group.stage = "post"
        group.server = None
        self.loop.after(self.stages.postprocess * self.jitter(), self._post_done, group)

    def _post_done(self, group: Group) -> None:
        n = group.size
        if n <= 0:
            return
        self.groups.pop(group, None)
        group.size = 0
        now = self.loop.now
        for sub, images in group.parts:
            sub.completed(images, now)
        self.done += n
        self.on_done(n)
        self._finish(n)


class ZipPool(ConsumerPool):
    """Consumers of the zip queue: each takes one zip, fans its images out onto the image
    queue and takes the next; the parent then waits without a consumer."""

    def __init__(
        self,
        loop: EventLoop,
        rng: random.Random,
        stages: StageTimes,
        requeue_delay: float,
        fan_out: Callable[[Submission], None],
        order: str = "fair",
    ) -> None:
        super().__init__(loop, rng, stages, requeue_delay, order)
        self.fan_out = fan_out
        self.images_waiting = 0

    def queued_images(self) -> int:
        return self.images_waiting

    def push(self, sub: Submission) -> None:
        self.lines.push(sub)
        self.images_waiting += sub.images
        self.dispatch()

    def _requeued(self, sub: Submission) -> None:
        self.images_waiting += sub.images
        super()._requeued(sub)

    def dispatch(self) -> None:
        while self.idle > 0 and len(self.lines):
            parts = self._take(1)
            sub = parts[0][0]
            self.images_waiting -= sub.images
            self.idle -= 1
            self.busy += 1
            group = Group(1, "fanout", parts)
            self.groups[group] = None
            seconds = self.stages.fanout_per_image * sub.images * self.jitter()
            self.loop.after(seconds, self._fanned_out, group)

    def _fanned_out(self, group: Group) -> None:
        if group.size <= 0:
            return
        self.groups.pop(group, None)
        group.size = 0
        self.fan_out(group.parts[0][0])
        self._finish(1)


# ------------------------------------------------------------------------------ model servers


class GpuServer:
    """One model server on one GPU: a FIFO of groups served in TF Serving batches."""

    def __init__(self, loop: EventLoop, speed: float, batch_max: int, router: GpuRouter) -> None:
        self.loop = loop
        self.speed = speed
        self.batch_max = batch_max
        self.router = router
        self.queue: deque[Group] = deque()
        self.queued = 0
        self.batch: Group | None = None
        self._batch_event: Event | None = None
        self._batch_started = 0.0
        self._busy_closed = 0.0
        self.ready_at = loop.now
        self.images = 0
        self.accepting = True
        self._on_drained: Callable[[], None] | None = None

    def load(self) -> float:
        """Seconds of work queued or running here."""
        running = self.batch.size if self.batch is not None else 0
        return (self.queued + running) / self.speed

    def busy_seconds(self, now: float) -> float:
        partial = now - self._batch_started if self.batch is not None else 0.0
        return self._busy_closed + partial

    def enqueue(self, group: Group) -> None:
        group.stage = "gpu_wait"
        group.server = self
        self.queue.append(group)
        self.queued += group.size
        if self.batch is None:
            self._start()

    def _start(self) -> None:
        room = self.batch_max
        consumed: list[Group] = []
        taken = 0
        while self.queue and room > 0:
            head = self.queue[0]
            if head.size <= 0:
                self.queue.popleft()
                continue
            if head.size <= room:
                self.queue.popleft()
                consumed.append(head)
                taken += head.size
                room -= head.size
            else:
                consumed.append(head.split(room))  # the rest stays queued
                taken += room
                room = 0
        if taken == 0:
            self.batch = None
            self.queued = 0
            if not self.accepting and self._on_drained is not None:
                done, self._on_drained = self._on_drained, None
                done()
            return
        self.queued -= taken
        batch = Group(taken, "gpu_busy", [part for group in consumed for part in group.parts])
        batch.server = self
        self.router.pool.regroup(consumed, batch)
        self.batch = batch
        self._batch_started = self.loop.now
        self._batch_event = self.loop.after(taken / self.speed, self._complete)

    def _complete(self) -> None:
        batch = self.batch
        assert batch is not None
        self._busy_closed += self.loop.now - self._batch_started
        self.images += batch.size
        self.batch = None
        self._batch_event = None
        self.router.pool.gpu_done(batch)
        self._start()

    def drain(self, on_drained: Callable[[], None]) -> None:
        """Take no new requests, finish the queued ones, then call ``on_drained``."""
        self.accepting = False
        if self.batch is None and self.queued <= 0:
            on_drained()
        else:
            self._on_drained = on_drained

    def kill(self) -> list[Group]:
        """The node went away: everything queued or running here comes back to the caller."""
        self.accepting = False
        self._on_drained = None
        groups = [g for g in self.queue if g.size > 0]
        if self.batch is not None:
            self._busy_closed += self.loop.now - self._batch_started
            if self._batch_event is not None:
                self._batch_event.cancel()
            groups.insert(0, self.batch)
        self.queue.clear()
        self.queued = 0
        self.batch = None
        self._batch_event = None
        return groups


class GpuRouter:
    """Sends each group of requests to the least-loaded ready model server; holds them while
    there is none (consumers retrying UNAVAILABLE)."""

    def __init__(self, loop: EventLoop, retry: float) -> None:
        self.loop = loop
        self.retry = retry
        self.servers: list[GpuServer] = []
        self.waiting: deque[Group] = deque()
        self.pool: SegmentationPool  # set by the pool

    def submit(self, group: Group) -> None:
        if group.size <= 0:
            return
        if not self.servers:
            group.stage = "no_gpu"
            group.server = None
            self.waiting.append(group)
            return
        if len(self.servers) == 1 or group.size == 1:
            min(self.servers, key=GpuServer.load).enqueue(group)
            return
        # Each request goes to the least-loaded server: fill the emptiest up to the next one's
        # level (in seconds of work) until the group is placed, one sub-group per server.
        servers = sorted(self.servers, key=GpuServer.load)
        shares = [0] * len(servers)
        left = group.size
        loads = [s.load() for s in servers]
        while left > 0:
            i = min(range(len(servers)), key=lambda k: loads[k] + 1 / servers[k].speed)
            take = 1
            if len(servers) > 1:
                # how many fit before another server becomes the least loaded
                others = min(loads[k] + 1 / servers[k].speed for k in range(len(servers)) if k != i)
                take = max(1, min(left, int((others - loads[i]) * servers[i].speed)))
            shares[i] += take
            loads[i] += take / servers[i].speed
            left -= take
        parts = [(s, n) for s, n in zip(servers, shares, strict=True) if n > 0]
        for server, n in parts[1:]:
            part = group.split(n)
            self.pool.groups[part] = None
            server.enqueue(part)
        parts[0][0].enqueue(group)

    def add(self, server: GpuServer) -> None:
        self.servers.append(server)
        waiting, self.waiting = self.waiting, deque()
        for group in waiting:
            self.submit(group)

    def withdraw(self, server: GpuServer) -> None:
        """A draining server gets no new requests."""
        if server in self.servers:
            self.servers.remove(server)

    def lost(self, server: GpuServer) -> None:
        self.withdraw(server)
        for group in server.kill():
            group.stage = "retry"
            group.server = None
            self.loop.after(self.retry, self.submit, group)
