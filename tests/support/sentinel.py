"""Redis with Sentinel as real processes on loopback ports: a master, its replicas and the
Sentinels that fail it over (``redis-server --sentinel``, which is what Debian's
``redis-sentinel`` runs), and a failover drill over the queue protocol."""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

from kiosk.jobs import JobRequest, creation_fields
from kiosk.keys import JobField, Status, new_job_key
from kiosk.processes import free_port
from kiosk.queue import JobQueue, Outcome, connect
from tests.support.servers import RedisServer, redis_server_binary, wait_for

MASTER_NAME = "kiosk"
# A replica's first sync starts at once, not after Redis's 5 s wait for more replicas.
FAST_SYNC = ("--repl-diskless-sync-delay", "0")


def replicas_acknowledging(master: RedisServer, replicas: int) -> bool:
    """Whether ``replicas`` replicas acknowledge a write. Right after a sync the master waits
    for a replica's first periodic acknowledgement (up to 1 s) before WAIT counts it."""
    client = master.client()
    try:
        client.set("kiosk:test:replicas", "acknowledging")
        return int(client.execute_command("WAIT", replicas, 5000)) >= replicas
    finally:
        client.close()


class SentinelServer:
    """One Sentinel watching ``master_port`` on 127.0.0.1, with a config file of its own
    (Sentinel rewrites it as it learns the other Sentinels and replicas)."""

    def __init__(
        self,
        directory: Path,
        master_port: int,
        quorum: int,
        down_after_ms: int,
        failover_timeout_ms: int,
    ) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = directory / "sentinel.conf"
        self.config.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    "daemonize no",
                    f"dir {directory}",
                    f"logfile {directory / 'sentinel.log'}",
                    f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} {quorum}",
                    f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}",
                    f"sentinel failover-timeout {MASTER_NAME} {failover_timeout_ms}",
                    f"sentinel parallel-syncs {MASTER_NAME} 1",
                    "",
                ]
            )
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> SentinelServer:
        self.process = subprocess.Popen(
            [redis_server_binary(), str(self.config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.client()
        wait_for(client.ping, 10, what=f"Sentinel on port {self.port}")
        client.close()
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=1, decode_responses=True)

    def master_state(self) -> dict:
        client = self.client()
        try:
            return client.sentinel_master(MASTER_NAME)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(15)


class SentinelCluster:
    """A master, ``replicas`` replicas of it and ``sentinels`` Sentinels (quorum: a majority),
    started together and ready once every Sentinel knows every replica and every other
    Sentinel, so that a failover can start at once."""

    def __init__(
        self,
        directory: Path,
        replicas: int = 2,
        sentinels: int = 3,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 10_000,
    ) -> None:
        self.directory = directory
        self.master = RedisServer(directory / "redis-0", extra_args=FAST_SYNC)
        self.replicas = [
            RedisServer(
                directory / f"redis-{i}",
                extra_args=[*FAST_SYNC, "--replicaof", "127.0.0.1", str(self.master.port)],
            )
            for i in range(1, replicas + 1)
        ]
        self.sentinels = [
            SentinelServer(
                directory / f"sentinel-{i}",
                self.master.port,
                quorum=sentinels // 2 + 1,
                down_after_ms=down_after_ms,
                failover_timeout_ms=failover_timeout_ms,
            )
            for i in range(sentinels)
        ]

    @property
    def url(self) -> str:
        members = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{members}/{MASTER_NAME}/0"

    @property
    def servers(self) -> list[RedisServer]:
        return [self.master, *self.replicas]

    def start(self) -> SentinelCluster:
        try:
            self.master.start()
            for replica in self.replicas:
                replica.start()
            wait_for(self._replicas_in_sync, 20, what="the replicas to sync with the master")
            for sentinel in self.sentinels:
                sentinel.start()
            wait_for(self._sentinels_ready, 30, what="the Sentinels to find each other")
        except BaseException:
            self.stop()
            raise
        return self

    def _replicas_in_sync(self) -> bool:
        return replicas_acknowledging(self.master, len(self.replicas))

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            state = sentinel.master_state()
            if int(state["num-slaves"]) < len(self.replicas):
                return False
            if int(state["num-other-sentinels"]) < len(self.sentinels) - 1:
                return False
        return True

    def master_port(self) -> int:
        """The master's port as the first Sentinel that answers names it."""
        for sentinel in self.sentinels:
            try:
                return int(sentinel.master_state()["port"])
            except redis.RedisError:
                continue
        raise RuntimeError("no Sentinel answers")

    def server_on(self, port: int) -> RedisServer:
        (server,) = [s for s in self.servers if s.port == port]
        return server

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.kill()


# ------------------------------------------------------------------------------ the drill

QUEUE = "failover"
SUBMIT_RETRIES = 3  # as the frontend's: a request that cannot reach Redis soon gets 503
CLAIM_TIMEOUT = 0.5
WORK_SECONDS = 0.002
PROBE_INTERVAL = 0.01


class Tally:
    """Thread-safe counts per job key."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(self._counts)


@dataclass
class FailoverReport:
    """What a drill measured. ``lost``: acknowledged jobs not done at the end;
    ``completed_twice``: jobs whose finish Redis acknowledged more than once (what the fenced
    scripts and WAIT prevent, unless no replica acknowledged the finish in time:
    ``unreplicated_writes``); ``run_twice``: jobs whose work ran more than once (allowed:
    a claim the failover lost is claimed again)."""

    submitted: int
    acknowledged: int
    refused: int
    done: int
    lost: int
    completed_twice: int
    run_twice: int
    refused_but_done: int
    unreplicated_writes: int
    failover_seconds: float
    first_acknowledged_submit_after_kill_seconds: float | None  # of those sent after it
    kill_after_acknowledged: int
    old_master_port: int
    new_master_port: int
    lost_keys: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


class FailoverDrill:
    """``jobs`` submissions from ``submitters`` threads and ``consumers`` consumer threads
    claiming and finishing them through the queue protocol; the master is SIGKILLed once
    ``kill_after`` submissions were acknowledged. Then every acknowledged job must end done,
    each completed once."""

    def __init__(
        self,
        cluster: SentinelCluster,
        jobs: int = 500,
        submitters: int = 2,
        consumers: int = 3,
        kill_after: int = 150,
        min_replicas: int = 1,
        replica_timeout: float = 1.0,
        drain_timeout: float = 40.0,
    ) -> None:
        self.cluster = cluster
        self.jobs = jobs
        self.submitters = submitters
        self.consumers = consumers
        self.kill_after = kill_after
        self.min_replicas = min_replicas
        self.replica_timeout = replica_timeout
        self.drain_timeout = drain_timeout
        self.acknowledged: list[tuple[str, float, float]] = []  # key, sent, acknowledged
        self.refused: list[str] = []
        self.executions = Tally()
        self.completions = Tally()
        self.queues: list[JobQueue] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def queue(self, retries: int = 30, socket_timeout: float = CLAIM_TIMEOUT + 10) -> JobQueue:
        queue = JobQueue(
            connect(self.cluster.url, retries=retries, socket_timeout=socket_timeout),
            finished_ttl=3600,
            min_replicas=self.min_replicas,
            replica_timeout=self.replica_timeout,
        )
        with self._lock:
            self.queues.append(queue)
        return queue

    def run(self) -> FailoverReport:
        old_port = self.cluster.master_port()
        consumers = [
            threading.Thread(target=self._consume, args=(f"c{i}",), daemon=True)
            for i in range(self.consumers)
        ]
        submitters = [
            threading.Thread(target=self._submit, args=(range(i, self.jobs, self.submitters),))
            for i in range(self.submitters)
        ]
        for thread in [*consumers, *submitters]:
            thread.start()
        try:
            wait_for(
                lambda: len(self.acknowledged) >= self.kill_after,
                30,
                interval=0.001,
                what=f"{self.kill_after} acknowledged submissions",
            )
            killed_at = time.monotonic()
            self.cluster.server_on(old_port).kill()  # SIGKILL
            failover = self._first_write_after(killed_at)
            for thread in submitters:
                thread.join(120)
            self._drain()
        finally:
            self._stop.set()
            for thread in consumers:
                thread.join(30)
        return self._report(old_port, killed_at, failover)

    def _submit(self, indices: range) -> None:
        queue = self.queue(retries=SUBMIT_RETRIES, socket_timeout=5.0)
        for i in indices:
            request = JobRequest(QUEUE, f"{i}.tif", f"uploads/{i}.tif")
            key = new_job_key(QUEUE, f"{i}.tif")
            sent = time.monotonic()
            try:
                queue.submit(QUEUE, key, creation_fields(request, "drill"))
            except redis.RedisError:
                with self._lock:
                    self.refused.append(key)
                continue
            with self._lock:
                self.acknowledged.append((key, sent, time.monotonic()))

    def _consume(self, consumer_id: str) -> None:
        """A consumer's loop as the worker runs it: look in its own list after an error or
        when idle (a claim whose reply a failover lost), else claim; work; finish."""
        queue = self.queue()
        look_in_own_list = True
        while not self._stop.is_set():
            try:
                claim = queue.held(QUEUE, consumer_id) if look_in_own_list else None
                look_in_own_list = False
                claim = claim or queue.claim(QUEUE, consumer_id, CLAIM_TIMEOUT)
                if claim is None:
                    look_in_own_list = True
                    continue
                self.executions.add(claim.key)
                time.sleep(WORK_SECONDS)
                settled = queue.finish(claim, consumer_id, {JobField.OUTPUT_URL: "done"})
                if settled.outcome is Outcome.APPLIED:
                    self.completions.add(claim.key)
                look_in_own_list = settled.still_held > 0
            except redis.RedisError:
                look_in_own_list = True
                self._stop.wait(0.2)

    def _first_write_after(self, killed_at: float) -> float:
        """Seconds from the kill to the first write that succeeds (necessarily on the new
        master: the old one is dead), trying every 10 ms without retries."""
        probe = connect(self.cluster.url, retries=0, socket_timeout=0.5)
        try:
            while time.monotonic() - killed_at < 60:
                try:
                    probe.set("kiosk:drill:probe", "written")
                    return time.monotonic() - killed_at
                except redis.RedisError:
                    time.sleep(PROBE_INTERVAL)
            raise TimeoutError("no write succeeded within 60 s of killing the master")
        finally:
            probe.close()

    def _drain(self) -> None:
        keys = [key for key, _, _ in self.acknowledged]
        reader = connect(self.cluster.url)
        try:
            wait_for(
                lambda: self._done(reader, keys) == len(keys),
                self.drain_timeout,
                interval=0.2,
                what="every acknowledged job done",
            )
        except TimeoutError:
            pass  # the report counts what is not done as lost
        finally:
            reader.close()

    @staticmethod
    def _statuses(client: redis.Redis, keys: list[str]) -> list[str | None]:
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(key, JobField.STATUS)
            return pipe.execute()

    def _done(self, client: redis.Redis, keys: list[str]) -> int:
        return sum(status == Status.DONE for status in self._statuses(client, keys))

    def _report(self, old_port: int, killed_at: float, failover: float) -> FailoverReport:
        reader = connect(self.cluster.url)
        try:
            acknowledged = [key for key, _, _ in self.acknowledged]
            statuses = dict(zip(acknowledged, self._statuses(reader, acknowledged), strict=True))
            refused_done = self._done(reader, self.refused) if self.refused else 0
        finally:
            reader.close()
        after_kill = [done - killed_at for _, sent, done in self.acknowledged if sent > killed_at]
        lost = [key for key, status in statuses.items() if status != Status.DONE]
        return FailoverReport(
            submitted=len(self.acknowledged) + len(self.refused),
            acknowledged=len(acknowledged),
            refused=len(self.refused),
            done=len(acknowledged) - len(lost),
            lost=len(lost),
            completed_twice=sum(n > 1 for n in self.completions.counts().values()),
            run_twice=sum(n > 1 for n in self.executions.counts().values()),
            refused_but_done=refused_done,
            unreplicated_writes=sum(queue.unreplicated for queue in self.queues),
            failover_seconds=failover,
            first_acknowledged_submit_after_kill_seconds=min(after_kill) if after_kill else None,
            kill_after_acknowledged=self.kill_after,
            old_master_port=old_port,
            new_master_port=self.cluster.master_port(),
            lost_keys=lost[:20],
        )
