"""Dead letters an operator can read: ``ledrec dlq tail`` prints the newest with their
source, code and reason; ``ledrec_dead_letters_total`` counts them by code."""

from __future__ import annotations

import json
import subprocess
import sys

import redis
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from ledrec.settings import Settings
from tests.helpers import (
    publish_model,
    random_model,
    running_consumer,
    settings_env,
    wait_until,
)


def test_dead_letters_by_code_and_dlq_tail(settings: Settings, redis_client: redis.Redis) -> None:
    publish_model(settings, redis_client, random_model(n_items=20, dim=4))
    bad = [
        b"\xff\x00garbage",
        json.dumps({"user_id": "u", "item_id": "i1", "type": "teleport", "ts": 1.7e9}).encode(),
        json.dumps({"user_id": "u", "item_id": "i1", "type": "view", "ts": 1.7e9, "x": 1}).encode(),
    ]
    before = {
        code: REGISTRY.get_sample_value("ledrec_dead_letters_total", {"reason": code}) or 0.0
        for code in ("undecodable", "unknown_type", "extra_field")
    }
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for value in bad:
        producer.produce(settings.events_topic, value=value, key=b"u")
    producer.flush(10)
    with running_consumer(settings, redis_client) as updater:
        wait_until(lambda: updater.totals.dead_lettered >= 3, 30, "dead-lettered", step=0.1)
    for code, was in before.items():
        now = REGISTRY.get_sample_value("ledrec_dead_letters_total", {"reason": code})
        assert now == was + 1, code

    run = subprocess.run(
        [sys.executable, "-m", "ledrec.cli", "dlq", "tail", "-n", "5"],
        env=settings_env(settings), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    letters = [json.loads(line) for line in run.stdout.splitlines()]
    assert sorted(letter["code"] for letter in letters) == sorted(before)
    assert all(letter["source"].startswith(settings.events_topic + "/") for letter in letters)
    by_code = {letter["code"]: letter for letter in letters}
    assert "teleport" in by_code["unknown_type"]["reason"]
    assert by_code["undecodable"]["payload"].startswith("hex:ff00")
