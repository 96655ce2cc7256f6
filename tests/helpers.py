"""The one test-helpers module: models, reference passes, running components, processes and
waiting, the event stream of the fault tests (no mocks: real servers only)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import redis

from ledrec.settings import DEFAULT_EVENT_WEIGHTS, Settings
from ledrec.stream.artifact import Model, save_model
from ledrec.stream.consumer import StateUpdater, consumer_statuses
from ledrec.stream.encoder import window_sum
from ledrec.stream.producer import EventPublisher
from ledrec.stream.registry import Registry
from ledrec.stream.server import RecommendServer
from ledrec.stream.state import UserStateStore

if TYPE_CHECKING:
    import httpx


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
def running_consumer(
    settings: Settings, client: redis.Redis, name: str | None = None
) -> Iterator[StateUpdater]:
    """A consumer in a thread; ``name``: its status key and log name (several in a test)."""
    updater = StateUpdater(settings, settings.kafka_bootstrap, client)
    if name is not None:
        updater.name = name
    thread = threading.Thread(target=updater.run, daemon=True)
    thread.start()
    try:
        yield updater
    finally:
        updater.stop_event.set()
        thread.join(timeout=15)


@contextmanager
def running_gateway(settings: Settings) -> Iterator[httpx.Client]:
    """The gateway served by uvicorn on a free loopback port, and an HTTP client for it
    (``base_url`` is the gateway's address)."""
    import httpx
    import uvicorn

    from ledrec.deploy.stack import free_port
    from ledrec.stream.gateway import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 30, "the gateway listening")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as http:
            yield http
    finally:
        server.should_exit = True
        thread.join(timeout=10)


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


# -- fault tests: processes, waiting, the event stream and its reference ----------------------
Events = list[tuple[str, str, float]]


def start_cli(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``python -m ledrec.cli ARGS`` with its output appended to ``log`` (read on failure)."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ledrec.cli", *args], env=env, stdout=out, stderr=out
        )


def wait_until(check: Callable[[], bool], timeout: float, what: str, step: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(step)


def applied_by(client: redis.Redis, settings: Settings, pid: int) -> float:
    """Events the consumer process ``pid`` reports as applied (0 before its first batch)."""
    statuses = consumer_statuses(client, settings.key_prefix)
    return sum(s["applied"] for name, s in statuses.items() if name.endswith(f":{pid}"))


def random_views(n_events: int, n_users: int, n_items: int, seed: int) -> Events:
    """Random (user, item, weight) views, at the default weight of a view."""
    rng = np.random.default_rng(seed)
    users = rng.integers(n_users, size=n_events).tolist()
    items = rng.integers(n_items, size=n_events).tolist()
    weight = DEFAULT_EVENT_WEIGHTS["view"]
    return [(f"u{u}", f"i{i}", weight) for u, i in zip(users, items, strict=True)]


def publish_stream(
    settings: Settings,
    n_events: int,
    n_users: int,
    n_items: int,
    seed: int,
    chunks: int = 1,
    pause_s: float = 0.0,
    publisher: EventPublisher | None = None,
) -> tuple[Events, dict[int, int]]:
    """Publish random views (in ``chunks``, ``pause_s`` apart); the events and acked ends."""
    events = random_views(n_events, n_users, n_items, seed)
    publisher = publisher or EventPublisher(settings, settings.kafka_bootstrap)
    size = -(-n_events // chunks)
    for start in range(0, n_events, size):
        if start:
            time.sleep(pause_s)
        for user, item, _ in events[start : start + size]:
            publisher.send(user, item, "view", ts=1.0)
        publisher.producer.poll(0)
    return events, publisher.flush().last_offsets


def assert_clean_pass(client: redis.Redis, settings: Settings, events: Events, model: Model) -> int:
    """Every user's state equals one clean pass over ``events``; returns the users checked.

    With ``timeline_max`` above every user's event count the timeline is the user's whole
    history, so one event lost or applied twice anywhere in the stream shows up here.
    """
    store = UserStateStore(client, settings.key_prefix, settings.timeline_max, 60)
    expected = clean_pass(events, settings.timeline_max, model)
    users = sorted(expected)
    for start in range(0, len(users), 1000):
        chunk = users[start : start + 1000]
        for user, state in zip(chunk, store.read_many(chunk, [model.version]), strict=True):
            window, total, weight = expected[user]
            assert state is not None, f"{user}: no state"
            assert state.timeline == window, _difference(user, window, state.timeline)
            np.testing.assert_allclose(state.sums[model.version], total, rtol=1e-9, atol=1e-9)
            assert state.weights[model.version] == weight, user
    return len(users)


def _difference(user: str, expected: list[tuple[str, float]], got: list[tuple[str, float]]) -> str:
    at = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), None)
    at = min(len(expected), len(got)) if at is None else at
    return (
        f"{user}: timeline differs from a clean pass: {len(got)} events, expected "
        f"{len(expected)}; first difference at {at}: expected {expected[at : at + 3]}, "
        f"got {got[at : at + 3]}"
    )
