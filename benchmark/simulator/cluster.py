"""Nodes and pods: what Kubernetes, the cluster autoscaler and GCE do to the policy's numbers.

* A Deployment keeps ``replicas`` pods. A new pod waits (Pending) for a free slot on a ready
  node, then starts (``start_delay``, ~30 s) and runs.
* The cluster autoscaler scans every 10 s: Pending pods that no starting node will take get
  new nodes (GPU node 2-4 min, CPU node 1-2 min, drawn from a seeded RNG); a node that has been
  empty for 10 min is removed (the GKE cluster autoscaler's default). Pods are packed onto the
  fullest node with room, and scale-down takes pods from the emptiest nodes first, so shrinking
  frees whole nodes.
* Scale-down never kills a busy consumer: idle consumers stop at once, busy ones finish their
  job first (the rewrite's SIGTERM handling). A model server being scaled down drains: it takes
  no new requests and finishes its queue. Pending and starting pods go first.
* A preemptible node is preempted after an exponential time (and at 24 h at the latest): its
  pods die, their work is handed back (see ``work``), and the Deployment recreates them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from benchmark.simulator.events import Event, EventLoop
from benchmark.simulator.work import ConsumerPool, GpuRouter, GpuServer, Retirer


class Node:
    """One VM. Billed from ``created`` (when the autoscaler asked for it) to ``removed``."""

    __slots__ = (
        "capacity",
        "created",
        "empty_since",
        "ending",
        "index",
        "name",
        "pods",
        "ready",
        "removed",
    )

    def __init__(self, name: str, created: float, capacity: int, index: int = 0) -> None:
        self.name = name
        self.index = index  # n-th node of its pool: what ties a GPU's speed to its node
        self.created = created
        self.capacity = capacity
        self.ready = False
        self.removed: float | None = None
        self.pods: list[Pod] = []
        self.empty_since: float | None = None
        self.ending: Event | None = None

    @property
    def free(self) -> int:
        return self.capacity - len(self.pods)


class Pod:
    """pending -> starting -> running -> (retiring | draining) -> gone."""

    __slots__ = ("app", "node", "state", "timer", "worker")

    def __init__(self, app: Deployment) -> None:
        self.app = app
        self.node: Node | None = None
        self.state = "pending"
        self.timer: Event | None = None
        self.worker: GpuServer | None = None


class NodePool:
    """One node pool and the cluster autoscaler's view of it."""

    def __init__(
        self,
        loop: EventLoop,
        rng: random.Random,
        name: str,
        *,
        capacity: int,
        start: tuple[float, float],
        hourly_price: float,
        preemptible: bool,
        preemptions_per_hour: float,
        max_life: float,
        unneeded_after: float,
    ) -> None:
        self.loop = loop
        self.rng = rng
        self.name = name
        self.capacity = capacity
        self.start = start
        self.hourly_price = hourly_price
        self.preemptible = preemptible
        self.preemptions_per_hour = preemptions_per_hour
        self.max_life = max_life
        self.unneeded_after = unneeded_after
        self.nodes: list[Node] = []  # starting or ready
        self.gone: list[Node] = []
        self.pending: list[Pod] = []
        self.preemptions = 0
        self._count = 0

    # ---- pods
    def request(self, pod: Pod) -> None:
        self.pending.append(pod)
        self._place()

    def release(self, pod: Pod) -> None:
        if pod.node is None:
            if pod in self.pending:
                self.pending.remove(pod)
            return
        node = pod.node
        node.pods.remove(pod)
        pod.node = None
        if not node.pods:
            node.empty_since = self.loop.now

    def _place(self) -> None:
        while self.pending:
            room = [n for n in self.nodes if n.ready and n.free > 0]
            if not room:
                return
            node = max(room, key=lambda n: len(n.pods))  # pack: fill the fullest first
            while self.pending and node.free > 0:
                pod = self.pending.pop(0)
                node.pods.append(pod)
                node.empty_since = None
                pod.node = node
                pod.app.placed(pod)

    # ---- the cluster autoscaler
    def scan(self) -> None:
        starting_room = sum(n.free for n in self.nodes if not n.ready)
        short = len(self.pending) - starting_room
        for _ in range(math.ceil(short / self.capacity) if short > 0 else 0):
            self._add_node()
        now = self.loop.now
        for node in list(self.nodes):
            if (
                node.ready
                and not node.pods
                and node.empty_since is not None
                and now - node.empty_since >= self.unneeded_after
            ):
                self._remove(node)

    def _add_node(self) -> None:
        self._count += 1
        node = Node(f"{self.name}-{self._count}", self.loop.now, self.capacity, self._count)
        self.nodes.append(node)
        self.loop.after(self.rng.uniform(*self.start), self._ready, node)
        if self.preemptible:
            life = self.max_life
            if self.preemptions_per_hour > 0:
                life = min(life, self.rng.expovariate(self.preemptions_per_hour / 3600))
            node.ending = self.loop.after(life, self._preempt, node)

    def _ready(self, node: Node) -> None:
        if node.removed is not None:
            return
        node.ready = True
        node.empty_since = self.loop.now
        self._place()

    def _remove(self, node: Node) -> None:
        node.removed = self.loop.now
        self.nodes.remove(node)
        self.gone.append(node)
        if node.ending is not None:
            node.ending.cancel()

    def _preempt(self, node: Node) -> None:
        if node.removed is not None:
            return
        self.preemptions += 1
        node.ending = None
        pods, node.pods = node.pods, []
        self._remove(node)
        for pod in pods:
            pod.node = None
            pod.app.lost(pod)

    # ---- accounting
    def node_seconds(self, until: float) -> float:
        return sum(
            (n.removed if n.removed is not None else until) - n.created
            for n in (*self.nodes, *self.gone)
        )

    @property
    def live(self) -> int:
        return len(self.nodes)

    @property
    def ready_nodes(self) -> int:
        return sum(1 for n in self.nodes if n.ready)


