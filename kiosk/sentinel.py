"""Clients of a Redis master that Sentinels fail over (``redis+sentinel://`` URLs).

redis-py's SentinelConnectionPool asks the Sentinels where the master is whenever the pool
opens a connection. A connection that breaks under a command is reopened by the command's
retry instead, and redis-py reopens it at the address it had (``send_packed_command`` calls
``connect_check_health``, which the Sentinel connection does not override: redis-py issue
#3874). After a failover every retry would then knock on the dead master until the retries
ran out, about a minute for a consumer. :class:`MasterFollowingConnection` asks the
Sentinels first, so a retried command reaches the new master as soon as they name it.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.sentinel import Sentinel, SentinelManagedConnection

from kiosk.redis_url import SentinelUrl

SENTINEL_TIMEOUT = 1.0  # seconds to reach one Sentinel before asking the next


class MasterFollowingConnection(SentinelManagedConnection):
    """A Sentinel-managed connection that, reopened by a retry, goes where the master is now."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._sock:
            self.connect()  # asks the Sentinels, then connects
        super().send_packed_command(command, check_health)


def master_client(url: SentinelUrl, options: dict[str, Any]) -> redis.Redis:
    """A client of the master the Sentinels in ``url`` name; ``options`` are redis.Redis's
    (timeouts, retry) for the connections to the master."""
    sentinels = Sentinel(
        url.sentinels,
        sentinel_kwargs={
            "socket_timeout": SENTINEL_TIMEOUT,
            "socket_connect_timeout": SENTINEL_TIMEOUT,
            "username": url.sentinel_username,
            "password": url.sentinel_password,
        },
    )
    return sentinels.master_for(
        url.master,
        connection_class=MasterFollowingConnection,
        db=url.db,
        username=url.username,
        password=url.password,
        **options,
    )
