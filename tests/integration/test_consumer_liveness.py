"""Liveness you can see: a consumer with lag that receives nothing logs it and counts it
within the configured time, and reports its lag."""

from __future__ import annotations

import logging
import threading

import pytest
import redis
from prometheus_client import REGISTRY

from ledrec.settings import Settings
from ledrec.stream.consumer import BatchDone, StateUpdater
from ledrec.stream.producer import EventPublisher
from ledrec.stream.state import UserStateStore
from tests.helpers import wait_until


def _metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_a_stalled_consumer_is_reported_by_its_log_and_metric(
    settings: Settings, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """After its first batch the consumer pauses its own partitions (from its observe
    hook, in its own thread): from then on it has lag and fetches nothing."""
    settings = settings.model_copy(update={"consumer_stall_s": 1.0})
    store = UserStateStore(redis_client, settings.key_prefix, settings.timeline_max, 0)
    before = _metric("ledrec_consumer_stalls_total")
    paused: list[bool] = []

    def pause_after_first_batch(_: BatchDone) -> None:
        if not paused:
            updater.consumer.pause(updater.consumer.assignment())
            paused.append(True)

    updater = StateUpdater(
        settings, settings.kafka_bootstrap, redis_client, observe=pause_after_first_batch
    )
    thread = threading.Thread(target=updater.run, daemon=True)
    with caplog.at_level(logging.WARNING):
        thread.start()
        try:
            with EventPublisher(settings, settings.kafka_bootstrap) as publisher:
                publisher.send("live-1", "i0", "view")
            wait_until(lambda: bool(paused), 30, "the first batch")
            with EventPublisher(settings, settings.kafka_bootstrap) as publisher:
                for n in range(5):
                    publisher.send("live-1", f"i{n + 1}", "view")
            wait_until(
                lambda: _metric("ledrec_consumer_stalls_total") > before, 15, "the stall counted"
            )
            # > 0, not 5: the local broker (Tansu) under-reports high watermarks
            # (stream/replay.py); against Kafka the gauge is the exact lag
            assert _metric("ledrec_consumer_lag") > 0
        finally:
            updater.stop_event.set()
            thread.join(timeout=15)
    assert any("consumer stalled" in r.getMessage() for r in caplog.records)
    state = store.read("live-1", [])
    assert state is not None and state.size == 1  # nothing after the pause was applied
