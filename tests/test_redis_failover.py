"""Redis behind Sentinel, failed over for real: a master, replicas and Sentinels as processes
on loopback ports; the master is SIGKILLed under load. Every job whose submission was
acknowledged must end done, completed once; clients must follow the Sentinels to the new
master without waiting out their retries."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from kiosk.queue import connect
from kiosk.sentinel import MasterFollowingConnection
from tests.support.sentinel import FailoverDrill, SentinelCluster
from tests.support.servers import wait_for


@pytest.fixture
def small_cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    cluster = SentinelCluster(tmp_path, replicas=1, sentinels=1, down_after_ms=500).start()
    yield cluster
    cluster.stop()


def test_a_sentinel_url_reaches_the_master(small_cluster: SentinelCluster) -> None:
    client = connect(small_cluster.url)
    client.set("greeting", "hello")
    assert small_cluster.master.client().get("greeting") == "hello"
    assert client.execute_command("ROLE")[0] == "master"
    pool = client.connection_pool
    assert pool.connection_class is MasterFollowingConnection  # type: ignore[attr-defined]


def test_an_unknown_master_name_says_so(small_cluster: SentinelCluster) -> None:
    url = small_cluster.url.replace("/kiosk/0", "/nosuchmaster/0")
    with pytest.raises(redis.ConnectionError, match="No master found for 'nosuchmaster'"):
        connect(url, retries=0).ping()


def test_a_command_cut_off_by_the_failover_is_retried_on_the_new_master(
    small_cluster: SentinelCluster,
) -> None:
    """A blocked BLMOVE loses its connection when the master dies; its retry must go where
    the Sentinels say the master is now, not to the dead master's address (redis-py #3874)."""
    client = connect(small_cluster.url, socket_timeout=40)
    client.ping()
    moved: list[str | None] = []
    waiting = threading.Thread(
        target=lambda: moved.append(client.blmove("src", "dst", 30)), daemon=True
    )
    waiting.start()
    wait_for(lambda: small_cluster.master.client().client_list(_type="normal"), 5)
    (replica,) = small_cluster.replicas
    small_cluster.master.kill()
    wait_for(lambda: small_cluster.master_port() == replica.port, 20, what="the replica promoted")
    replica.client().lpush("src", "job")
    waiting.join(15)  # a retry aimed at the dead master would go on for about a minute
    assert moved == ["job"]


@pytest.mark.slow
def test_acknowledged_jobs_survive_a_master_failover(tmp_path: Path) -> None:
    """500 submissions, 3 consumers; SIGKILL the master after 150 acknowledged submissions."""
    cluster = SentinelCluster(tmp_path, replicas=2, sentinels=3, down_after_ms=1000).start()
    try:
        report = FailoverDrill(cluster, jobs=500, kill_after=150).run()
    finally:
        cluster.stop()
    print("\nfailover drill:", json.dumps(report.as_dict(), indent=2))
    assert report.submitted == 500
    assert report.new_master_port != report.old_master_port
    assert report.lost == 0, f"acknowledged jobs not done: {report.lost_keys}"
    assert report.done == report.acknowledged
    # A finish can be completed twice only where no replica acknowledged it in time (the
    # documented exception, warned about as it happens); on a busy machine a few are.
    assert report.completed_twice <= report.unreplicated_writes
    assert report.acknowledged >= 0.9 * report.submitted  # only the failover's own refusals
    assert 0 < report.failover_seconds < 15
