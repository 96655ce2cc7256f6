"""The state updater: a consumer-group process turning events into per-user state in Redis.

Per batch: decode and validate every message (bad ones go to the dead-letter topic with
the reason in headers), group the good ones by user and hand them to the state writer
(``ledrec.stream.state.StateWriter``), which sends this batch's writes and settles the previous
batch's: Redis runs one batch's compare-and-set writes while the next is decoded. Kafka
offsets are committed only up to a batch whose writes have all settled, and only after the
dead letters are delivered. A crash anywhere before the commit means those batches are
delivered again and the per-user offsets in Redis skip what was already applied. When the
stream goes idle, on a rebalance and on stop, the write in flight is settled and committed.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import redis
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from prometheus_client import Counter, Gauge, Histogram

from ledrec.connect import REDIS_UNAVAILABLE, admin_client
from ledrec.keyspace import Keyspace
from ledrec.settings import Settings
from ledrec.stream.artifact import Model
from ledrec.stream.backoff import Backoff
from ledrec.stream.events import EventCodec, EventError
from ledrec.stream.incarnation import TopicIncarnations, slot, topic_id
from ledrec.stream.kafka import client_config
from ledrec.stream.model_store import ModelStores
from ledrec.stream.recent import RecentValues
from ledrec.stream.registry import ModelCache, Registry
from ledrec.stream.state import (
    ApplyStats,
    Settled,
    StateWriter,
    TimelineEvent,
    UserStateStore,
    WriteTiming,
)

T = TypeVar("T")

log = logging.getLogger(__name__)
_REPORT_FAILED: tuple[type[Exception], ...] = (*REDIS_UNAVAILABLE, KafkaException)

EVENTS_APPLIED = Counter("ledrec_events_applied_total", "Events applied to user state")
EVENTS_SKIPPED = Counter("ledrec_events_redelivered_total", "Redelivered events skipped")
EVENTS_DEAD = Counter("ledrec_events_dead_lettered_total", "Events sent to the dead-letter topic")
BATCH_SECONDS = Histogram("ledrec_consume_batch_seconds", "Time to apply and commit one batch")
REDIS_RETRIES = Counter("ledrec_consume_redis_retries_total", "Batches retried: Redis unreachable")
NEW_INCARNATIONS = Counter(
    "ledrec_topic_incarnations_total", "Events topic re-created or replaced (a new topic id) seen"
)
FENCED = Counter(
    "ledrec_consumer_fenced_total", "Times this consumer found it was no longer a group member"
)
DEAD_BY_REASON = Counter(
    "ledrec_dead_letters_total", "Events dead-lettered, by the kind of refusal", ["reason"]
)
LAST_POLL = Gauge(
    "ledrec_consumer_last_poll_timestamp_seconds",
    "When the consumer last polled the broker (Unix time): its liveness (`ledrec health`)",
)
_IDLE_STATUS_EVERY_S = 60.0  # well inside the status key's 300 s expiry
LAG = Gauge("ledrec_consumer_lag", "Events in the assigned partitions not yet consumed")
PARTITION_LAG = Gauge(
    "ledrec_consumer_partition_lag",
    "Events in an assigned partition after this consumer's position",
    ["partition"],
)
FRESHNESS = Histogram(
    "ledrec_event_freshness_seconds",
    "An event's Kafka timestamp to its batch settled in Redis (the first and the last event"
    " of each batch)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
STALLS = Counter(
    "ledrec_consumer_stalls_total", "Times the consumer had lag but applied nothing for a while"
)
UNKNOWN_ITEMS = Counter(
    "ledrec_unknown_item_events_total",
    "Events consumed whose item a live model version does not know: kept in the timeline,"
    " they count toward nothing until a version knows them (redeliveries count again)",
    ["version"],
)
OFFSETS_BACKWARDS = Counter(
    "ledrec_offsets_backwards_total",
    "Offsets that went backwards on the same topic incarnation (the broker lost events)",
)

# Test-only fault injection (tests/faults): exit hard right after the Nth batch's Redis
# write, before its offsets are committed — the window the per-user offsets must cover.
FAULT_KILL_AFTER_REDIS_WRITE = "LEDREC_FAULT_KILL_AFTER_REDIS_WRITE"


@dataclass
class ConsumerTotals:
    batches: int = 0
    applied: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    conflicts: int = 0


@dataclass(frozen=True)
class BatchDone:
    """One batch processed (or the write in flight flushed), for ``observe`` hooks."""

    started: float  # time.perf_counter() when it began
    seconds: float
    totals: ConsumerTotals  # the running totals after it (events whose writes settled)
    dead_letters_pending: int  # dead letters produced, not yet delivered


_FENCED_CODES = frozenset(
    {
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.FENCED_INSTANCE_ID,
        KafkaError._ASSIGNMENT_LOST,
    }
)


def _kafka_ts(msg: Message) -> float:
    """A message's Kafka timestamp in seconds (0: none)."""
    kind, ms = msg.timestamp()
    return ms / 1000.0 if kind != 0 and ms > 0 else 0.0


