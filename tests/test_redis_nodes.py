"""The chart's Redis with Sentinel, run for real: helm/kiosk/files/redis-node.sh starts three
nodes (a Redis and a Sentinel each) on 127.0.0.1-3 with the environment the chart renders for
its pods, as Kubernetes would start them one after another. Then the handover a rolling
update runs, the loss of the master's pod, and that pod coming back."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from kiosk.jobs import JobRequest, creation_fields
from kiosk.keys import new_job_key
from kiosk.processes import free_port
from kiosk.queue import JobQueue, connect
from tests.support.servers import wait_for
from tests.test_chart import CHART, RELEASE, render, values_for

SCRIPT = CHART / "files" / "redis-node.sh"
NODES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")


def chart_env() -> dict[str, str]:
    """The environment the chart gives the redis container of its Sentinel StatefulSet."""
    chart = render(values_for("default", redis={"sentinel": {"enabled": True}}))
    statefulset = chart.get("StatefulSet", f"{RELEASE}-redis")
    (container,) = [
        c for c in statefulset["spec"]["template"]["spec"]["containers"] if c["name"] == "redis"
    ]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


class Node:
    """One pod's worth: its Redis and its Sentinel, started by the chart's script."""

    def __init__(self, address: str, env: dict[str, str], directory: Path) -> None:
        self.address = address
        data, config = directory / "data", directory / "config"
        data.mkdir(parents=True)
        config.mkdir()
        self.env = {
            **os.environ,
            **env,
            "SELF": address,
            "BIND": address,
            "DATA_DIR": str(data),
            "CONFIG_DIR": str(config),
        }
        self.log = directory / "node.log"
        self.processes: list[subprocess.Popen] = []

    def run(self, role: str) -> subprocess.Popen:
        with self.log.open("a") as log:
            return subprocess.Popen(["sh", str(SCRIPT), role], env=self.env, stderr=log, stdout=log)

    def start(self) -> Node:
        self.processes = [self.run("redis")]
        wait_for(lambda: self.redis().ping(), 20, what=f"Redis on {self.address}")
        self.processes.append(self.run("sentinel"))
        wait_for(lambda: self.sentinel().ping(), 20, what=f"the Sentinel on {self.address}")
        return self

    def redis(self) -> redis.Redis:
        port = int(self.env["REDIS_PORT"])
        return redis.Redis(self.address, port, socket_timeout=2, decode_responses=True)

    def sentinel(self) -> redis.Redis:
        port = int(self.env["SENTINEL_PORT"])
        return redis.Redis(self.address, port, socket_timeout=2, decode_responses=True)

    def role(self) -> str:
        return str(self.redis().execute_command("ROLE")[0])

    def named_master(self) -> str:
        return str(self.sentinel().sentinel_get_master_addr_by_name(self.env["MASTER_NAME"])[0])

    def handover(self, **env: str) -> str:
        """Run the preStop handover; what it logged."""
        done = subprocess.run(
            ["sh", str(SCRIPT), "handover"],
            env=self.env | env,
            check=True,
            timeout=60,
            capture_output=True,
            text=True,
        )
        with self.log.open("a") as log:
            log.write(done.stderr)
        return done.stderr

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(10)


@contextmanager
def start_nodes(addresses: tuple[str, ...], directory: Path) -> Iterator[list[Node]]:
    env = chart_env()
    env |= {
        "NODES": " ".join(addresses),
        "REDIS_PORT": str(free_port()),
        "SENTINEL_PORT": str(free_port()),
        "DOWN_AFTER_MS": "1000",  # the chart's 5000, shortened for the test
    }
    started: list[Node] = []
    try:
        for i, address in enumerate(addresses):
            started.append(Node(address, env, directory / f"node-{i}").start())
        yield started
    finally:
        for node in started:
            node.kill()
        for node in started:
            print(f"----- {node.address} -----\n{node.log.read_text()[-12000:]}")


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[Node]]:
    with start_nodes(NODES, tmp_path) as started:
        yield started


@pytest.fixture
def lone_node(tmp_path: Path) -> Iterator[Node]:
    with start_nodes(NODES[:1], tmp_path) as (node,):
        yield node


def settled(nodes: list[Node], master: Node) -> bool:
    """Every live Sentinel names ``master``, knows the other two Sentinels and both
    replicas, and the master streams to both."""
    live = [n for n in nodes if n.processes and n.processes[0].poll() is None]
    for node in live:
        state = node.sentinel().sentinel_master(node.env["MASTER_NAME"])
        if state["ip"] != master.address or int(state["num-slaves"]) < 2:
            return False
        if int(state["num-other-sentinels"]) < 2:
            return False
    replicas = master.redis().info("replication")["connected_slaves"]
    return master.role() == "master" and int(replicas) == len(live) - 1


def master_of(nodes: list[Node]) -> Node:
    (master,) = [n for n in nodes if n.processes[0].poll() is None and n.role() == "master"]
    return master


def submit(queue: JobQueue, name: str) -> str:
    request = JobRequest("echo", name, f"uploads/{name}")
    return queue.submit("echo", new_job_key("echo", name), creation_fields(request, "test"))


@pytest.mark.slow
def test_the_charts_redis_nodes_fail_over_hand_over_and_rejoin(nodes: list[Node]) -> None:
    first = nodes[0]
    wait_for(lambda: settled(nodes, first), 30, what="node 0 the master of all three")
    sentinels = ",".join(f"{n.address}:{n.env['SENTINEL_PORT']}" for n in nodes)
    url = f"redis+sentinel://{sentinels}/{first.env['MASTER_NAME']}/0"
    queue = JobQueue(connect(url, socket_timeout=5), min_replicas=1, replica_timeout=2)
    keys = [submit(queue, "before.tif")]

    # A rolling update stops the master's pod: its preStop hands the role over first.
    first.handover()
    assert first.role() == "slave"
    second = master_of(nodes)
    assert second is not first
    keys.append(submit(queue, "after-handover.tif"))

    # The master's pod is lost: the other two Sentinels promote the remaining replica.
    second.kill()
    wait_for(
        lambda: master_of(nodes) not in (second,) and master_of(nodes).role() == "master",
        30,
        what="a replica promoted",
    )
    third = master_of(nodes)
    keys.append(submit(queue, "after-failover.tif"))

    # The lost pod comes back: as a replica of the new master, with every job.
    second.start()
    wait_for(lambda: settled(nodes, third), 30, what="the lost node back as a replica")
    assert second.role() == "slave"
    wait_for(
        lambda: all(second.redis().exists(key) for key in keys), 10, what="the jobs replicated"
    )
    assert queue.waiting("echo") == keys
    assert queue.unreplicated == 0


@pytest.mark.slow
def test_a_handover_with_no_replica_says_the_sentinel_refused_and_stays_master(
    lone_node: Node,
) -> None:
    logged = lone_node.handover(HANDOVER_WAIT="3")
    assert "would not fail over yet (NOGOODSLAVE" in logged
    assert "no failover finished within 3s; stopping as master" in logged
    assert lone_node.role() == "master"
