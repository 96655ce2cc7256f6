"""The deployment at a glance, read from Redis: ``ledrec status``, the gateway's
``/v1/status`` and the dashboard all show this one report.

Every consumer and scorer already reports itself in Redis (the consumer its totals, lag and
recent freshness; the scorer its heartbeat with the versions it holds, requests answered and
recent latency), so one read of Redis sees all of them, wherever they run.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from ledrec.settings import Settings
from ledrec.stream.consumer import consumer_statuses
from ledrec.stream.registry import Registry

__all__ = ["deployment_status"]


def deployment_status(client: redis.Redis, settings: Settings) -> dict[str, Any]:
    """The active and live versions, every registered version with its state and metrics,
    the consumers, the scorers, the request queues' depths, and the time it was read."""
    registry = Registry(client, settings.key_prefix)
    keys = settings.keyspace_of(client)
    return {
        "active": registry.active(),
        "live": registry.live(),
        "versions": registry.versions(),
        "consumers": consumer_statuses(client, settings.key_prefix),
        "scorers": registry.scorers(),
        "queues": {queue: int(client.llen(queue)) for queue in keys.request_queues},
        "at": time.time(),
    }
