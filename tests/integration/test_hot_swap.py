"""Model swaps under live traffic, the quality gate and the CLI, over real servers."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
import redis

from ledrec.settings import Settings
from ledrec.stream.client import RecommenderClient, RecommendError
from ledrec.stream.encoder import window_sum
from ledrec.stream.producer import EventPublisher
from ledrec.stream.registry import Registry, RegistryError
from ledrec.stream.state import UserStateStore
from ledrec.stream.swap import Swapper, SwapReport
from tests.helpers import (
    clean_pass,
    publish_model,
    random_model,
    running_consumer,
    running_server,
    settings_env,
)

pytestmark = pytest.mark.both_redis

N_USERS = 150


@dataclass
class Traffic:
    """A producer and a load generator running until stopped, recording everything."""

    settings: Settings
    client: redis.Redis
    stop: threading.Event = field(default_factory=threading.Event)
    events: list[tuple[str, str, float]] = field(default_factory=list)
    replies: list[tuple[float, float, str]] = field(default_factory=list)  # sent, received, version
    failures: list[str] = field(default_factory=list)
    publisher: EventPublisher | None = None

    def produce(self) -> None:
        self.publisher = EventPublisher(self.settings, self.settings.kafka_bootstrap)
        rng = np.random.default_rng(1)
        while not self.stop.is_set():
            user, item = f"u{rng.integers(N_USERS)}", f"i{rng.integers(320)}"  # some unknown
            self.publisher.send(user, item, "view")
            self.events.append((user, item, self.settings.event_weights["view"]))
            time.sleep(0.0005)
        self.publisher.flush()

    def load(self) -> None:
        rpc = RecommenderClient(
            self.client, self.settings.request_queue, self.settings.key_prefix, 5.0
        )
        rng = np.random.default_rng(2)
        while not self.stop.is_set():
            sent = time.time()
            try:
                rec = rpc.request(user_id=f"u{rng.integers(N_USERS + 20)}", k=10)
            except RecommendError as e:
                self.failures.append(repr(e))
                continue
            self.replies.append((sent, time.time(), rec.version))


def _assert_sums_exact(
    settings: Settings, client: redis.Redis, version: str, model_seed: int
) -> int:
    """Every user's stored sum for ``version`` is the sum of their stored timeline."""
    model = random_model(n_items=300, dim=16, seed=model_seed, version=version)
    store = UserStateStore(client, settings.key_prefix, settings.timeline_max, 0)
    users = list(store.scan_users())
    for user, state in zip(users, store.read_many(users, [version]), strict=True):
        assert state is not None and version in state.sums, f"{user} has no sum for {version}"
        total, weight = window_sum(model, state.timeline)  # same HMGET: a consistent snapshot
        np.testing.assert_allclose(state.sums[version], total, rtol=1e-9, atol=1e-9)
        assert state.weights[version] == pytest.approx(weight)
    return len(users)


def _allowed(intervals: list[tuple[str, float, float]], sent: float, received: float) -> set[str]:
    return {v for v, start, end in intervals if start <= received and end >= sent}


