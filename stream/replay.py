"""Bounded replay of the events topic: the trainer's view of recent history.

Partitions are assigned directly (no consumer group, nothing committed) and read from the
start of the window to their end. The end is where the partition reports EOF, or the
first message produced after the replay began, so a replay ends even while producers keep
publishing. (High watermarks are not used: Tansu was measured to report 1 for partitions
holding thousands of messages.)
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, TopicPartition

from ledrec.settings import Settings
from ledrec.stream.events import Event, EventCodec, EventError
from ledrec.stream.kafka import client_config


@dataclass
class Replay:
    """The events of a window and where in the topic they came from."""

    events: list[Event] = field(default_factory=list)
    start: dict[int, int] = field(default_factory=dict)  # partition -> first offset read
    end: dict[int, int] = field(default_factory=dict)  # partition -> end offset (exclusive)
    bad: int = 0  # undecodable or invalid messages skipped

    def describe(self, topic: str) -> str:
        """The data range, for the model manifest's provenance."""
        parts = ",".join(f"p{p}:{self.start[p]}-{self.end[p]}" for p in sorted(self.end))
        span = ""
        if self.events:
            first, last = (
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(f(e.ts for e in self.events)))
                for f in (min, max)
            )
            span = f" ts {first}..{last}"
        return f"kafka:{topic} {parts}{span} ({len(self.events)} events)"


def _consumer(settings: Settings, bootstrap: str) -> Consumer:
    return Consumer(
        client_config(
            bootstrap,
            settings.kafka_config,
            **{
                "group.id": f"{settings.consumer_group}-replay-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            },
        )
    )


def _partitions(consumer: Consumer, topic: str, timeout_s: float) -> list[int]:
    meta = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
    if meta.error is not None:
        raise RuntimeError(f"topic {topic}: {meta.error}")
    return sorted(meta.partitions)


def consumed_total(settings: Settings, bootstrap: str, timeout_s: float = 10.0) -> int:
    """Events the state updaters' consumer group has committed, over all partitions."""
    consumer = _consumer(settings, bootstrap)
    try:
        topic = settings.events_topic
        parts = [TopicPartition(topic, p) for p in _partitions(consumer, topic, timeout_s)]
        probe = Consumer(
            client_config(bootstrap, settings.kafka_config, **{"group.id": settings.consumer_group})
        )
        try:
            return sum(max(0, tp.offset) for tp in probe.committed(parts, timeout=timeout_s))
        finally:
            probe.close()
    finally:
        consumer.close()


def replay_events(
    settings: Settings,
    bootstrap: str,
    since_ts: float | None = None,
    max_per_partition: int | None = None,
    timeout_s: float = 60.0,
) -> Replay:
    """Events with ``ts >= since_ts`` (all retained ones if None), at most the last
    ``max_per_partition`` of each partition, decoded and validated."""
    codec = EventCodec(
        settings.event_weights,
        settings.max_id_length,
        settings.max_event_bytes,
        settings.event_ts_min,
        settings.event_ts_max_future_s,
    )
    topic = settings.events_topic
    consumer = _consumer(settings, bootstrap)
    replay = Replay()
    began_ms = int(time.time() * 1000)
    kept: dict[int, deque[Event]] = {}
    try:
        assign = []
        for p in _partitions(consumer, topic, timeout_s):
            low, _ = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            start = low
            if since_ts is not None:
                start = max(start, _offset_at(consumer, topic, p, since_ts, low, timeout_s))
            replay.start[p] = replay.end[p] = start
            kept[p] = deque(maxlen=max_per_partition)
            assign.append(TopicPartition(topic, p, start))
        consumer.assign(assign)
        remaining = set(kept)
        deadline = time.monotonic() + timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"replay of {topic} did not reach the end of {remaining}")
            for msg in consumer.consume(1000, 0.5):
                part, offset, err = msg.partition(), msg.offset(), msg.error()
                if part is None or part not in remaining:
                    continue
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        remaining.discard(part)
                    continue
                if offset is None or msg.timestamp()[1] > began_ms:
                    remaining.discard(part)  # produced after the replay began
                    continue
                replay.end[part] = offset + 1
                try:
                    event = codec.decode(msg.value())
                except EventError:
                    replay.bad += 1
                    continue
                if since_ts is None or event.ts >= since_ts:
                    kept[part].append(event)
    finally:
        consumer.close()
    replay.events = [e for p in sorted(kept) for e in kept[p]]
    return replay


def _offset_at(
    consumer: Consumer, topic: str, partition: int, ts: float, low: int, timeout_s: float
) -> int:
    """First offset at or after ``ts`` (broker time index); ``low`` if the broker cannot say.

    Events are filtered by their own ``ts`` as well, so this only saves reading.
    """
    try:
        found = consumer.offsets_for_times(
            [TopicPartition(topic, partition, int(ts * 1000))], timeout=timeout_s
        )
    except Exception:  # brokers without a time index (or ListOffsets by time): read it all
        return low
    offset = int(found[0].offset)
    return offset if offset >= 0 else low
