"""Kafka access: the SASL/SSL passthrough (``Settings.kafka_config``) reaches the config of
every Kafka client the code builds, and cannot weaken the delivery guarantees."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import redis
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from ledrec import connect
from ledrec.settings import Settings
from ledrec.stream import consumer, producer, replay
from ledrec.stream.kafka import client_config

SECURE = {
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.username": "ledrec",
    "sasl.password": "s3cret",
    "ssl.endpoint.identification.algorithm": "https",
}
NOWHERE = "127.0.0.1:9"  # the clients are built (config validated by librdkafka), not used
ROOT = Path(__file__).resolve().parents[2]


def test_sasl_ssl_settings_reach_every_client(
    monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis
) -> None:
    built: list[tuple[str, dict[str, Any]]] = []

    def recording(cls: type) -> type:
        """The real client class, noting each config it is built with."""

        class Recorded(cls):  # type: ignore[misc]
            def __init__(self, conf: dict[str, Any]) -> None:
                built.append((cls.__name__, dict(conf)))
                super().__init__(conf)

        return Recorded

    for module, name, cls in [
        (consumer, "Consumer", Consumer), (consumer, "Producer", Producer),
        (producer, "Producer", Producer), (replay, "Consumer", Consumer),
        (connect, "AdminClient", AdminClient),
    ]:  # fmt: skip
        monkeypatch.setattr(module, name, recording(cls))
    settings = Settings(kafka_bootstrap=NOWHERE, redis_url="redis://unused", kafka_config=SECURE)

    consumer.StateUpdater(settings, NOWHERE, redis_client)  # group consumer + DLQ producer
    producer.EventPublisher(settings, NOWHERE)
    replay._consumer(settings, NOWHERE)  # the trainer's replay
    connect.admin_client(NOWHERE, settings.kafka_config)  # ensure_topics, wait_for_kafka

    assert [name for name, _ in built] == ["Consumer", "Producer", "Producer", "Consumer",
                                           "AdminClient"]  # fmt: skip
    for name, conf in built:
        assert SECURE.items() <= conf.items(), name


def test_every_kafka_client_is_built_from_the_passthrough() -> None:
    """No Consumer/Producer/AdminClient in the code bypasses ``client_config``/``admin_client``
    (so the passthrough cannot be forgotten by a new client)."""
    offenders = []
    for package in ("ledrec", "stream", "deploy", "training"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                    continue
                if node.func.id not in ("Consumer", "Producer", "AdminClient"):
                    continue
                arg = ast.unparse(node.args[0]) if node.args else ""
                if not (arg.startswith("client_config(") or "kafka_config" in arg):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {arg[:60]}")
    assert not offenders, offenders


def test_the_fetch_wait_is_its_own_setting(
    monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis
) -> None:
    built: list[dict[str, Any]] = []

    class Recorded(Consumer):  # type: ignore[misc]
        def __init__(self, conf: dict[str, Any]) -> None:
            built.append(dict(conf))
            super().__init__(conf)

    monkeypatch.setattr(consumer, "Consumer", Recorded)
    default = Settings(kafka_bootstrap=NOWHERE, redis_url="redis://unused")
    own = default.model_copy(update={"consume_fetch_wait_ms": 250})
    for settings in (default, own):
        consumer.StateUpdater(settings, NOWHERE, redis_client)
    assert [c["fetch.wait.max.ms"] for c in built] == [10, 250]


WEAKER = [("enable.auto.commit", "true"), ("enable.idempotence", "false"), ("acks", "1")]


@pytest.mark.parametrize(("key", "value"), WEAKER)
def test_the_passthrough_cannot_weaken_delivery_guarantees(key: str, value: str) -> None:
    base = {"enable.auto.commit": False, "enable.idempotence": True, "acks": "all"}
    with pytest.raises(ValueError, match=key):
        client_config(NOWHERE, {key: value}, **base)
    assert client_config(NOWHERE, {key: str(base[key]).lower()}, **base)[key] is not None
