"""Test helpers shared by integration and fault tests (no mocks: real servers only)."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import redis

from ledrec.settings import Settings
from ledrec.stream.artifact import Model, save_model
from ledrec.stream.consumer import StateUpdater
from ledrec.stream.encoder import window_sum
from ledrec.stream.registry import Registry
from ledrec.stream.server import RecommendServer


def random_model(n_items: int = 200, dim: int = 8, seed: int = 0, version: str = "") -> Model:
    rng = np.random.default_rng(seed)
    return Model(
        item_ids=np.array([f"i{i}" for i in range(n_items)]),
        embeddings=rng.normal(size=(n_items, dim)).astype(np.float32),
        biases=rng.normal(size=n_items).astype(np.float32),
        version=version,
        provenance={"source": "test"},
    )


def publish_model(
    settings: Settings, client: redis.Redis, model: Model, activate: bool = True
) -> Model:
    save_model(model, settings.model_store_path)
    registry = Registry(client, settings.key_prefix)
    registry.register(model)
    if activate:
        registry.activate(model.version)
    return model


def clean_pass(
    events: Sequence[tuple[str, str, float]], timeline_max: int, model: Model
) -> dict[str, tuple[list[tuple[str, float]], np.ndarray, float]]:
    """The reference: each user's last T events in order, and the window's sum and weight."""
    timelines: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for user, item, weight in events:
        timelines[user].append((item, weight))
    out = {}
    for user, tl in timelines.items():
        window = tl[-timeline_max:]
        total, weight = window_sum(model, window)
        out[user] = (window, total, weight)
    return out


@contextmanager
def running_server(settings: Settings, client: redis.Redis) -> Iterator[RecommendServer]:
    server = RecommendServer(settings, client)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop_event.set()
        thread.join(timeout=5)


@contextmanager
def running_consumer(settings: Settings, client: redis.Redis) -> Iterator[StateUpdater]:
    updater = StateUpdater(settings, settings.kafka_bootstrap, client)
    thread = threading.Thread(target=updater.run, daemon=True)
    thread.start()
    try:
        yield updater
    finally:
        updater.stop_event.set()
        thread.join(timeout=15)


def settings_env(settings: Settings, **overrides: object) -> dict[str, str]:
    """Environment that makes a `ledrec` subprocess use exactly these settings."""
    return settings.environment(**overrides)


def committed_lag(settings: Settings, last_offsets: dict[int, int]) -> int:
    """Published events (``last_offsets``: partition -> last acked offset) not yet committed.

    Computed from the producer's acknowledgements, not the broker's high watermarks, which
    Tansu was seen to under-report right after a produce.
    """
    from confluent_kafka import Consumer, TopicPartition

    probe = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.consumer_group}
    )
    try:
        parts = [TopicPartition(settings.events_topic, p) for p in last_offsets]
        return sum(
            max(0, last_offsets[tp.partition] + 1 - max(tp.offset, 0))
            for tp in probe.committed(parts, timeout=10)
        )
    finally:
        probe.close()