class Deployment:
    """A ReplicaSet: keeps ``replicas`` pods that are not on their way out."""

    def __init__(self, loop: EventLoop, pool: NodePool, name: str, start_delay: float) -> None:
        self.loop = loop
        self.pool = pool
        self.name = name
        self.start_delay = start_delay
        self.replicas = 0
        self.waiting: list[Pod] = []  # pending or starting
        self.running: list[Pod] = []
        self.leaving: list[Pod] = []  # retiring or draining

    @property
    def active(self) -> int:
        return len(self.waiting) + len(self.running)

    @property
    def ready(self) -> int:
        return len(self.running)

    def scale(self, replicas: int) -> None:
        self.replicas = max(0, replicas)
        diff = self.replicas - self.active
        for _ in range(diff):
            self._new_pod()
        if diff < 0:
            self._shrink(-diff)

    def _new_pod(self) -> None:
        pod = Pod(self)
        self.waiting.append(pod)
        self.pool.request(pod)

    def _shrink(self, k: int) -> None:
        # Pods not yet running go first: unscheduled ones, then the newest starting ones.
        for pod in sorted(reversed(self.waiting), key=lambda p: p.state != "pending"):
            if k == 0:
                return
            if pod.timer is not None:
                pod.timer.cancel()
            self.waiting.remove(pod)
            self._gone(pod)
            k -= 1
        if k > 0:
            self._shrink_running(k)

    def _emptiest_first(self) -> list[Pod]:
        return sorted(self.running, key=lambda p: len(p.node.pods) if p.node else 0)

    def placed(self, pod: Pod) -> None:
        pod.state = "starting"
        pod.timer = self.loop.after(self.start_delay, self._started, pod)

    def _started(self, pod: Pod) -> None:
        pod.timer = None
        pod.state = "running"
        self.waiting.remove(pod)
        self.running.append(pod)
        self.on_running(pod)

    def _gone(self, pod: Pod) -> None:
        pod.state = "gone"
        self.pool.release(pod)

    def lost(self, pod: Pod) -> None:
        """The pod's node was preempted."""
        state = pod.state
        if pod.timer is not None:
            pod.timer.cancel()
            pod.timer = None
        if pod in self.waiting:
            self.waiting.remove(pod)
        elif pod in self.running:
            self.running.remove(pod)
        elif pod in self.leaving:
            self.leaving.remove(pod)
        pod.state = "gone"
        if state in ("running", "retiring", "draining"):
            self.on_lost(pod, state)
        if state not in ("retiring", "draining") and self.active < self.replicas:
            self._new_pod()

    # ---- what the work does with pods (subclasses)
    def on_running(self, pod: Pod) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def on_lost(self, pod: Pod, state: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _shrink_running(self, k: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class ConsumerDeployment(Deployment, Retirer):
    """Consumers of one queue; which pod holds which job is not tracked, only how many do."""

    def __init__(
        self, loop: EventLoop, pool: NodePool, name: str, start_delay: float, work: ConsumerPool
    ) -> None:
        super().__init__(loop, pool, name, start_delay)
        self.work = work
        work.retirer = self

    def on_running(self, pod: Pod) -> None:
        self.work.add_consumer()

    def _shrink_running(self, k: int) -> None:
        candidates = self._emptiest_first()
        idle = self.work.remove_idle(k)
        for pod in candidates[:idle]:
            self.running.remove(pod)
            self._gone(pod)
        for pod in candidates[idle:k]:
            self.running.remove(pod)
            pod.state = "retiring"
            self.leaving.append(pod)
            self.work.retire()

    def retired_one(self) -> None:
        pod = self.leaving.pop()
        self._gone(pod)

    def on_lost(self, pod: Pod, state: str) -> None:
        self.work.lose_consumer(retiring=state == "retiring")


class ModelServerDeployment(Deployment):
    """Model servers, one per GPU node; a server runs at its node's GPU speed (the n-th GPU
    node of a run has the same speed whatever the policy, so policies meet the same GPUs)."""

    def __init__(
        self,
        loop: EventLoop,
        pool: NodePool,
        name: str,
        start_delay: float,
        router: GpuRouter,
        speed: Callable[[int], float],
        batch_max: int,
    ) -> None:
        super().__init__(loop, pool, name, start_delay)
        self.router = router
        self.speed = speed
        self.batch_max = batch_max
        self.servers: list[GpuServer] = []  # every server that ever ran, for utilisation

    def on_running(self, pod: Pod) -> None:
        index = pod.node.index if pod.node is not None else 0
        server = GpuServer(self.loop, self.speed(index), self.batch_max, self.router)
        pod.worker = server
        self.servers.append(server)
        self.router.add(server)

    def _shrink_running(self, k: int) -> None:
        for pod in sorted(self.running, key=lambda p: p.worker.load() if p.worker else 0)[:k]:
            self.running.remove(pod)
            pod.state = "draining"
            self.leaving.append(pod)
            server = pod.worker
            assert server is not None
            self.router.withdraw(server)
            server.drain(lambda pod=pod: self._drained(pod))

    def _drained(self, pod: Pod) -> None:
        if pod in self.leaving:
            self.leaving.remove(pod)
            self._gone(pod)

    def on_lost(self, pod: Pod, state: str) -> None:
        if pod.worker is not None:
            self.router.lost(pod.worker)

    def ready_servers(self) -> list[GpuServer]:
        return [p.worker for p in self.running if p.worker is not None]
