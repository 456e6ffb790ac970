"""``python -m consumers QUEUE``: run one consumer process for a queue."""

from __future__ import annotations

import argparse
import logging
import sys

from prometheus_client import start_http_server

from consumers.metrics import ConsumerMetrics
from consumers.registry import UnknownJobType, resolve
from consumers.worker import Worker
from kiosk.allocator import keep_memory_flat
from kiosk.keys import job_type_of
from kiosk.logs import setup_logging
from kiosk.queue import JobQueue
from kiosk.settings import ConsumerSettings
from kiosk.storage import open_bucket

log = logging.getLogger("consumers")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consumers", description=__doc__)
    parser.add_argument("queue", help="queue to consume: a job type, or TYPE-zip")
    parser.add_argument(
        "--check",
        action="store_true",
        help="only check that the queue's job type can be loaded (exit 2 with why if not)",
    )
    args = parser.parse_args(argv)

    settings = ConsumerSettings()
    setup_logging(settings.log_level, f"consumer[{args.queue}]")
    keep_memory_flat()
    if job_type_of(args.queue) not in settings.queues:
        log.error(
            "queue %r is not among KIOSK_QUEUES (%s); add its job type there",
            args.queue,
            ",".join(settings.queues) or "empty",
        )
        return 2
    try:
        consumer_cls = resolve(args.queue, settings.job_type_plugins)
    except (UnknownJobType, ValueError) as exc:
        log.error("%s", exc)
        return 2
    if args.check:
        return 0

    queue = JobQueue.from_settings(settings, socket_timeout=settings.claim_timeout + 10)
    consumer = consumer_cls(settings, open_bucket(settings.bucket), queue)
    if settings.metrics_port:
        start_http_server(settings.metrics_port)
    control = JobQueue.from_settings(settings, retries=2, socket_timeout=5.0)
    Worker(consumer, queue, args.queue, settings, ConsumerMetrics(), control=control).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
