"""The event contract, as written in docs/events.md: the JSON Schema in docs/ is the model's,
and the golden events (tests/golden/events.json) go through the real consumer, as msgpack
and as JSON: every valid one is applied, every invalid one dead-lettered with its reason."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

from ledrec.settings import Settings
from ledrec.stream.events import Event
from ledrec.stream.state import UserStateStore
from tests.helpers import running_consumer, wait_until

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = json.loads((ROOT / "tests" / "golden" / "events.json").read_text())
pytestmark = pytest.mark.contract


def test_the_json_schema_in_docs_is_the_models() -> None:
    checked_in = json.loads((ROOT / "docs" / "event.schema.json").read_text())
    assert checked_in == Event.model_json_schema(), (
        "docs/event.schema.json is stale: regenerate it from ledrec.stream.events.Event"
    )


def _event(case: dict[str, Any], suffix: str) -> dict[str, Any]:
    event = dict(case["event"])
    if event.get("ts") == "now":
        event["ts"] = time.time()
    if isinstance(event.get("user_id"), str) and event["user_id"]:
        event["user_id"] += suffix  # one user per case and encoding
    return event


def _encode(event: dict[str, Any], encoding: str) -> bytes:
    if encoding == "json":
        return json.dumps(event, ensure_ascii=False).encode()
    return msgpack.packb(event)


def _produce(settings: Settings, messages: list[tuple[bytes, bytes]]) -> list[tuple[int, int]]:
    """(partition, offset) of each message, produced as any client would (no ledrec code)."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all"})
    where: dict[int, tuple[int, int]] = {}

    def delivered(n: int) -> Any:
        def on(err: KafkaError | None, msg: Message) -> None:
            assert err is None, err
            where[n] = (msg.partition() or 0, msg.offset() or 0)

        return on

    for n, (key, value) in enumerate(messages):
        producer.produce(settings.events_topic, value, key=key, on_delivery=delivered(n))
    assert producer.flush(15) == 0
    return [where[n] for n in range(len(messages))]


def _dead_letters(settings: Settings, expected: int) -> dict[str, str]:
    """``ledrec.source`` -> ``ledrec.error`` of the dead-letter topic's records."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "dlq-read"})
    consumer.assign([TopicPartition(settings.dead_letter_topic, 0, OFFSET_BEGINNING)])
    out: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 30
        while len(out) < expected and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            headers = {k: (v or b"").decode() for k, v in msg.headers() or []}
            out[headers["ledrec.source"]] = headers["ledrec.error"]
    finally:
        consumer.close()
    return out


@pytest.mark.parametrize("encoding", ["msgpack", "json"])
def test_golden_events_through_the_real_consumer(
    settings: Settings, redis_client: redis.Redis, encoding: str
) -> None:
    suffix = f"-{encoding}"
    valid = [_event(case, suffix) for case in GOLDEN["valid"]]
    invalid = [c for c in GOLDEN["invalid"] if "event" in c or encoding == "msgpack"]
    messages = [(e["user_id"].encode(), _encode(e, encoding)) for e in valid]
    for case in invalid:
        if "event" in case:
            event = _event(case, suffix)
            messages.append((str(event.get("user_id")).encode(), _encode(event, encoding)))
        else:
            messages.append((b"raw", bytes.fromhex(case["payload_hex"])))
    where = _produce(settings, messages)
    store = UserStateStore(redis_client, settings.key_prefix, settings.timeline_max, 0)
    with running_consumer(settings, redis_client):

        def all_applied() -> bool:
            states = store.read_many([e["user_id"] for e in valid], [])
            return all(s is not None and s.size == 1 for s in states)

        wait_until(all_applied, 30, "every valid golden event applied", step=0.1)
        dead = _dead_letters(settings, len(invalid))
    for event in valid:
        state = store.read(event["user_id"], [])
        assert state is not None and state.items == [event["item_id"]], event["user_id"]
    topic = settings.events_topic
    assert len(dead) == len(invalid), dead
    for case, (partition, offset) in zip(invalid, where[len(valid) :], strict=True):
        reason = dead[f"{topic}/{partition}/{offset}"]
        assert case["reason"] in reason, (case["name"], reason)
