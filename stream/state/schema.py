"""The stored user state: one Redis hash per user, and how to read it.

Every user is one Redis hash (one key, so every update is single-slot on Redis Cluster)::

    ti         the timeline's item ids, oldest first, at most T_max, joined by ITEM_SEP (UTF-8)
    tw         their weights, little-endian float64, one per item
    seq        write counter, the compare-and-set token of optimistic concurrency
    vs         the versions that may have a stored sum, joined by ITEM_SEP
    o:<p>      last Kafka offset of partition p applied to this user
    s:<ver>    running weighted sum of item embeddings for model version <ver> (float64 bytes)
    w:<ver>    total weight of the timeline items that model version <ver> knows

The timeline is stored packed so that an update touches only what enters and leaves the
window: appending is a byte concatenation, dropping the oldest ``c`` items one
``split(sep, c)``; nothing is unpacked per item.

Invariants every writer keeps (``APPLY_SCRIPT`` is the only write of ti/tw/seq):

- a stored sum is the exact window sum of the stored timeline (up to float rounding); a
  version whose sum is missing is recomputed from the timeline (next write, re-encoder,
  scorer);
- ``vs`` is a superset of the versions with a stored sum;
- ``o:<p>`` only grows: an event at or below it was applied and is skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

ITEM_SEP = "\x1f"  # ASCII unit separator; event validation keeps control characters out of ids
WEIGHT = np.dtype("<f8")

# KEYS[1] user hash; ARGV: expected seq, ttl seconds (0: none), n fields to delete, those
# n fields, then field/value pairs to set. A writer that carries a new timeline deletes the
# sums it does not carry: their versions are listed in 'vs', which the writer read under
# the same seq, so they were stored sums of the old timeline and would no longer match.
# Reading 'vs' instead of HKEYS keeps the script O(fields written).
APPLY_SCRIPT = """
if (redis.call('HGET', KEYS[1], 'seq') or '0') ~= ARGV[1] then return 0 end
local ndel = tonumber(ARGV[3])
if ndel > 0 then redis.call('HDEL', KEYS[1], unpack(ARGV, 4, 3 + ndel)) end
redis.call('HSET', KEYS[1], 'seq', tostring(tonumber(ARGV[1]) + 1), unpack(ARGV, 4 + ndel))
if ARGV[2] ~= '0' then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


class TimelineEvent(NamedTuple):
    """An event as the state writer needs it: where it came from and what it adds."""

    partition: int
    offset: int
    item_id: str
    weight: float


@dataclass(slots=True)
class UserState:
    """A user's stored state, as read from Redis; the timeline stays packed as stored."""

    items_packed: bytes = b""  # item ids joined by ITEM_SEP, oldest first
    weights_packed: bytes = b""  # their weights, little-endian float64
    seq: int = 0
    stored_versions: bytes = b""  # 'vs': versions that may have a sum, joined by ITEM_SEP
    offsets: dict[int, int] = field(default_factory=dict)
    sums: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Number of items in the timeline."""
        return len(self.weights_packed) // 8

    @property
    def items(self) -> list[str]:
        """The timeline's item ids, oldest first."""
        return self.items_packed.decode().split(ITEM_SEP) if self.weights_packed else []

    @property
    def timeline(self) -> list[tuple[str, float]]:
        """The timeline as (item id, weight) pairs, oldest first."""
        weights = np.frombuffer(self.weights_packed, dtype=WEIGHT).tolist()
        return list(zip(self.items, weights, strict=True))


@dataclass
class ApplyStats:
    """What applying a batch did."""

    users: int = 0
    applied_events: int = 0
    skipped_events: int = 0  # already applied (redelivery after a crash or rebalance)
    conflicts: int = 0  # lost a compare-and-set race and recomputed


def state_fields(versions: Sequence[str], partitions: Sequence[int] = ()) -> tuple[bytes, ...]:
    """The hash fields ``parse_states`` expects, in its order."""
    return (
        b"ti", b"tw", b"seq", b"vs",
        *(f"s:{v}".encode() for v in versions),
        *(f"w:{v}".encode() for v in versions),
        *(b"o:%d" % p for p in partitions),
    )  # fmt: skip


def parse_states(
    replies: Sequence[Any], versions: Sequence[str], partitions: Sequence[int] = ()
) -> list[UserState | None]:
    """The states in HMGET replies of ``state_fields(versions, partitions)`` (None: no user).

    An error reply (an exception object) is raised.
    """
    out: list[UserState | None] = []
    n = len(versions)
    for values in replies:
        if isinstance(values, Exception):
            raise values
        items, weights, seq, stored = values[0], values[1], values[2], values[3]
        if seq is None and weights is None:
            out.append(None)
            continue
        state = UserState(items or b"", weights or b"", int(seq or 0), stored or b"")
        for j, v in enumerate(versions):
            raw_sum, raw_w = values[4 + j], values[4 + n + j]
            if raw_sum is not None and raw_w is not None:
                # read-only views of the reply: nothing mutates a stored sum in place
                state.sums[v] = np.frombuffer(raw_sum, dtype=np.float64)
                state.weights[v] = float(raw_w)
        for j, p in enumerate(partitions):
            raw = values[4 + 2 * n + j]
            if raw is not None:
                state.offsets[p] = int(raw)
        out.append(state)
    return out


def pack_versions(versions: Iterable[str]) -> bytes:
    """The ``vs`` field: version names joined by ITEM_SEP (registry names have no control
    characters)."""
    return ITEM_SEP.join(versions).encode()


def partitions_of(events_by_user: dict[str, list[TimelineEvent]]) -> list[int]:
    """The partitions the events came from (the ``o:<p>`` fields to read)."""
    return sorted({e.partition for evs in events_by_user.values() for e in evs})
