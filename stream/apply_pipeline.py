"""Pipelined state updates: one batch's writes run in Redis while the next batch is prepared.

``UserStateStore.apply`` does read → compute → write → wait for each batch; the consumer sat
idle for the whole write (Redis running ~2,000 compare-and-set scripts). Here the writes of
batch N are sent without waiting; while Redis runs them the consumer decodes batch N+1,
reads its users' states and only then collects N's replies:

* a user of N+1 who was also written in N is planned on the state N's write will leave
  (its *projection*), not on a read that could overtake that write;
* a user whose write in N lost its compare-and-set (a zombie consumer, the re-encoder) is
  re-read, and their events of N are redone before those of N+1 — so per-user order holds;
  the projection of such a user is never used, and their write in N+1 would fail its
  compare-and-set anyway (seq moved).

A batch counts as applied once its writes are settled with no user carried over; the
consumer commits Kafka offsets only then. ``unsettled`` is always a superset of the events
not yet known to be in Redis, so after a Redis failure the consumer can redo exactly that
with ``UserStateStore.apply`` (the per-user offsets skip whatever had landed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from stream.artifact import Model
from stream.state import (
    ITEM_SEP,
    ApplyStats,
    PreparedWrites,
    RawConnection,
    TimelineEvent,
    UserState,
    UserStateStore,
    partitions_of,
)


@dataclass
class Settled:
    """What settling the write in flight found."""

    stats: ApplyStats = field(default_factory=ApplyStats)
    batches: int = 0  # 1 if a write was in flight and is now settled
    complete: bool = True  # every event up to the settled batch is in Redis
    writes: PreparedWrites | None = None  # the settled write


class ApplyPipeline:
    """Applies batches of events to user state with one batch's writes in flight."""

    def __init__(self, store: UserStateStore) -> None:
        self.store = store
        self._writes = RawConnection(store.client)  # the write in flight, in order
        self._reads = RawConnection(store.client)
        self._inflight: PreparedWrites | None = None
        # users of the write in flight -> their plan's index in it (see ``_projection``)
        self._projected: dict[str, int] = {}
        self._projected_partitions: set[int] = set()  # whose offsets the projections hold
        self.unsettled: dict[str, list[TimelineEvent]] = {}

    def submit(self, batch: dict[str, list[TimelineEvent]], models: Sequence[Model]) -> Settled:
        """Send ``batch``'s writes (not waiting for them) and settle the previous batch's."""
        self.unsettled = _merge(self.unsettled, batch)  # a failure below redoes all of it
        versions = [m.version for m in models]
        partitions = partitions_of(batch)
        in_flight = self._projected  # users of the write in flight, as it will leave them
        if not self._projected_partitions.issuperset(partitions):
            self._projected = {}  # they lack some partitions' offsets: re-read, after settling
        to_read = [u for u in batch if u not in in_flight]
        if to_read:
            self._reads.send(self.store.read_commands(to_read, versions, partitions))
        settled, carried = self._settle()
        states: dict[str, UserState | None] = {}
        if to_read:
            read = self.store.parse_states(self._reads.receive(), versions, partitions)
            states.update(zip(to_read, read, strict=True))
        work = _merge(carried, batch) if carried else dict(batch)
        late = [u for u in work if u not in states and u not in self._projected]
        if late:  # carried over, or a projection that lacks offsets: read now, N has settled
            wider = sorted(set(partitions) | set(partitions_of(carried)))
            states.update(zip(late, self.store.read_many(late, versions, wider), strict=True))
        if len(states) < len(work):
            assert settled.writes is not None  # users not read are projected from it
            for user in work:
                if user not in states:
                    states[user] = _projection(settled.writes, self._projected[user])
        users = list(work)
        writes = self.store.prepare(work, users, [states[u] for u in users], models, settled.stats)
        self._projected = {plan.user_id: j for j, plan in enumerate(writes.plans)}
        self._projected_partitions = set(partitions)
        if writes.commands:
            self._writes.send(writes.commands)
            self._inflight = writes
        self.unsettled = {plan.user_id: work[plan.user_id] for plan in writes.plans}
        return settled

    def drain(self, models: Sequence[Model]) -> Settled:
        """Settle the write in flight and redo what it carried over, synchronously."""
        settled, carried = self._settle()
        self._projected = {}
        if carried:
            redo = self.store.apply(carried, models)
            settled.stats.applied_events += redo.applied_events
            settled.stats.skipped_events += redo.skipped_events
            settled.stats.conflicts += redo.conflicts
        settled.complete = True
        self.unsettled = {}
        return settled

    def abandon(self) -> dict[str, list[TimelineEvent]]:
        """Forget the write in flight (Redis failed); returns every event maybe not applied."""
        self._writes.close()
        self._reads.close()
        self._inflight = None
        self._projected = {}
        unsettled, self.unsettled = self.unsettled, {}
        return unsettled

    def _settle(self) -> tuple[Settled, dict[str, list[TimelineEvent]]]:
        settled = Settled()
        writes, self._inflight = self._inflight, None
        if writes is None:
            return settled, {}
        self.store.settle(writes, self._writes.receive(), settled.stats)
        for user in writes.retry:
            self._projected.pop(user, None)
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


def _projection(writes: PreparedWrites, j: int) -> UserState:
    """The state that plan ``j`` of ``writes`` left behind (its compare-and-set succeeded)."""
    plan = writes.plans[j]
    old = plan.state
    offsets = dict(old.offsets) if old is not None else {}
    for e in plan.events:
        offsets[e.partition] = e.offset
    state = UserState(
        plan.items,
        plan.weights,
        (old.seq if old else 0) + 1,
        ITEM_SEP.join(writes.versions).encode(),
        offsets,
    )
    for v, (totals, weights) in zip(writes.versions, writes.sums, strict=True):
        state.sums[v] = totals[j]
        state.weights[v] = float(weights[j])
    return state
