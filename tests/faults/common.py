"""Helpers shared by the fault tests: processes, waiting, the stream and its reference."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import redis

from ledrec.settings import Settings
from ledrec.stream.artifact import Model
from ledrec.stream.consumer import consumer_statuses
from ledrec.stream.producer import EventPublisher
from ledrec.stream.state import UserStateStore
from tests.helpers import clean_pass

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
    rng = np.random.default_rng(seed)
    users = rng.integers(n_users, size=n_events).tolist()
    items = rng.integers(n_items, size=n_events).tolist()
    return [(f"u{u}", f"i{i}", 1.0) for u, i in zip(users, items, strict=True)]


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
