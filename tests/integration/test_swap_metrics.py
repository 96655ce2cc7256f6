"""The swap and trainer metrics: activations, rollbacks and refusals by reason counted by the
process that swaps; trainer cycles by outcome, the last success time and gate refusals;
`ledrec trainer --metrics-port` serves them (and `ledrec health trainer` reads them).

Metrics are process-global (other tests of this process swap too): asserted as deltas."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client import REGISTRY

from ledrec.deploy.stack import free_port
from ledrec.settings import Settings
from ledrec.stream.producer import EventPublisher
from ledrec.stream.registry import Registry, RegistryError
from ledrec.stream.swap import Swapper
from ledrec.training.jobs import PretrainConfig, TrainConfig
from ledrec.training.retrain import RetrainConfig, Retrainer
from ledrec.training.synthetic import SyntheticConfig, iter_events
from tests.helpers import publish_model, random_model, settings_env, start_cli, wait_until


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_swaps_rollbacks_and_refusals_are_counted(
    settings: Settings, redis_client: redis.Redis
) -> None:
    swaps, rollbacks = _metric("ledrec_model_swaps_total"), _metric("ledrec_model_rollbacks_total")
    gate = _metric("ledrec_model_swaps_refused_total", reason="gate")
    first = random_model(seed=1)
    first.metrics = {"ndcg@100": 0.5, "recall@20": 0.5}
    publish_model(settings, redis_client, first)
    second = random_model(seed=2)
    second.metrics = {"ndcg@100": 0.6, "recall@20": 0.6}
    publish_model(settings, redis_client, second, activate=False)
    swapper = Swapper(settings, redis_client)
    swapper.activate(second.version)
    assert _metric("ledrec_model_swaps_total") == swaps + 1
    swapper.activate(second.version)  # already active: no flip, not counted
    assert _metric("ledrec_model_swaps_total") == swaps + 1
    swapper.rollback()
    assert _metric("ledrec_model_rollbacks_total") == rollbacks + 1

    worse = random_model(seed=3)
    worse.metrics = {"ndcg@100": 0.1, "recall@20": 0.1}
    publish_model(settings, redis_client, worse, activate=False)
    with pytest.raises(RegistryError, match="quality gate"):
        swapper.activate(worse.version)
    assert _metric("ledrec_model_swaps_refused_total", reason="gate") == gate + 1
    assert _metric("ledrec_model_swaps_total") == swaps + 1


def _publish_world(settings: Settings) -> None:
    publisher = EventPublisher(settings, settings.kafka_bootstrap)
    world = SyntheticConfig(1000, 150, 30_000, click_in_taste=0.6, click_off_taste=0.2, seed=3)
    for user, item, kind, ts in iter_events(world):
        publisher.send(user, item, kind, ts=ts)
    publisher.flush()


def test_trainer_cycles_last_success_and_gate_refusals(
    settings: Settings, redis_client: redis.Redis
) -> None:
    def cycles(outcome: str) -> float:
        return _metric("ledrec_trainer_cycles_total", outcome=outcome)

    before = {o: cycles(o) for o in ("activated", "not_activated", "skipped", "failed")}
    refusals = _metric("ledrec_trainer_gate_refusals_total")
    config = RetrainConfig(
        train=TrainConfig(
            pretrain=PretrainConfig(dim=16, min_count=2), finetune=None, n_heldout=100
        ),
        min_events=100,
    )
    trainer = Retrainer(settings, settings.kafka_bootstrap, redis_client, config)
    assert not trainer.run_once().activated  # an empty topic: skipped
    assert cycles("skipped") == before["skipped"] + 1

    _publish_world(settings)
    started = time.time()
    assert trainer.run_once().activated
    assert cycles("activated") == before["activated"] + 1
    assert _metric("ledrec_trainer_last_success_timestamp_seconds") >= started

    # An active version that cannot be beaten (perfect metrics; its artifacts unreadable,
    # so the gate compares the recorded metrics): the next candidate is refused.
    registry = Registry(redis_client, settings.key_prefix)
    best = random_model(seed=9)
    best.metrics = {"ndcg@100": 1.0, "recall@20": 1.0}
    best.version = "v-unbeatable"
    registry.register(best, location=str(settings.home / "nowhere" / best.version))
    registry.activate(best.version)
    result = trainer.run_once()
    assert not result.activated and result.gate_refused, result
    assert cycles("not_activated") == before["not_activated"] + 1
    assert _metric("ledrec_trainer_gate_refusals_total") == refusals + 1
    assert cycles("failed") == before["failed"]


def test_the_trainer_command_serves_its_metrics(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    env = settings_env(settings)
    log = tmp_path / "trainer.log"
    trainer = start_cli(
        ["trainer", "--every", "1h", "--min-events", "10", "--metrics-port", str(port)], env, log
    )
    try:

        def skipped() -> bool:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2.0).text
            except httpx.HTTPError:
                return False
            return bool(
                re.search(r'^ledrec_trainer_cycles_total\{outcome="skipped"\} 1\.0$', text, re.M)
            )

        wait_until(skipped, 60, "the trainer's first (skipped) cycle on its metrics page", 0.2)
        health = start_cli(["health", "trainer", "--port", str(port)], env, log)
        assert health.wait(30) == 0, log.read_text()[-3000:]
    finally:
        trainer.terminate()
        trainer.wait(30)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any("metrics exposed" in line.get("message", "") for line in lines)
