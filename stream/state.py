"""Per-user encoder state in Redis: capped timeline and running sums, updated exactly once.

Every user is one Redis hash (one key, so every update is single-slot on Redis Cluster)::

    tl         msgpack [[item_id, weight], ...], oldest first, at most T_max entries
    seq        write counter, the compare-and-set token of optimistic concurrency
    o:<p>      last Kafka offset of partition p applied to this user
    s:<ver>    running weighted sum of item embeddings for model version <ver> (float64 bytes)
    w:<ver>    total weight of the timeline items that model version <ver> knows

Exactly-once effect: the updater reads (tl, seq, o:*, s:*, w:*), drops events at or below
the stored offsets, computes the new state and writes it with a Lua script that succeeds
only if ``seq`` is unchanged. A zombie consumer, a redelivery after a crash or the
re-encoder racing the consumer therefore can never apply an event twice or lose one: the
loser of a race re-reads and recomputes.

Sums are kept in float64 and updated incrementally (add what enters the window, subtract
what falls off), so a user's sum is the exact window sum up to float rounding. A version
whose sum is missing for a user (new version, not yet back-filled) is computed from the
whole timeline on the next write. A timeline write drops the sums it does not carry (a
writer that did not know a version yet), so a stored sum is never stale.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import msgpack
import numpy as np
import numpy.typing as npt
import redis

from stream.artifact import Model

# KEYS[1] user hash; ARGV: expected seq, ttl seconds, then field/value pairs to set.
# A write that carries a new timeline ('tl') deletes every sum it does not carry: its
# writer read the live set before those versions joined it, and a sum left behind would
# no longer match the timeline. So a stored sum is always the exact sum of the stored
# timeline, and a missing one is recomputed (next write, re-encoder, or the scorer).
_APPLY = """
local cur = redis.call('HGET', KEYS[1], 'seq') or '0'
if cur ~= ARGV[1] then return 0 end
local carried = {}
for i = 3, #ARGV, 2 do carried[ARGV[i]] = true end
if carried['tl'] then
  for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
    local p = string.sub(f, 1, 2)
    if (p == 's:' or p == 'w:') and not carried[f] then redis.call('HDEL', KEYS[1], f) end
  end
end
redis.call('HSET', KEYS[1], 'seq', tostring(tonumber(ARGV[1]) + 1), unpack(ARGV, 3))
local ttl = tonumber(ARGV[2])
if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
return 1
"""


@dataclass(frozen=True)
class TimelineEvent:
    """An event as the state updater needs it: where it came from and what it adds."""

    partition: int
    offset: int
    item_id: str
    weight: float


@dataclass
class UserState:
    """A user's stored state, as read from Redis."""

    timeline: list[tuple[str, float]] = field(default_factory=list)
    seq: int = 0
    offsets: dict[int, int] = field(default_factory=dict)
    sums: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class ApplyStats:
    users: int = 0
    applied_events: int = 0
    skipped_events: int = 0  # already applied (redelivery after a crash or rebalance)
    conflicts: int = 0  # lost a compare-and-set race and recomputed


def window_sum(
    model: Model, timeline: Sequence[tuple[str, float]]
) -> tuple[npt.NDArray[np.float64], float]:
    """Weighted sum of the embeddings of the timeline items the model knows, and their weight."""
    rows, weights = _known(model, timeline)
    if not rows:
        return np.zeros(model.dim, dtype=np.float64), 0.0
    w = np.asarray(weights, dtype=np.float64)
    return w @ model.embeddings[rows].astype(np.float64), float(w.sum())


def _known(model: Model, items: Iterable[tuple[str, float]]) -> tuple[list[int], list[float]]:
    row_of = model.row_of
    rows: list[int] = []
    weights: list[float] = []
    for item, weight in items:
        row = row_of.get(item)
        if row is not None:
            rows.append(row)
            weights.append(weight)
    return rows, weights


