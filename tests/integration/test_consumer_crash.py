"""SIGKILL the consumer mid-stream, restart it: the state equals one clean pass."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import redis

from ledrec.settings import Settings
from ledrec.stream.consumer import consumer_statuses
from ledrec.stream.producer import EventPublisher
from ledrec.stream.state import UserStateStore
from tests.helpers import clean_pass, committed_lag, publish_model, random_model, settings_env

N_EVENTS = 30_000
KILLS = 3


def _start(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ledrec.cli", "consume"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _applied(r: redis.Redis, settings: Settings) -> float:
    return sum(s["applied"] for s in consumer_statuses(r, settings.key_prefix).values())


def test_killed_consumer_loses_nothing_and_counts_nothing_twice(
    settings: Settings, redis_client: redis.Redis
) -> None:
    settings = settings.model_copy(
        update={"timeline_max": 20, "consume_batch_size": 250, "consumer_status_every_s": 0.0}
    )
    model = publish_model(settings, redis_client, random_model(n_items=500, dim=8))
    rng = np.random.default_rng(7)
    publisher = EventPublisher(settings, settings.kafka_bootstrap)
    events = []
    for _ in range(N_EVENTS):
        user, item = f"u{rng.integers(300)}", f"i{rng.integers(520)}"  # some items unknown
        publisher.send(user, item, "view")
        events.append((user, item, settings.event_weights["view"]))
    ends = publisher.flush().last_offsets

    env = settings_env(settings)
    kills = 0
    proc = _start(env)
    try:
        while kills < KILLS:
            target = _applied(redis_client, settings) + 2_000 + rng.integers(3_000)
            deadline = time.time() + 60
            lag_checked = time.time()
            while _applied(redis_client, settings) < target and proc.poll() is None:
                assert time.time() < deadline, "consumer made no progress"
                time.sleep(0.002)
                # The status counters undercount by what each killed consumer wrote but
                # had not reported, so near the end of the stream a target may never be
                # reached: stop waiting once everything is committed.
                if time.time() - lag_checked > 0.5:
                    if committed_lag(settings, ends) == 0:
                        break
                    lag_checked = time.time()
            if committed_lag(settings, ends) == 0:
                break  # finished before the next kill point
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            proc = _start(env)
        deadline = time.time() + 90
        while committed_lag(settings, ends) > 0:
            assert time.time() < deadline, "consumer did not catch up after restarts"
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert kills >= 1

    store = UserStateStore(redis_client, settings.key_prefix, settings.timeline_max, 60)
    expected = clean_pass(events, settings.timeline_max, model)
    users = sorted(expected)
    states = store.read_many(users, [model.version])
    for user, state in zip(users, states, strict=True):
        window, total, weight = expected[user]
        assert state is not None and state.timeline == window, user
        np.testing.assert_allclose(state.sums[model.version], total, rtol=1e-7, atol=1e-7)
        assert state.weights[model.version] == weight
    statuses = consumer_statuses(redis_client, settings.key_prefix).values()
    # The state above equals one clean pass: every event applied exactly once. The status
    # counters are informational: a consumer killed between its Redis write and its next
    # status report takes that batch's count with it (its successor skips the batch), so
    # they can only undercount; never twice is what they can show.
    assert sum(s["applied"] for s in statuses) <= N_EVENTS
