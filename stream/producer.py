"""Publishing events to Kafka, from code (``EventPublisher``) and from files (CLI)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TextIO

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from ledrec.connect import resolve_kafka_bootstrap
from ledrec.errors import LedrecError
from ledrec.settings import Settings
from ledrec.stream.events import Event, EventCodec, EventError
from ledrec.stream.kafka import client_config


class PublishError(LedrecError, RuntimeError):
    """Events that the broker did not acknowledge, listed in ``undelivered`` (each user's in
    the order published: one partition per user).

    Not acknowledged is not proof of not written: an event in flight when the broker went
    away may be in the log, so publishing ``undelivered`` again may duplicate it.
    """

    def __init__(
        self, message: str, undelivered: list[Event] | None = None, broker_lost: int = 0
    ) -> None:
        super().__init__(message)
        self.undelivered = undelivered or []
        # Acknowledgements at offsets the broker had already acknowledged: it reused offsets
        # (lost its log's tail on a restart), so events acknowledged earlier may be gone.
        self.broker_lost = broker_lost


@dataclass
class DeliveryReport:
    delivered: int = 0
    failed: int = 0  # since the last flush
    errors: list[str] = field(default_factory=list)  # first few reasons, since the last flush
    undelivered: list[Event] = field(default_factory=list)  # since the last flush
    reused_offsets: int = 0  # acks at an already acknowledged offset, since the last flush
    # partition -> highest acknowledged offset: what a consumer must reach to have seen all
    last_offsets: dict[int, int] = field(default_factory=dict)


class EventPublisher:
    """Validates events and produces them keyed by user, with idempotent, acked delivery.

    ``publish`` queues; ``flush`` waits for the broker's acknowledgements and raises
    ``PublishError`` if any event was not delivered, so success means durable. As a context
    manager it flushes on leaving the block.
    """

    def __init__(self, settings: Settings, kafka_bootstrap: str) -> None:
        self.settings = settings
        self.codec = EventCodec(
            settings.event_weights,
            settings.max_id_length,
            settings.max_event_bytes,
            settings.event_ts_min,
            settings.event_ts_max_future_s,
        )
        self.producer = Producer(
            client_config(
                kafka_bootstrap,
                settings.kafka_config,
                **{
                    "enable.idempotence": True,  # no duplicates on retry, order kept
                    # Java's default partitioner (murmur2 of the key bytes): a user lands on
                    # the same partition whichever language publishes (docs/events.md)
                    "partitioner": "murmur2_random",
                    "acks": "all",
                    "linger.ms": 5,
                    "compression.type": "lz4",
                    "delivery.timeout.ms": 30000,
                },
            )
        )
        self.report = DeliveryReport()

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> EventPublisher:
        """A publisher for the deployment ``settings`` describe (default: ``Settings()``, i.e.
        the environment, else the local stack ``ledrec stack up`` recorded)."""
        settings = settings if settings is not None else Settings()
        return cls(settings, resolve_kafka_bootstrap(settings))

    def close(self, timeout_s: float = 30.0) -> DeliveryReport:
        """Flush (``PublishError`` if an event was not delivered), then drop the producer."""
        try:
            return self.flush(timeout_s)
        finally:
            self.producer = None  # type: ignore[assignment]  # librdkafka's handle is freed

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()  # raises PublishError: leaving the block means "delivered"
        else:
            self.producer.flush(5.0)
            self.producer = None  # type: ignore[assignment]

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.report.delivered += 1
            partition, offset = msg.partition(), msg.offset()
            if partition is not None and offset is not None:
                last = self.report.last_offsets.get(partition, -1)
                if offset <= last:  # acks of one partition come in offset order
                    self.report.reused_offsets += 1
                self.report.last_offsets[partition] = max(last, offset)
        else:
            self.report.failed += 1
            self.report.undelivered.append(self.codec.decode(msg.value()))
            if len(self.report.errors) < 10:
                self.report.errors.append(str(err))

    def publish(self, event: Event) -> None:
        """Queue one event (checked against the deployment's rules: ``EventError``)."""
        payload = self.codec.encode(self.codec.check(event))
        while True:
            try:
                self.producer.produce(
                    self.settings.events_topic,
                    value=payload,
                    key=event.user_id.encode(),
                    on_delivery=self._on_delivery,
                )
                break
            except BufferError:  # local queue full: let deliveries drain
                self.producer.poll(0.1)
            except KafkaException as e:
                raise PublishError(str(e)) from e
        self.producer.poll(0)

    def send(self, user_id: Any, item_id: Any, type: str, ts: float | None = None) -> Event:
        """Validate and publish one event; raises EventError on bad input."""
        event = self.codec.make(user_id, item_id, type, ts)
        self.publish(event)
        return event

    def flush(self, timeout_s: float = 30.0) -> DeliveryReport:
        """Wait for every acknowledgement; raise PublishError listing the events without one.

        Events still unacknowledged after ``timeout_s`` are purged (so the error lists them
        and they cannot arrive later behind the caller's back). After the error the
        publisher is usable again: ``failed``/``undelivered`` restart from zero.
        """
        if self.producer.flush(timeout_s):
            self.report.errors.append(f"unacknowledged after {timeout_s}s")
            self.producer.purge()  # their delivery callbacks fire with a purge error
            self.producer.flush(5.0)
        report = self.report
        if report.failed or report.reused_offsets:
            reasons = list(report.errors)
            if report.reused_offsets:
                reasons.append(
                    f"the broker acknowledged {report.reused_offsets} events at offsets it had "
                    "already acknowledged: it lost part of its log, earlier events may be gone"
                )
            error = PublishError(
                f"{report.failed} events not delivered; {'; '.join(reasons)}",
                report.undelivered,
                report.reused_offsets,
            )
            report.failed, report.errors, report.undelivered = 0, [], []
            report.reused_offsets = 0
            raise error
        return report


@dataclass
class BadRow:
    line: int
    reason: str


def read_rows(stream: TextIO, fmt: str) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """Rows of a CSV (with header) or JSON-lines input: (line number, row or None, error)."""
    if fmt == "csv":
        reader = csv.DictReader(stream)
        for row in reader:
            yield reader.line_num, dict(row), ""
    elif fmt == "jsonl":
        for n, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield n, None, f"invalid JSON: {e.msg}"
                continue
            if not isinstance(obj, dict):
                yield n, None, "a JSON line must be an object"
                continue
            yield n, obj, ""
    else:
        raise ValueError(f"unknown format {fmt!r} (csv or jsonl)")


def events_from_rows(
    rows: Iterable[tuple[int, dict[str, Any] | None, str]], codec: EventCodec
) -> Iterator[tuple[int, Event | None, str]]:
    """Validate each row into an Event, or give the line's error."""
    for line, row, error in rows:
        if row is None:
            yield line, None, error
            continue
        try:
            yield (
                line,
                codec.make(row.get("user_id"), row.get("item_id"), row.get("type"), row.get("ts")),
                "",
            )
        except EventError as e:
            yield line, None, e.reason


def sniff_format(path_name: str, first: str) -> str:
    """'jsonl' for .json/.jsonl files or input starting with '{', else 'csv'."""
    if path_name.endswith((".json", ".jsonl")) or first.lstrip().startswith("{"):
        return "jsonl"
    return "csv"
