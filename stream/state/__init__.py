"""Per-user encoder state in Redis: capped timeline and running sums, updated exactly once.

- ``schema``: the stored hash, its invariants, and how to read it;
- ``store``: ``UserStateStore``, reads and the re-encoder's one-version writes;
- ``writer``: ``StateWriter``, the one entry point that applies batches of events.
"""

from ledrec.stream.state.schema import (
    ITEM_SEP,
    ApplyStats,
    TimelineEvent,
    UserState,
    pack_versions,
    parse_states,
    partitions_of,
    state_fields,
)
from ledrec.stream.state.store import UserStateStore
from ledrec.stream.state.writer import EARLY_CHUNK_USERS, Settled, StateWriter, WriteTiming

__all__ = [
    "EARLY_CHUNK_USERS",
    "ITEM_SEP",
    "ApplyStats",
    "Settled",
    "StateWriter",
    "TimelineEvent",
    "UserState",
    "UserStateStore",
    "WriteTiming",
    "pack_versions",
    "parse_states",
    "partitions_of",
    "state_fields",
]
