"""Periodic retraining over a real broker: replay, train, publish, activate; failures logged."""

from __future__ import annotations

import subprocess
import sys

import pytest
import redis

from ledrec.settings import Settings
from ledrec.stream.artifact import load_model
from ledrec.stream.producer import EventPublisher
from ledrec.stream.registry import Registry
from ledrec.stream.replay import replay_events
from ledrec.training.jobs import PretrainConfig, TrainConfig
from ledrec.training.retrain import RetrainConfig, Retrainer, parse_duration
from ledrec.training.synthetic import SyntheticConfig, iter_events
from tests.helpers import settings_env

SMALL = ["--svd-only", "--dim", "16", "--min-count", "2", "--n-heldout", "100"]


def test_parse_duration() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "30m", "6h", "1d")] == [
        90.0, 90.0, 1800.0, 21600.0, 86400.0,
    ]  # fmt: skip
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")


def test_trainer_cycles_replay_train_and_activate_and_failures_keep_the_active(
    settings: Settings, redis_client: redis.Redis
) -> None:
    publisher = EventPublisher(settings, settings.kafka_bootstrap)
    world = SyntheticConfig(1000, 150, 30_000, click_in_taste=0.6, click_off_taste=0.2, seed=3)
    n = 0
    for user, item, kind, ts in iter_events(world):
        publisher.send(user, item, kind, ts=ts)
        n += 1
    publisher.flush()
    replay = replay_events(settings, settings.kafka_bootstrap, max_per_partition=10)
    assert len(replay.events) == 10 * settings.events_partitions and replay.bad == 0
    assert sum(replay.end.values()) == n  # read to the end of every partition

    config = RetrainConfig(
        train=TrainConfig(
            pretrain=PretrainConfig(dim=16, min_count=2), finetune=None, n_heldout=100
        )
    )
    first = Retrainer(settings, settings.kafka_bootstrap, redis_client, config).run_once()
    registry = Registry(redis_client, settings.key_prefix)
    assert first.activated and registry.active() == first.version and first.version
    model = load_model(registry.path(first.version))
    assert model.provenance["source"].startswith(f"kafka:{settings.events_topic} p0:0-")
    assert f"({n} events)" in model.provenance["source"]
    assert model.parent is None and "ndcg@100" in model.metrics

    # The CLI path: same data, same seed, so the gate lets the new version through.
    env = settings_env(settings)
    trainer = [sys.executable, "-m", "ledrec.cli", "trainer", "--once", *SMALL]
    second = subprocess.run(trainer, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    active = registry.active()
    assert active is not None and active != first.version
    assert load_model(registry.path(active)).parent == first.version
    assert registry.info(first.version)["state"] == "retained"

    # A window with no events (the synthetic world is in the past): logged, nothing changes.
    failed = subprocess.run(
        [*trainer, "--window", "1h"], env=env, capture_output=True, text=True, timeout=120
    )
    assert failed.returncode == 1
    assert "retraining failed; the active version keeps serving" in failed.stderr
    assert '"error": "only 0 events in the window' in failed.stderr  # structured log line
    assert '"level": "WARNING"' in failed.stderr and "Traceback" not in failed.stderr
    assert registry.active() == active


def test_events_with_impossible_timestamps_in_the_topic_do_not_break_retraining(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """Produced raw (as a producer in another language might), past every publisher check."""
    import msgpack
    from confluent_kafka import Producer

    publisher = EventPublisher(settings, settings.kafka_bootstrap)
    world = SyntheticConfig(1000, 150, 30_000, click_in_taste=0.6, click_off_taste=0.2, seed=4)
    for user, item, kind, ts in iter_events(world):
        publisher.send(user, item, kind, ts=ts)
    publisher.flush()
    raw = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for ts in (1e20, 1.7e12, -5.0):
        event = {"user_id": "u1", "item_id": "i1", "type": "click", "ts": ts}
        raw.produce(settings.events_topic, msgpack.packb(event), key=b"u1")
    assert raw.flush(10) == 0

    replay = replay_events(settings, settings.kafka_bootstrap)
    assert replay.bad == 3 and "ts 20" in replay.describe(settings.events_topic)
    config = RetrainConfig(
        train=TrainConfig(
            pretrain=PretrainConfig(dim=16, min_count=2), finetune=None, n_heldout=100
        )
    )
    report = Retrainer(settings, settings.kafka_bootstrap, redis_client, config).run_once()
    assert report.activated, report


@pytest.mark.spark
def test_trainer_engine_spark_pretrains_on_the_replayed_events(
    settings: Settings, redis_client: redis.Redis
) -> None:
    publisher = EventPublisher(settings, settings.kafka_bootstrap)
    world = SyntheticConfig(1000, 150, 30_000, click_in_taste=0.6, click_off_taste=0.2, seed=3)
    for user, item, kind, ts in iter_events(world):
        publisher.send(user, item, kind, ts=ts)
    publisher.flush()
    config = RetrainConfig(
        train=TrainConfig(
            pretrain=PretrainConfig(dim=16, min_count=2), finetune=None, n_heldout=100
        ),
        spark_master="local[2]",
    )
    result = Retrainer(settings, settings.kafka_bootstrap, redis_client, config).run_once()
    assert result.activated and result.version, result.reason
    model = load_model(Registry(redis_client, settings.key_prefix).path(result.version))
    assert model.provenance["pretrain_engine"] == "spark"
    assert model.provenance["source"].startswith(f"kafka:{settings.events_topic} p0:0-")
