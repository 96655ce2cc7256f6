"""The one way user states are written: ``StateWriter`` applies batches of events, exactly once.

Per user: read the state, drop events at or below the stored offsets, compute the new
timeline and window sums, write them with a compare-and-set on ``seq``
(``schema.APPLY_SCRIPT``). A zombie consumer, a redelivery after a crash or the re-encoder
racing the consumer therefore can never apply an event twice or lose one: the loser of a
race re-reads and recomputes.

``apply`` does that synchronously. ``submit`` pipelines it: the writes of batch N are sent
without waiting; while Redis runs them the consumer decodes batch N+1, reads its users'
states and only then collects N's replies:

* a user of N+1 who was also written in N is planned on the state N's write will leave
  (its *projection*), not on a read that could overtake that write;
* a user whose write in N lost its compare-and-set (a zombie consumer, the re-encoder) is
  re-read, and their events of N are redone before those of N+1 — so per-user order holds;
  the projection of such a user is never used, and their write in N+1 would fail its
  compare-and-set anyway (seq moved).

A batch counts as applied once its writes are settled with no user carried over, and,
with ``min_replicas`` > 0, once they reached that many replicas (``WAIT``: Redis
replicates asynchronously, so a primary that dies before its replica has a write would
lose it after the offset was committed); the consumer commits Kafka offsets only then.
``unsettled`` (the events of the write in flight) plus the batch being submitted is always
a superset of the events not yet known to be in Redis (durably): after a Redis failure
``recover`` redoes them synchronously (the per-user offsets skip whatever had landed), and
keeps them until that succeeds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis

from ledrec.stream._cluster import raw_connection, wait_replicated
from ledrec.stream._resp import execute_raw
from ledrec.stream.artifact import Model
from ledrec.stream.state._plan import PreparedWrites, combine, prepare, projection, settle
from ledrec.stream.state.schema import (
    ApplyStats,
    TimelineEvent,
    UserState,
    parse_states,
    partitions_of,
)
from ledrec.stream.state.store import UserStateStore


@dataclass
class Settled:
    """What settling the write in flight found."""

    stats: ApplyStats = field(default_factory=ApplyStats)
    batches: int = 0  # 1 if a write was in flight and is now settled
    complete: bool = True  # every event up to the settled batch is in Redis
    writes: PreparedWrites | None = None  # the settled write


_T = TypeVar("_T")


@dataclass(frozen=True)
class WriteTiming:
    """How one ``submit`` / ``apply`` / ``drain`` spent its time (for ``observe`` hooks)."""

    call: str  # "submit", "apply" or "drain"
    events: int  # events handed in
    wall_s: float
    cpu_s: float  # thread CPU of the whole call
    wait_s: float  # waiting for Redis replies (wall minus thread CPU of the reads)
    reply_cpu_s: float  # thread CPU reading replies (the rest of cpu_s: planning, packing)


# Users per chunk of a batch's writes sent while the rest is planned (a few ms of Redis work).
EARLY_CHUNK_USERS = 500


class ReplicationShortfall(redis.TimeoutError):
    """Writes acknowledged by their primary did not reach ``min_replicas`` replicas in time:
    not durable yet, so their events are redone (skipped where they landed) and waited for
    again before any offset is committed."""


class StateWriter:
    """Applies batches of events to user state, exactly once, with one batch's writes in
    flight (``submit``) or synchronously (``apply``)."""

    def __init__(
        self,
        store: UserStateStore,
        observe: Callable[[WriteTiming], None] | None = None,
        min_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> None:
        """``observe``: called with the timing of every call (benchmarks); None: untimed.
        ``min_replicas``: replicas every write must reach before it counts as settled (0:
        acknowledged by the primary is enough); ``wait_timeout_ms`` bounds each wait."""
        self.store = store
        self.observe = observe
        self.min_replicas = min_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._marker_stem = store.keys.replication_marker.encode()
        self._waited = self._reply_cpu = 0.0
        self._missing: dict[str, list[TimelineEvent]] = {}  # to redo after a Redis failure
        self._writes = raw_connection(store.client)  # the write in flight, in order
        self._reads = raw_connection(store.client)
        self._inflight: PreparedWrites | None = None
        # users of the write in flight -> their plan's index in it (see ``_plan.projection``)
        self._projected: dict[str, int] = {}
        self._projected_partitions: set[int] = set()  # whose offsets the projections hold
        self.unsettled: dict[str, list[TimelineEvent]] = {}
        self._incoming: dict[str, list[TimelineEvent]] = {}  # the batch being submitted

    def submit(self, batch: dict[str, list[TimelineEvent]], models: Sequence[Model]) -> Settled:
        """Send ``batch``'s writes (not waiting for them) and settle the previous batch's.

        Users not in the write in flight are read and planned first, while Redis is still
        running that write; only the users in it wait for its replies.
        """
        return self._observed("submit", batch, lambda: self._submit(batch, models))

    def _submit(self, batch: dict[str, list[TimelineEvent]], models: Sequence[Model]) -> Settled:
        self._incoming = batch  # until sent: ``recover`` adds it to what may be missing
        versions = [m.version for m in models]
        partitions = partitions_of(batch)
        in_flight = self._projected  # users of the write in flight -> their plan in it
        stats = ApplyStats()
        fresh = [u for u in batch if u not in in_flight]
        parts: list[PreparedWrites] = []
        if fresh:
            self._reads.send(self.store.read_commands(fresh, versions, partitions))
            states = parse_states(self._wait(self._reads.receive), versions, partitions)
            # Sent chunk by chunk as planned, behind the write in flight: Redis runs each
            # chunk while the next is planned, instead of idling until the whole batch is,
            # and the next batch's reads then wait behind less (NOTES.md, "Ingest").
            for lo in range(0, len(fresh), EARLY_CHUNK_USERS):
                users = fresh[lo : lo + EARLY_CHUNK_USERS]
                part = prepare(
                    self.store, {u: batch[u] for u in users}, users,
                    states[lo : lo + len(users)], models, stats,
                )  # fmt: skip
                if part.commands:
                    self._writes.send(part.commands)
                parts.append(part)
        settled, carried = self._settle()
        # The rest: users of the settled write (on its projection, unless it lacks some
        # partition's offsets) and users carried over from it (re-read, events of N first).
        rest = dict(carried)
        for user in batch:
            if user in in_flight:
                rest[user] = rest[user] + batch[user] if user in carried else batch[user]
        if rest:
            reuse = self._projected_partitions.issuperset(partitions)
            to_read = [u for u in rest if u in carried or not reuse]
            wider = sorted(set(partitions) | set(partitions_of(carried)))
            by_user = dict(
                zip(
                    to_read,
                    self._wait(self.store.read_many, to_read, versions, wider),
                    strict=True,
                )
            )
            users = list(rest)
            rest_states: list[UserState | None] = []
            for user in users:
                if user in by_user:
                    rest_states.append(by_user[user])
                else:
                    assert settled.writes is not None
                    rest_states.append(projection(settled.writes, in_flight[user]))
            late = prepare(self.store, rest, users, rest_states, models, stats)
            if late.commands:
                self._writes.send(late.commands)
            parts.append(late)
        writes = combine(parts, versions)
        settled.stats.skipped_events += stats.skipped_events
        self._projected = {plan.user_id: j for j, plan in enumerate(writes.plans)}
        self._projected_partitions = set(partitions)
        if writes.commands:
            self._inflight = writes
        self.unsettled = {
            plan.user_id: writes.events_by_user[plan.user_id] for plan in writes.plans
        }
        self._incoming = {}
        return settled

    def drain(self, models: Sequence[Model]) -> Settled:
        """Settle the write in flight and redo what it carried over, synchronously."""
        return self._observed("drain", {}, lambda: self._drain(models))

    def _drain(self, models: Sequence[Model]) -> Settled:
        settled, carried = self._settle()
        self._projected = {}
        if carried:
            redo = self._apply(carried, models)
            settled.stats.applied_events += redo.applied_events
            settled.stats.skipped_events += redo.skipped_events
            settled.stats.conflicts += redo.conflicts
        settled.complete = True
        self.unsettled = {}
        return settled

    def apply(
        self, events_by_user: dict[str, list[TimelineEvent]], models: Sequence[Model]
    ) -> ApplyStats:
        """Apply each user's new events (in offset order) to their state, synchronously.

        One round trip reads every user of the batch, the window sums of all of them are
        computed at once per model, one round trip writes them with the per-user
        compare-and-set script; users who lost a race are re-read and redone. Returns when
        every user's write has succeeded: only then may Kafka offsets be committed. Not to
        be mixed with a ``submit`` in flight (``drain`` or ``recover`` first).
        """
        return self._observed("apply", events_by_user, lambda: self._apply(events_by_user, models))

    def _apply(
        self, events_by_user: dict[str, list[TimelineEvent]], models: Sequence[Model]
    ) -> ApplyStats:
        stats = ApplyStats(users=len(events_by_user))
        versions = [m.version for m in models]
        pending = events_by_user
        written: list[str] = list(events_by_user)  # redone writes may have landed on none
        while pending:
            users = list(pending)
            partitions = partitions_of(pending)
            states = self._wait(self.store.read_many, users, versions, partitions)
            writes = prepare(self.store, pending, users, states, models, stats)
            if writes.commands:
                replies = self._wait(execute_raw, self.store.client, writes.commands)
                settle(self.store, writes, replies, stats)
            pending = writes.retry
        self._wait_durable(written)
        return stats

    def _wait_durable(self, users: Sequence[str]) -> None:
        """With ``min_replicas``: return once the writes of ``users`` reached that many
        replicas, else raise ``ReplicationShortfall``."""
        if not self.min_replicas or not users:
            return
        keys = [self.store.key_prefix + u.encode() for u in users]
        reached = self._wait(
            wait_replicated,
            self.store.client, self._marker_stem, keys, self.min_replicas, self.wait_timeout_ms,
        )  # fmt: skip
        if reached < self.min_replicas:
            raise ReplicationShortfall(
                f"writes reached {reached} of {self.min_replicas} replicas within "
                f"{self.wait_timeout_ms} ms"
            )

    def recover(self, models: Sequence[Model]) -> Settled:
        """After a Redis failure: forget the write in flight and apply, synchronously, every
        event that may be missing (the batch being submitted included).

        If this fails too, the events are kept for the next ``recover``.
        """
        self._writes.close()
        self._reads.close()
        self._inflight = None
        self._projected = {}
        self._missing = _merge(self._missing, _merge(self.unsettled, self._incoming))
        self.unsettled, self._incoming = {}, {}
        stats = self._apply(self._missing, models)
        self._missing = {}
        return Settled(stats, batches=1, complete=True)

    @property
    def idle(self) -> bool:
        """Nothing in flight and nothing to recover."""
        return not self.unsettled and not self._missing

    def _observed(
        self, call: str, batch: dict[str, list[TimelineEvent]], run: Callable[[], _T]
    ) -> _T:
        if self.observe is None:
            return run()
        self._waited = self._reply_cpu = 0.0
        t0, c0 = time.perf_counter(), time.thread_time()
        result = run()
        wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
        events = sum(len(evs) for evs in batch.values())
        self.observe(WriteTiming(call, events, wall, cpu, self._waited, self._reply_cpu))
        return result

    def _wait(self, read: Callable[..., _T], *args: Any) -> _T:
        """``read(*args)``, a Redis round trip, timed when observed."""
        if self.observe is None:
            return read(*args)
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return read(*args)
        finally:
            cpu = time.thread_time() - c0
            self._waited += time.perf_counter() - t0 - cpu
            self._reply_cpu += cpu

    def _settle(self) -> tuple[Settled, dict[str, list[TimelineEvent]]]:
        settled = Settled()
        writes, self._inflight = self._inflight, None
        if writes is None:
            return settled, {}
        # only its replies: the next batch's first chunks may be queued behind them
        replies = self._wait(self._writes.receive, len(writes.commands))
        settle(self.store, writes, replies, settled.stats)
        self._wait_durable([plan.user_id for plan in writes.plans])
        settled.batches = 1
        settled.complete = not writes.retry
        settled.writes = writes
        return settled, writes.retry


def _merge(
    first: dict[str, list[TimelineEvent]], then: dict[str, list[TimelineEvent]]
) -> dict[str, list[TimelineEvent]]:
    """Per user, ``first``'s events before ``then``'s (offset order); inputs unchanged."""
    if not first:
        return dict(then)
    out = dict(first)
    for user, events in then.items():
        before = out.get(user)
        out[user] = events if before is None else before + events
    return out