def test_live_traffic_through_swap_rollback_and_swap(
    settings: Settings, redis_client: redis.Redis
) -> None:
    settings = settings.model_copy(update={"timeline_max": 20})  # items fall off the window
    seeds = {"v1": 11, "v2": 12, "v3": 13}
    for name, seed in seeds.items():
        publish_model(
            settings, redis_client, random_model(300, 16, seed, version=name), activate=name == "v1"
        )
    swapper = Swapper(settings, redis_client)
    traffic = Traffic(settings, redis_client)
    reports: list[SwapReport] = []
    with running_consumer(settings, redis_client), running_server(settings, redis_client):
        threads = [threading.Thread(target=t, daemon=True) for t in (traffic.produce, traffic.load)]
        for t in threads:
            t.start()
        time.sleep(4)  # consumer group joined, every user has some state
        for step in ("v2", "rollback", "v3"):
            report = swapper.rollback() if step == "rollback" else swapper.activate(step)
            reports.append(report)
            assert Registry(redis_client, settings.key_prefix).active() == report.version
            _assert_sums_exact(settings, redis_client, report.version, seeds[report.version])
            time.sleep(1.0)
        traffic.stop.set()
        for t in threads:
            t.join(timeout=30)
        # Drain: every published event applied, then compare with a clean pass.
        deadline = time.time() + 30
        expected = clean_pass(
            traffic.events, settings.timeline_max, random_model(300, 16, 13, "v3")
        )
        store = UserStateStore(redis_client, settings.key_prefix, settings.timeline_max, 0)
        while True:
            states = dict(zip(expected, store.read_many(list(expected), ["v3"]), strict=True))
            if all(s is not None and s.timeline == expected[u][0] for u, s in states.items()):
                break
            assert time.time() < deadline, "events lost or applied twice"
            time.sleep(0.2)
    for user, (window, total, weight) in expected.items():
        state = states[user]
        assert state is not None and state.timeline == window
        np.testing.assert_allclose(state.sums["v3"], total, rtol=1e-9, atol=1e-9)
        assert state.weights["v3"] == pytest.approx(weight)

    assert [r.version for r in reports] == ["v2", "v1", "v3"]
    assert reports[0].backfill is not None and reports[0].backfill.done
    assert reports[1].backfill is None  # rollback: a flip, no back-fill
    assert reports[2].retired == ["v2"]  # retention 1: v1 is kept, v2 goes
    registry = Registry(redis_client, settings.key_prefix)
    assert registry.live() == ["v1", "v3"]
    user_keys = list(redis_client.scan_iter(f"{settings.key_prefix}:u:*"))
    assert not any(b"s:v2" in redis_client.hkeys(k) for k in user_keys)

    # Zero failures; every reply from a version active at some instant of its request.
    assert traffic.failures == []
    assert len(traffic.replies) > 200
    intervals = [("v1", 0.0, reports[0].serving_at)]
    for report, after in zip(reports, [*reports[1:], None], strict=True):
        end = after.serving_at if after is not None else float("inf")
        intervals.append((report.version, report.flip_started, end))
    wrong = [(s, r, v) for s, r, v in traffic.replies if v not in _allowed(intervals, s, r)]
    assert wrong == [], f"{len(wrong)} replies from a version not active then: {wrong[:3]}"
    assert {v for _, _, v in traffic.replies} == {"v1", "v2", "v3"}
    for report in reports:
        assert report.serving_at - report.flip_started < 2.0


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledrec.cli", "models", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_worse_model_is_refused_by_the_gate_unless_forced(
    settings: Settings, redis_client: redis.Redis
) -> None:
    good = random_model(version="good")
    good.metrics = {"ndcg@100": 0.40, "recall@20": 0.30}
    worse = random_model(seed=1, version="worse")
    worse.metrics = {"ndcg@100": 0.35, "recall@20": 0.31}
    publish_model(settings, redis_client, good)
    publish_model(settings, redis_client, worse, activate=False)
    with pytest.raises(
        RegistryError, match=r"worse than the active good on ndcg@100 \(0.3500 < 0.4000\)"
    ):
        Swapper(settings, redis_client).activate("worse")

    refused = _cli(settings, "activate", "worse")
    assert refused.returncode == 1
    assert "quality gate" in refused.stderr and "--force" in refused.stderr
    registry = Registry(redis_client, settings.key_prefix)
    assert registry.active() == "good" and registry.info("worse")["state"] == "staged"

    forced = _cli(settings, "activate", "worse", "--force")
    assert forced.returncode == 0, forced.stderr
    assert registry.active() == "worse" and registry.info("good")["state"] == "retained"
    listing = _cli(settings, "list").stdout
    assert "* worse" in listing and "retained" in listing and "ndcg@100=0.3500" in listing
    assert "backfill worse: done" in listing

    back = _cli(settings, "rollback")
    assert back.returncode == 0, back.stderr
    assert registry.active() == "good"


def test_a_model_missing_a_gate_metric_is_refused(
    settings: Settings, redis_client: redis.Redis
) -> None:
    good = random_model(version="good")
    good.metrics = {"ndcg@100": 0.40}
    publish_model(settings, redis_client, good)
    publish_model(settings, redis_client, random_model(seed=1, version="blind"), activate=False)
    with pytest.raises(RegistryError, match="has no ndcg@100"):
        Swapper(settings, redis_client).activate("blind")
    with pytest.raises(RegistryError, match="no retained version"):
        Swapper(settings, redis_client).rollback()