class UserStateStore:
    """Reads and updates user states in Redis."""

    def __init__(
        self, client: redis.Redis, prefix: str, timeline_max: int, ttl_seconds: int
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.timeline_max = timeline_max
        self.ttl_seconds = ttl_seconds
        self._apply = client.register_script(_APPLY)

    def key(self, user_id: str) -> str:
        return f"{self.prefix}:u:{user_id}"

    # -- reading -----------------------------------------------------------------------
    def read_many(
        self, user_ids: Sequence[str], versions: Sequence[str], partitions: Sequence[int] = ()
    ) -> list[UserState | None]:
        """States of ``user_ids`` (None for unknown users), with the given versions' sums."""
        fields = ["tl", "seq"]
        fields += [f"s:{v}" for v in versions] + [f"w:{v}" for v in versions]
        fields += [f"o:{p}" for p in partitions]
        pipe = self.client.pipeline(transaction=False)
        for user_id in user_ids:
            pipe.hmget(self.key(user_id), fields)
        return [self._parse(values, versions, partitions) for values in pipe.execute()]

    def read(self, user_id: str, versions: Sequence[str]) -> UserState | None:
        return self.read_many([user_id], versions)[0]

    @staticmethod
    def _parse(
        values: list[bytes | None], versions: Sequence[str], partitions: Sequence[int]
    ) -> UserState | None:
        if values[0] is None and values[1] is None:
            return None
        n = len(versions)
        state = UserState(
            timeline=[(str(i), float(w)) for i, w in msgpack.unpackb(values[0] or b"\x90")],
            seq=int(values[1] or 0),
        )
        for j, v in enumerate(versions):
            raw_sum, raw_w = values[2 + j], values[2 + n + j]
            if raw_sum is not None and raw_w is not None:
                state.sums[v] = np.frombuffer(raw_sum, dtype=np.float64).copy()
                state.weights[v] = float(raw_w)
        for j, p in enumerate(partitions):
            raw = values[2 + 2 * n + j]
            if raw is not None:
                state.offsets[p] = int(raw)
        return state

    # -- writing -----------------------------------------------------------------------
    def apply(
        self, events_by_user: dict[str, list[TimelineEvent]], models: Sequence[Model]
    ) -> ApplyStats:
        """Apply each user's new events (in offset order) to their state, exactly once.

        Returns when every user's write has succeeded: only then may Kafka offsets be
        committed.
        """
        stats = ApplyStats(users=len(events_by_user))
        pending = dict(events_by_user)
        while pending:
            users = list(pending)
            partitions = sorted({e.partition for evs in pending.values() for e in evs})
            states = self.read_many(users, [m.version for m in models], partitions)
            pipe = self.client.pipeline(transaction=False)
            writes: list[tuple[str, int]] = []
            for user_id, state in zip(users, states, strict=True):
                new_events = _unapplied(pending[user_id], state)
                stats.skipped_events += len(pending[user_id]) - len(new_events)
                if not new_events:
                    continue
                expected, mapping = self._next_state(state, new_events, models)
                self._apply(
                    keys=[self.key(user_id)],
                    args=[expected, self.ttl_seconds, *_flatten(mapping)],
                    client=pipe,
                )
                writes.append((user_id, len(new_events)))
            results = pipe.execute() if writes else []
            retry: dict[str, list[TimelineEvent]] = {}
            for (user_id, n_events), ok in zip(writes, results, strict=True):
                if ok:
                    stats.applied_events += n_events
                else:
                    stats.conflicts += 1
                    retry[user_id] = pending[user_id]
            pending = retry
        return stats

    def _next_state(
        self, state: UserState | None, events: list[TimelineEvent], models: Sequence[Model]
    ) -> tuple[int, dict[str, bytes | str | float | int]]:
        state = state or UserState()
        old = state.timeline
        merged = old + [(e.item_id, e.weight) for e in events]
        cut = max(0, len(merged) - self.timeline_max)
        new_timeline = merged[cut:]
        removed = old[:cut]  # fell off the window (possibly more than the old timeline)
        added = merged[max(cut, len(old)) :]
        mapping: dict[str, bytes | str | float | int] = {
            "tl": msgpack.packb([[i, w] for i, w in new_timeline]),
        }
        for e in events:
            mapping[f"o:{e.partition}"] = e.offset  # events are in offset order
        for model in models:
            v = model.version
            if v in state.sums:
                add_sum, add_w = window_sum(model, added)
                rem_sum, rem_w = window_sum(model, removed)
                total = state.sums[v] + add_sum - rem_sum
                weight = state.weights[v] + add_w - rem_w
            else:
                total, weight = window_sum(model, new_timeline)
            mapping[f"s:{v}"] = total.astype(np.float64).tobytes()
            mapping[f"w:{v}"] = repr(max(weight, 0.0))
        return state.seq, mapping

    def set_sum(
        self,
        user_id: str,
        expected_seq: int,
        model: Model,
        total: npt.NDArray[np.float64],
        weight: float,
    ) -> bool:
        """Write one version's sum if the user is unchanged since read (the re-encoder's write)."""
        return self.set_sums(model, [(user_id, expected_seq, total, weight)])[0]

    def set_sums(
        self, model: Model, writes: Sequence[tuple[str, int, npt.NDArray[np.float64], float]]
    ) -> list[bool]:
        """``set_sum`` for many (user, expected seq, sum, weight) in one round trip."""
        if not writes:
            return []
        pipe = self.client.pipeline(transaction=False)
        s_field, w_field = f"s:{model.version}", f"w:{model.version}"
        for user_id, expected_seq, total, weight in writes:
            self._apply(
                keys=[self.key(user_id)],
                args=[expected_seq, 0, s_field, total.tobytes(), w_field, repr(weight)],
                client=pipe,
            )
        return [bool(ok) for ok in pipe.execute()]

    def drop_version(self, user_ids: Iterable[str], version: str) -> None:
        """Remove a retired version's sums."""
        pipe = self.client.pipeline(transaction=False)
        for user_id in user_ids:
            pipe.hdel(self.key(user_id), f"s:{version}", f"w:{version}")
        pipe.execute()

    def scan_users(self, count: int = 1000) -> Iterable[str]:
        """Every user id with a state (SCAN, so it never blocks Redis)."""
        start = len(self.prefix) + 3
        for key in self.client.scan_iter(match=f"{self.prefix}:u:*", count=count):
            yield (key.decode() if isinstance(key, bytes) else key)[start:]


def _unapplied(events: list[TimelineEvent], state: UserState | None) -> list[TimelineEvent]:
    if state is None:
        return events
    return [e for e in events if e.offset > state.offsets.get(e.partition, -1)]


def _flatten(mapping: dict[str, bytes | str | float | int]) -> list[bytes | str | float | int]:
    out: list[bytes | str | float | int] = []
    for k, v in mapping.items():
        out += [k, v]
    return out