def _fenced(error: KafkaException) -> bool:
    """A commit refused because this consumer is not (or no longer) a member of the group."""
    cause = error.args[0] if error.args else None
    return isinstance(cause, KafkaError) and cause.code() in _FENCED_CODES


class StateUpdater:
    """Consumes the events topic and keeps every user's timeline and running sums.

    ``observe`` / ``observe_writes``: optional hooks called after every batch and with the
    timing of every state write (benchmarks subscribe to them; None costs nothing).
    """

    def __init__(
        self,
        settings: Settings,
        kafka_bootstrap: str,
        redis_client: redis.Redis,
        observe: Callable[[BatchDone], None] | None = None,
        observe_writes: Callable[[WriteTiming], None] | None = None,
    ) -> None:
        self.settings = settings
        self.kafka_bootstrap = kafka_bootstrap
        self.codec = EventCodec(
            settings.event_weights,
            settings.max_id_length,
            settings.max_event_bytes,
            settings.event_ts_min,
            settings.event_ts_max_future_s,
        )
        self.store = UserStateStore(
            redis_client, settings.key_prefix, settings.timeline_max, settings.user_ttl_seconds
        )
        self.models = ModelCache(Registry(redis_client, settings.key_prefix), ModelStores(settings))
        self.consumer = Consumer(
            client_config(
                kafka_bootstrap,
                settings.kafka_config,
                **{
                    "group.id": settings.consumer_group,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "session.timeout.ms": settings.session_timeout_ms,
                    "heartbeat.interval.ms": max(500, settings.session_timeout_ms // 6),
                    "partition.assignment.strategy": settings.consumer_assignment,
                    # the classic group protocol: the local broker does not speak KIP-848
                    "group.protocol": "classic",
                    **(
                        {"group.instance.id": settings.consumer_instance_id}
                        if settings.consumer_instance_id
                        else {}
                    ),
                    "enable.partition.eof": False,
                    # A fetch waits at most this long for data (librdkafka default 500 ms:
                    # Tansu answers an idle fetch only then, which was the whole freshness).
                    # Its own setting; by default the batch wait.
                    "fetch.wait.max.ms": settings.fetch_wait_ms,
                },
            )
        )
        # incremental (cooperative) or eager rebalances: the strategy the passthrough leaves
        strategy = settings.kafka_config.get("partition.assignment.strategy")
        self._cooperative = (strategy or settings.consumer_assignment) == "cooperative-sticky"
        self.dead_letters = Producer(
            client_config(
                kafka_bootstrap,
                settings.kafka_config,
                **{"enable.idempotence": True, "acks": "all", "linger.ms": 5},
            )
        )
        self.totals = ConsumerTotals()
        self.stop_event = threading.Event()
        self.redis = redis_client
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.assigned: list[int] = []
        self.writer = StateWriter(
            self.store, observe_writes, settings.redis_min_replicas, settings.redis_wait_timeout_ms
        )
        self.observe = observe
        self.incarnations = TopicIncarnations(
            redis_client, settings.keyspace_of(redis_client), settings.events_topic
        )
        self._admin: AdminClient | None = None
        self.topic_id, self.incarnation = "", 1
        self._slot_base = 0  # added to partitions: where this incarnation's offsets live
        self._last_seen: dict[int, int] = {}  # partition -> last offset taken (this process)
        self._commit_recorded_at = 0.0
        self._progress_at = time.monotonic()  # when a batch last came (stall detection)
        self._lag_checked_at = 0.0
        self._stall_reported_at = 0.0
        self._uncommitted: dict[tuple[str, int], int] = {}  # last offsets of settled batches
        self._dead_unflushed = 0
        self._settled_batches = 0
        self._fresh_pending: list[float] = []  # Kafka timestamps (s) of the batch in flight
        self.recent_freshness = RecentValues(1024)  # seconds, for the status report
        self._last_lag: int | None = None  # as last measured (the status report)
        self._busy_lag_at = 0.0
        self._reported_at = 0.0
        self._reported_applied = 0
        self._gc_frozen_for: tuple[str, ...] = ()
        # Read once: unset costs one integer comparison per batch.
        self._kill_after_write = int(os.environ.get(FAULT_KILL_AFTER_REDIS_WRITE) or 0)

    def run(self, max_idle_s: float | None = None) -> ConsumerTotals:
        """Consume until stopped (or idle for ``max_idle_s``), then leave the group cleanly."""
        self._retrying(self._check_topic)
        self.consumer.subscribe(
            [self.settings.events_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        last_message = time.monotonic()
        try:
            while not self.stop_event.is_set():
                messages = self.consumer.consume(
                    self.settings.consume_batch_size, self.settings.consume_batch_timeout_s
                )
                LAST_POLL.set(time.time())
                if messages:
                    self.process(messages)
                    last_message = self._progress_at = time.monotonic()
                else:
                    self.flush()
                    self._check_stall()
                    if max_idle_s is not None and time.monotonic() - last_message > max_idle_s:
                        break
        finally:
            try:
                self.flush()
            except REDIS_UNAVAILABLE as e:
                # Not committed: those batches are delivered again and skipped where applied.
                log.warning("stopping with writes unsettled", extra={"error": str(e)})
            self.consumer.close()
            self.dead_letters.flush(10)
        return self.totals

    def process(self, messages: list[Message]) -> None:
        """Send one batch to Redis, settle the previous one, commit what is settled."""
        started = time.perf_counter()
        by_user: dict[str, list[TimelineEvent]] = defaultdict(list)
        last_offsets: dict[tuple[str, int], int] = {}
        decode, weights = self.codec.decode_fields, self.settings.event_weights
        base, last_seen = self._slot_base, self._last_seen
        items: list[str] = []
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("kafka error", extra={"error": str(err)})
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            assert topic is not None and partition is not None and offset is not None
            last_offsets[(topic, partition)] = offset
            if offset < last_seen.get(partition, -1):  # rare: see _offset_went_back
                base = self._offset_went_back(partition, offset, last_seen[partition])
            last_seen[partition] = offset
            try:
                user_id, item_id, kind, _ts = decode(msg.value())
            except EventError as e:
                self._dead_letter(msg, e.reason, e.code)
                continue
            by_user[user_id].append(TimelineEvent(partition + base, offset, item_id, weights[kind]))
            items.append(item_id)
        models = self._retrying(self._live_models)
        for model in models:
            unknown = len(items) - sum(map(model.row_of.__contains__, items))
            if unknown:
                UNKNOWN_ITEMS.labels(model.version).inc(unknown)
        try:
            settled = self.writer.submit(by_user, models)
        except REDIS_UNAVAILABLE as e:
            settled = self._redo_unsettled(e)  # this batch included
        self._record(settled)
        # freshness: observed when this batch is settled (by the next one, or a flush)
        self._fresh_pending = [_kafka_ts(messages[0]), _kafka_ts(messages[-1])]
        if settled.batches == 0 and self.writer.idle:
            self._observe_freshness()
        if time.monotonic() - self._busy_lag_at >= 1.0:  # the lag gauges while busy
            self._busy_lag_at = time.monotonic()
            with contextlib.suppress(KafkaException):
                lag = self.lag(cached=True)
                if lag is not None:
                    LAG.set(lag)
                    self._last_lag = lag
        # Asynchronous commits on the hot path: a commit only ever covers settled batches,
        # and one that is lost is covered by the next (or by the per-user offsets).
        if settled.complete:
            self._commit(asynchronous=True)  # every batch before this one is in Redis
        self._uncommitted.update(last_offsets)
        if settled.batches == 0 and self.writer.idle:
            self._commit(asynchronous=True)  # nothing in flight: this batch needed no write
        self.totals.batches += 1
        seconds = time.perf_counter() - started
        BATCH_SECONDS.observe(seconds)
        if self.observe is not None:
            self.observe(BatchDone(started, seconds, self.totals, self._dead_unflushed))
        first_applied = self.totals.applied and not self._reported_applied
        every = self.settings.consumer_status_every_s
        if first_applied or time.monotonic() - self._reported_at >= every:
            self.report_status()

    def flush(self) -> None:
        """Settle the write in flight, commit every offset, report (idle, rebalance, stop)."""
        if self.writer.idle and not self._uncommitted and not self._dead_unflushed:
            return
        started = time.perf_counter()
        models = self._retrying(self._live_models)
        try:
            settled = self.writer.drain(models)
        except REDIS_UNAVAILABLE as e:
            settled = self._redo_unsettled(e)
        self._record(settled)
        self._commit()
        self.report_status()
        if self.observe is not None:
            seconds = time.perf_counter() - started
            self.observe(BatchDone(started, seconds, self.totals, self._dead_unflushed))

    def _redo_unsettled(self, error: Exception) -> Settled:
        """After a Redis failure mid-pipeline: apply, synchronously, whatever may be missing."""
        REDIS_RETRIES.inc()
        log.warning("redis unavailable; redoing unsettled writes", extra={"error": str(error)})
        return self._retrying(lambda: self.writer.recover(self._live_models()))

    def _record(self, settled: Settled) -> None:
        stats: ApplyStats = settled.stats
        self.totals.applied += stats.applied_events
        self.totals.skipped += stats.skipped_events
        self.totals.conflicts += stats.conflicts
        EVENTS_APPLIED.inc(stats.applied_events)
        EVENTS_SKIPPED.inc(stats.skipped_events)
        self._settled_batches += settled.batches
        if settled.batches:
            self._observe_freshness()
        if settled.batches and self._kill_after_write == self._settled_batches:
            os._exit(137)  # as SIGKILL would: written to Redis, offsets not committed

    def _observe_freshness(self) -> None:
        now = time.time()
        for ts in self._fresh_pending:
            if ts > 0:
                FRESHNESS.observe(max(0.0, now - ts))
                self.recent_freshness.add(max(0.0, now - ts))
        self._fresh_pending = []

    def _commit(self, asynchronous: bool = False) -> None:
        """Commit the offsets of the settled batches, once their dead letters are durable."""
        if self._dead_unflushed:
            if self.dead_letters.flush(30) > 0:
                raise RuntimeError("dead-letter topic unreachable; not committing")
            self.totals.dead_lettered += self._dead_unflushed
            EVENTS_DEAD.inc(self._dead_unflushed)
            self._dead_unflushed = 0
        if self._uncommitted:
            offsets = [TopicPartition(t, p, o + 1) for (t, p), o in self._uncommitted.items()]
            try:
                if asynchronous:  # two calls: the stubs type commit() by a literal flag
                    self.consumer.commit(offsets=offsets, asynchronous=True)
                else:
                    self.consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as e:
                if not _fenced(e):
                    raise
                # Not a member any more (fenced, or a rebalance in progress): the owner of
                # these partitions reads them again from the last commit, and skips what this
                # consumer applied. Rejoining is librdkafka's, on the next poll.
                FENCED.inc()
                log.warning("commit refused: not a group member now", extra={"error": str(e)})
                self._uncommitted = {}
                return
            self._record_commit({p: o for (_, p), o in self._uncommitted.items()}, asynchronous)
            self._uncommitted = {}

    # -- liveness ---------------------------------------------------------------------------
    def lag(self, cached: bool = False) -> int | None:
        """Events in the assigned partitions after this consumer's position (None: unknown);
        sets the per-partition gauge. ``cached``: the high watermarks of the last fetch
        responses (no round trip to the broker: the busy path)."""
        topic = self.settings.events_topic
        parts = [TopicPartition(topic, p) for p in self.assigned]
        if not parts:
            return 0
        total, known = 0, False
        for tp in self.consumer.position(parts):
            _, high = self.consumer.get_watermark_offsets(tp, timeout=2.0, cached=cached)
            if high >= 0 and tp.offset >= 0:
                behind = max(0, high - tp.offset)
            elif high > 0:  # no position yet: everything from the committed offset is due
                behind = high
            else:
                continue
            PARTITION_LAG.labels(str(tp.partition)).set(behind)
            total += behind
            known = True
        return total if known else None

    def _check_stall(self) -> None:
        """Idle with lag for ``consumer_stall_s``: log it and count it (at most once per
        ``consumer_stall_s``), so a consumer that cannot fetch does not stall silently."""
        now = time.monotonic()
        if now - self._lag_checked_at < 1.0:
            return
        self._lag_checked_at = now
        try:
            lag = self.lag()
        except KafkaException as e:
            log.warning("lag unknown", extra={"error": str(e)})
            return
        if lag is None:
            return
        LAG.set(lag)
        changed, self._last_lag = lag != self._last_lag, lag
        # An idle consumer reports too: its lag as it changes, and often enough that its
        # status (which expires) stays visible to `ledrec status` while nothing arrives.
        if changed or time.monotonic() - self._reported_at >= _IDLE_STATUS_EVERY_S:
            self.report_status()
        stall_s = self.settings.consumer_stall_s
        idle = now - self._progress_at
        if lag > 0 and idle >= stall_s and now - self._stall_reported_at >= stall_s:
            self._stall_reported_at = now
            STALLS.inc()
            log.warning(
                "consumer stalled: events are waiting but none arrived",
                extra={
                    "consumer": self.name,
                    "lag": lag,
                    "idle_s": round(idle, 1),
                    "partitions": self.assigned,
                },
            )

    # -- the topic's incarnations (stream/incarnation.py) ---------------------------------
    def _check_topic(self) -> bool:
        """Look up the events topic's id and its incarnation number; whether it changed."""
        if self._admin is None:
            self._admin = admin_client(self.kafka_bootstrap, self.settings.kafka_config)
        found = topic_id(self._admin, self.settings.events_topic)
        number = self.incarnations.number(found)
        changed = (found, number) != (self.topic_id, self.incarnation)
        if changed and self.topic_id:
            NEW_INCARNATIONS.inc()
            log.warning(
                "events topic re-created or replaced: its events are applied as new",
                extra={"topic": self.settings.events_topic, "previous_id": self.topic_id,
                       "topic_id": found, "incarnation": number},
            )  # fmt: skip
        self.topic_id, self.incarnation = found, number
        self._slot_base = slot(0, number)
        return changed

    def _offset_went_back(self, partition: int, offset: int, seen: int) -> int:
        """A partition's offset went below one this process took: the topic was re-created
        (a new incarnation: its events are new), or the broker lost events (logged and
        counted: per-user offsets will skip what looks applied). Returns the slot base."""
        if self._retrying(self._check_topic):
            self._last_seen.clear()
        else:
            OFFSETS_BACKWARDS.inc()
            log.error(
                "offsets went backwards on the same topic incarnation: the broker lost or "
                "rewrote events; events at offsets already applied for a user are skipped",
                extra={"partition": partition, "offset": offset, "previous": seen,
                       "incarnation": self.incarnation},
            )  # fmt: skip
        return self._slot_base

    def _record_commit(self, offsets: dict[int, int], asynchronous: bool) -> None:
        """Remember what was committed, for which topic id (at most once a second on the
        hot path): the next assignment compares it with the broker's log."""
        now = time.monotonic()
        if asynchronous and now - self._commit_recorded_at < 1.0:
            return
        self._commit_recorded_at = now
        try:
            self.incarnations.record_commit(
                self.settings.consumer_group, self.topic_id, self.incarnation, offsets
            )
        except REDIS_UNAVAILABLE as e:
            log.warning("commit not recorded: redis unavailable", extra={"error": str(e)})

    def _check_assignment(self, partitions: list[TopicPartition]) -> None:
        """On assignment: offsets committed for another topic id mean nothing here (read
        this one from the beginning); a log that ends below what was committed lost events."""
        changed = self._retrying(self._check_topic)
        committed_for = self.incarnations.committed_topic(self.settings.consumer_group)
        if self.topic_id and committed_for not in (None, "", self.topic_id):
            log.warning(
                "the group's committed offsets are for another incarnation of the topic: "
                "reading this one from the beginning",
                extra={"committed_for": committed_for, "topic_id": self.topic_id},
            )
            for tp in partitions:
                tp.offset = OFFSET_BEGINNING
            if self._cooperative:
                self.consumer.incremental_assign(partitions)
            else:
                self.consumer.assign(partitions)
        elif not changed:
            ends = self.incarnations.last_committed(self.incarnation)
            for tp in partitions:
                end = ends.get(tp.partition)
                if end is None:
                    continue
                _, high = self.consumer.get_watermark_offsets(tp, timeout=5.0, cached=False)
                if high <= end:
                    OFFSETS_BACKWARDS.inc()
                    log.error(
                        "the topic's log ends below what was committed: the broker lost "
                        "events",
                        extra={"partition": tp.partition, "log_end": high,
                               "committed": end + 1, "incarnation": self.incarnation},
                    )  # fmt: skip
        for tp in partitions:
            self._last_seen.pop(tp.partition, None)

    def _live_models(self) -> list[Model]:
        """The live models; a newly loaded one gets its id index built and is frozen out of
        the cyclic GC (its million-entry structures made every full collection slow)."""
        models = self.models.live_models()
        versions = tuple(m.version for m in models)
        if versions != self._gc_frozen_for:
            for model in models:
                model.row_of  # noqa: B018  # built now, not by the first batch
                UNKNOWN_ITEMS.labels(model.version)  # shown from 0
            for gone in set(self._gc_frozen_for) - set(versions):  # bounded: live versions
                with contextlib.suppress(KeyError):
                    UNKNOWN_ITEMS.remove(gone)
            gc.freeze()
            self._gc_frozen_for = versions
        return models

    def _retrying(self, action: Callable[[], T]) -> T:
        """Run ``action``, retrying with backoff while Redis is unreachable.

        Nothing is committed to Kafka meanwhile, so an outage only delays the batch; a
        write that landed before the connection broke is skipped on the retry by the
        per-user offsets.
        """
        backoff = Backoff()
        while True:
            try:
                return action()
            except REDIS_UNAVAILABLE as e:
                if self.stop_event.is_set():
                    raise
                REDIS_RETRIES.inc()
                delay = backoff.wait(self.stop_event)
                log.warning(
                    "redis unavailable; batch not committed, retrying",
                    extra={"error": str(e), "retried_after_s": round(delay, 3)},
                )

    def report_status(self) -> None:
        """Publish this consumer's totals in Redis (``ledrec status``, the demo, operators)."""
        self._reported_at = time.monotonic()
        self._reported_applied = self.totals.applied
        key = self.settings.keyspace_of(self.redis).consumer(self.name)
        fresh = self.recent_freshness.quantiles(0.5, 0.99)
        status = {
            **vars(self.totals),
            "partitions": self.assigned,
            "lag": self._last_lag,
            "freshness_p50_s": fresh[0] if fresh else None,
            "freshness_p99_s": fresh[1] if fresh else None,
            "updated_at": time.time(),
        }
        try:
            self.redis.set(key, json.dumps(status), ex=300)
        except REDIS_UNAVAILABLE as e:
            # Informational only: never let it stop consumption (the next batch retries).
            log.warning("status not reported: redis unavailable", extra={"error": str(e)})

    # -- rebalances ---------------------------------------------------------------------
    # With cooperative-sticky (the default) these get only the partitions that change
    # hands; the eager strategies revoke and reassign everything.
    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._check_assignment(partitions)
        self.assigned = sorted(set(self.assigned) | {p.partition for p in partitions})
        log.info(
            "partitions assigned",
            extra={
                "consumer": self.name,
                "added": sorted(p.partition for p in partitions),
                "partitions": self.assigned,
            },
        )
        self.report_status()

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self.flush()  # hand the partitions over with everything settled and committed
        except _REPORT_FAILED as e:
            log.warning("revoked with writes unsettled", extra={"error": str(e)})
        self._forget(partitions)
        log.info(
            "partitions revoked",
            extra={
                "consumer": self.name,
                "revoked": sorted(p.partition for p in partitions),
                "partitions": self.assigned,
            },
        )

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Fenced (session timed out, e.g. the process was paused): the partitions may have
        a new owner already, so nothing is committed for them. The writes made are in Redis
        and the new owner skips them by the per-user offsets; the in-flight write is settled
        (a compare-and-set: it cannot overwrite the new owner's). librdkafka rejoins."""
        FENCED.inc()
        try:
            self.writer.drain(self._live_models())
        except _REPORT_FAILED as e:
            log.warning("lost partitions with writes unsettled", extra={"error": str(e)})
        self._uncommitted = {
            tp: o
            for tp, o in self._uncommitted.items()
            if tp[1] not in {p.partition for p in partitions}
        }
        self._forget(partitions)
        log.warning(
            "partitions lost (this consumer was fenced); rejoining the group",
            extra={
                "consumer": self.name,
                "lost": sorted(p.partition for p in partitions),
                "partitions": self.assigned,
            },
        )

    def _forget(self, partitions: list[TopicPartition]) -> None:
        self.assigned = sorted(set(self.assigned) - {p.partition for p in partitions})
        for tp in partitions:
            self._last_seen.pop(tp.partition, None)

    def _dead_letter(self, msg: Message, reason: str, code: str = "invalid") -> None:
        DEAD_BY_REASON.labels(code).inc()  # at dead-lettering (the total counts them durable)
        headers: list[tuple[str, str | bytes | None]] = [
            ("ledrec.error", reason.encode()),
            ("ledrec.error.code", code.encode()),
            ("ledrec.source", f"{msg.topic()}/{msg.partition()}/{msg.offset()}".encode()),
        ]
        self.dead_letters.produce(
            self.settings.dead_letter_topic, value=msg.value(), key=msg.key(), headers=headers
        )
        self.dead_letters.poll(0)
        self._dead_unflushed += 1
        log.info("dead-lettered", extra={"reason": reason, "offset": msg.offset()})


def consumer_statuses(client: redis.Redis, prefix: str) -> dict[str, dict[str, float]]:
    """The status every live consumer last reported (name -> totals)."""
    out: dict[str, dict[str, float]] = {}
    pattern = Keyspace.of(client, prefix).consumers
    for key in client.scan_iter(match=pattern):
        raw = client.get(key)
        if raw is not None:
            out[Keyspace.name_in(key, pattern)] = json.loads(raw)
    return out
