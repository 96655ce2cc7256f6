"""Reading the dead-letter topic back: the newest dead letters with their reasons
(``ledrec dlq tail``, the gateway's ``/v1/dead-letters``, the dashboard).

Each dead letter carries its reason in headers (``ledrec.source``, ``ledrec.error.code``,
``ledrec.error``) and the original payload, bytes as they arrived.
"""

from __future__ import annotations

import collections
import time
from typing import TypedDict

from confluent_kafka import Consumer, Message, TopicPartition

from ledrec.errors import LedrecError
from ledrec.settings import Settings
from ledrec.stream.kafka import client_config

__all__ = ["DeadLetter", "NoDeadLetterTopic", "newest_dead_letters"]


class DeadLetter(TypedDict):
    partition: int
    offset: int
    source: str | None  # the topic the event came from
    code: str | None  # EventError.code: a fixed set (the metrics' reason label)
    reason: str | None  # the full message
    payload: str  # UTF-8 text, or "hex:..." for bytes that are not


class NoDeadLetterTopic(LedrecError, LookupError):
    """The deployment's dead-letter topic does not exist (yet)."""


def newest_dead_letters(
    settings: Settings, bootstrap: str, n: int = 20, quiet_s: float = 1.0, limit_s: float = 30.0
) -> list[DeadLetter]:
    """The newest ``n`` dead letters of each partition, oldest first within a partition.

    Reads on until the topic has been quiet ``quiet_s`` (a broker may report a stale log
    end, so the watermark alone is not trusted), at most ``limit_s``.
    """
    reader = Consumer(
        client_config(
            bootstrap,
            settings.kafka_config,
            **{"group.id": "ledrec-dlq-tail", "enable.auto.commit": False},
        )
    )
    topic = settings.dead_letter_topic
    try:
        metadata = reader.list_topics(topic, timeout=10)
        if topic not in metadata.topics or metadata.topics[topic].error is not None:
            raise NoDeadLetterTopic(f"no dead-letter topic {topic!r}")
        parts = []
        for p in metadata.topics[topic].partitions:
            low, high = reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            parts.append(TopicPartition(topic, p, max(low, high - n)))
        reader.assign(parts)
        newest: dict[int, collections.deque[DeadLetter]] = {}
        quiet_since = started = time.monotonic()
        while time.monotonic() - quiet_since < quiet_s and time.monotonic() - started < limit_s:
            msg = reader.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            quiet_since = time.monotonic()
            letter = _dead_letter(msg)
            newest.setdefault(letter["partition"], collections.deque(maxlen=n)).append(letter)
    finally:
        reader.close()
    return [letter for partition in sorted(newest) for letter in newest[partition]]


def _dead_letter(msg: Message) -> DeadLetter:
    headers: dict[str, str] = {}
    for pair in msg.headers() or []:
        key, raw = pair[0], pair[1]
        headers[key] = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    value = msg.value() or b""
    value = value.encode() if isinstance(value, str) else value
    try:
        payload = value.decode("utf-8")
    except UnicodeDecodeError:
        payload = "hex:" + value.hex()
    return DeadLetter(
        partition=msg.partition() or 0,
        offset=msg.offset() or 0,
        source=headers.get("ledrec.source"),
        code=headers.get("ledrec.error.code"),
        reason=headers.get("ledrec.error"),
        payload=payload,
    )
