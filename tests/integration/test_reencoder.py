"""The re-encoder and the swap under crashes: SIGKILLed back-fill, racing writers, dead scorer."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import numpy as np
import redis

from ledrec.settings import Settings
from ledrec.stream.artifact import Model
from ledrec.stream.client import RecommenderClient
from ledrec.stream.encoder import window_sum
from ledrec.stream.reencoder import read_progress
from ledrec.stream.registry import ModelCache, Registry
from ledrec.stream.state import StateWriter, TimelineEvent, UserStateStore
from ledrec.stream.swap import Swapper
from tests.helpers import publish_model, random_model, settings_env


def _populate(store: UserStateStore, models: list[Model], n_users: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for start in range(0, n_users, 2000):
        batch = {
            f"u{u}": [TimelineEvent(0, o, f"i{rng.integers(220)}", 1.0) for o in range(8)]
            for u in range(start, min(n_users, start + 2000))
        }
        StateWriter(store).apply(batch, models)


def _assert_exact(store: UserStateStore, version: str, model_seed: int, n_users: int) -> None:
    model = random_model(seed=model_seed, version=version)
    users = list(store.scan_users())
    assert len(users) == n_users
    for user, state in zip(users, store.read_many(users, [version]), strict=True):
        assert state is not None and version in state.sums, f"{user} has no {version} sum"
        total, weight = window_sum(model, state.timeline)
        np.testing.assert_allclose(state.sums[version], total, rtol=1e-9, atol=1e-9)
        assert state.weights[version] == weight


def test_a_writer_that_does_not_know_a_version_drops_its_sum(
    settings: Settings, redis_client: redis.Redis
) -> None:
    v1, v2 = random_model(version="v1"), random_model(seed=1, version="v2")
    store = UserStateStore(redis_client, settings.key_prefix, 5, 0)
    StateWriter(store).apply({"u": [TimelineEvent(0, 0, "i1", 1.0)]}, [v1, v2])
    StateWriter(store).apply(
        {"u": [TimelineEvent(0, 1, "i2", 1.0)]}, [v1]
    )  # read the live set before v2
    state = store.read("u", ["v1", "v2"])
    assert state is not None and "v2" not in state.sums  # missing, never stale
    StateWriter(store).apply({"u": [TimelineEvent(0, 2, "i3", 1.0)]}, [v1, v2])
    state = store.read("u", ["v2"])
    assert state is not None
    np.testing.assert_allclose(state.sums["v2"], window_sum(v2, state.timeline)[0])


def test_backfill_killed_midway_resumes_and_races_writers_without_double_adding(
    settings: Settings, redis_client: redis.Redis
) -> None:
    n_users = 12_000
    v1 = publish_model(settings, redis_client, random_model(seed=0, version="v1"))
    publish_model(settings, redis_client, random_model(seed=2, version="v2"), activate=False)
    store = UserStateStore(redis_client, settings.key_prefix, 5, 0)
    _populate(store, [v1], n_users)

    command = [sys.executable, "-m", "ledrec.cli", "models", "backfill", "v2", "--max-rate", "3000"]
    env = settings_env(settings, backfill_batch=200)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 30
    while True:
        progress = read_progress(redis_client, settings.key_prefix, "v2")
        if progress is not None and progress.scanned >= 3000:
            break
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    killed = read_progress(redis_client, settings.key_prefix, "v2")
    assert killed is not None and not killed.done and killed.cursor != 0
    assert Registry(redis_client, settings.key_prefix).info("v2")["state"] == "warming"

    # Writers race the resumed back-fill: a consumer on the live set, and a stale one that
    # read the live set before v2 joined it. The stale one's writes drop v2's sum; it stops
    # mid first pass, and the verification pass puts back what it dropped.
    stop = threading.Event()

    def stale_done() -> bool:
        now = read_progress(redis_client, settings.key_prefix, "v2")
        return stop.is_set() or (now is not None and now.scanned >= killed.scanned + 3000)

    def write(stale: bool) -> None:
        cache = ModelCache(Registry(redis_client, settings.key_prefix))
        rng, offset = np.random.default_rng(int(stale)), 100 + 100_000 * int(stale)
        while not (stale_done() if stale else stop.is_set()):
            users = {f"u{u}" for u in rng.integers(n_users, size=50)}
            offset += 1
            models = [v1] if stale else cache.live_models()
            batch = {u: [TimelineEvent(1, offset, f"i{rng.integers(220)}", 1.0)] for u in users}
            StateWriter(store).apply(batch, models)
            time.sleep(0.002)

    writers = [threading.Thread(target=write, args=(s,), daemon=True) for s in (False, True)]
    for w in writers:
        w.start()
    resumed = subprocess.run(command[:-2], env=env, capture_output=True, text=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    stop.set()
    for w in writers:
        w.join(timeout=10)
    done = read_progress(redis_client, settings.key_prefix, "v2")
    assert done is not None and done.done and done.passes >= 2
    assert done.retries > 0  # lost some compare-and-set races to the writers, retried
    # Continued from the saved cursor: a restart from scratch would have scanned more.
    assert killed.scanned < done.scanned <= n_users * done.passes + 200
    assert "done" in resumed.stdout
    _assert_exact(store, "v2", 2, n_users)
    _assert_exact(store, "v1", 0, n_users)


def test_a_scorer_killed_during_a_swap_comes_back_serving_the_active_version(
    settings: Settings, redis_client: redis.Redis
) -> None:
    publish_model(settings, redis_client, random_model(version="v1"))
    publish_model(settings, redis_client, random_model(seed=1, version="v2"), activate=False)
    store = UserStateStore(redis_client, settings.key_prefix, 5, 0)
    _populate(store, [random_model(version="v1")], 2000)
    env = settings_env(settings)
    registry = Registry(redis_client, settings.key_prefix)

    def scorer() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ledrec.cli", "serve"], env=env, stderr=subprocess.DEVNULL
        )
        deadline = time.time() + 30
        while not any(str(proc.pid) in name for name in registry.scorers()):
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.05)
        return proc

    first = scorer()
    swap = threading.Thread(target=lambda: Swapper(settings, redis_client).activate("v2"))
    swap.start()
    while registry.info("v2")["state"] != "warming":
        time.sleep(0.005)
    first.send_signal(signal.SIGKILL)  # mid swap: loading v2 or about to switch
    first.wait(timeout=10)
    swap.join(timeout=30)
    assert not swap.is_alive() and registry.active() == "v2"  # the dead scorer held nothing up

    second = scorer()
    try:
        client = RecommenderClient(redis_client, settings.request_queue, settings.key_prefix, 5.0)
        rec = client.request(user_id="u1", k=5)
        assert rec.version == "v2" and rec.source == "state"
    finally:
        second.terminate()
        second.wait(timeout=10)
