"""Consumers SIGKILLed at random points over a 300k-event stream: state = one clean pass.

Three kinds of kill, each a real process death with no cleanup:
- between the Redis write and the offset commit (the test-only fault hook exits the
  process right after its Nth batch's write),
- at a random moment while consuming (mid-batch, mid-write, mid-commit),
- during a rebalance, with a second consumer joining the group.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from ledrec.settings import Settings
from ledrec.stream.consumer import FAULT_KILL_AFTER_REDIS_WRITE
from tests.helpers import (
    applied_by,
    assert_clean_pass,
    committed_lag,
    publish_model,
    publish_stream,
    random_model,
    settings_env,
    start_cli,
    wait_until,
)

pytestmark = pytest.mark.both_redis

N_EVENTS = 300_000  # enough that the consumers, pipelined, are still busy at the last kill
N_USERS = 6_000  # ~50 events per user: every history fits the timeline, so all is checked
HOOK_KILLS = 4
RANDOM_KILLS = 3
REBALANCE_KILLS = 2


def test_consumer_kills_lose_nothing_and_count_nothing_twice(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    settings = settings.model_copy(
        update={"timeline_max": 200, "consume_batch_size": 1000, "session_timeout_ms": 3000}
    )
    model = publish_model(settings, redis_client, random_model(n_items=500, dim=8))
    events, ends = publish_stream(settings, N_EVENTS, N_USERS, n_items=520, seed=11)
    per_user = collections.Counter(user for user, _, _ in events)
    assert max(per_user.values()) < settings.timeline_max
    rng = np.random.default_rng(5)
    env = settings_env(settings)
    log = tmp_path / "consumers.log"
    started = time.monotonic()

    def start(**extra: str) -> subprocess.Popen[bytes]:
        return start_cli(["consume"], {**env, **extra}, log)

    def consuming(proc: subprocess.Popen[bytes]) -> None:
        wait_until(lambda: applied_by(redis_client, settings, proc.pid) > 0, 60, "consumption")

    def kill(proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    # 1. Die between the Redis write and the commit of the Nth batch.
    for _ in range(HOOK_KILLS):
        proc = start(**{FAULT_KILL_AFTER_REDIS_WRITE: str(rng.integers(1, 4))})
        assert proc.wait(timeout=60) == 137, log.read_text()[-2000:]
    # 2. Die at a random moment while consuming.
    for _ in range(RANDOM_KILLS):
        proc = start()
        consuming(proc)
        time.sleep(rng.uniform(0.0, 0.3))
        kill(proc)
    # 3. Die while a second consumer joins the group (partitions being revoked/assigned).
    survivor = start()
    consuming(survivor)
    for _ in range(REBALANCE_KILLS):
        joiner = start()
        time.sleep(rng.uniform(0.5, 2.5))  # the join takes ~session_timeout/2 on Tansu
        kill(survivor)
        survivor = joiner
    lag_before_end = committed_lag(settings, ends)
    try:
        wait_until(lambda: committed_lag(settings, ends) == 0, 120, "catch-up", step=0.2)
    finally:
        survivor.terminate()
        survivor.wait(timeout=20)
    elapsed = time.monotonic() - started

    users = assert_clean_pass(redis_client, settings, events, model)
    kills = HOOK_KILLS + RANDOM_KILLS + REBALANCE_KILLS
    print(
        f"\n{N_EVENTS} events, {users} users, {kills} kills "
        f"({HOOK_KILLS} after-write, {RANDOM_KILLS} random, {REBALANCE_KILLS} in rebalance), "
        f"{lag_before_end} events left for the last consumer, {elapsed:.1f}s: state = clean pass"
    )
    assert lag_before_end > 0  # the kills happened before the stream was consumed
