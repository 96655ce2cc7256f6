"""Reads and single-version writes of user states in Redis (``schema`` describes the hash).

The timeline writes of the consumer go through ``writer.StateWriter``; this store reads
states and writes the sums of one version (the re-encoder's back-fill).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
import redis

from ledrec.keyspace import Keyspace
from ledrec.stream import _resp
from ledrec.stream.artifact import Model
from ledrec.stream.state.schema import (
    APPLY_SCRIPT,
    ITEM_SEP,
    UserState,
    pack_versions,
    parse_states,
    state_fields,
)


class UserStateStore:
    """User states in one Redis: where they live, how long, and how to read them."""

    def __init__(
        self, client: redis.Redis, prefix: str, timeline_max: int, ttl_seconds: int
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.timeline_max = timeline_max
        self.ttl_seconds = ttl_seconds
        self.apply_script = client.register_script(APPLY_SCRIPT)
        self.keys = Keyspace.of(client, prefix)
        self._key_prefix = self.keys.user_prefix.encode()

    def key(self, user_id: str) -> str:
        """The Redis key of a user's state."""
        return self.keys.user(user_id)

    @property
    def key_prefix(self) -> bytes:
        """User keys are this prefix and the user id."""
        return self._key_prefix

    # -- reading -----------------------------------------------------------------------
    def read_many(
        self, user_ids: Sequence[str], versions: Sequence[str], partitions: Sequence[int] = ()
    ) -> list[UserState | None]:
        """States of ``user_ids`` (None for unknown users), with the given versions' sums."""
        if not user_ids:
            return []
        replies = _resp.execute_raw(self.client, self.read_commands(user_ids, versions, partitions))
        return parse_states(replies, versions, partitions)

    def read(self, user_id: str, versions: Sequence[str]) -> UserState | None:
        """One user's state (None: unknown user)."""
        return self.read_many([user_id], versions)[0]

    def read_commands(
        self, user_ids: Sequence[str], versions: Sequence[str], partitions: Sequence[int] = ()
    ) -> list[bytes]:
        """One RESP-packed HMGET per user (``schema.parse_states`` reads the replies)."""
        keys = [self._key_prefix + u.encode() for u in user_ids]
        return _resp.hmget(keys, state_fields(versions, partitions))

    # -- one version's sums (the re-encoder) --------------------------------------------
    def set_sum(
        self,
        user_id: str,
        state: UserState,
        model: Model,
        total: npt.NDArray[np.float64],
        weight: float,
    ) -> bool:
        """Write one version's sum if the user is unchanged since ``state`` was read."""
        return self.set_sums(model, [(user_id, state, total, weight)])[0]

    def set_sums(
        self,
        model: Model,
        writes: Sequence[tuple[str, UserState, npt.NDArray[np.float64], float]],
    ) -> list[bool]:
        """``set_sum`` for many (user, state read, sum, weight) in one round trip."""
        if not writes:
            return []
        v = model.version
        s_field, w_field = f"s:{v}".encode(), f"w:{v}".encode()
        sha = self.apply_script.sha.encode()
        commands: list[bytes] = []
        for user_id, state, total, weight in writes:
            stored = state.stored_versions.decode().split(ITEM_SEP) if state.stored_versions else []
            if v not in stored:
                stored.append(v)
            key = self._key_prefix + user_id.encode()
            args = [b"%d" % state.seq, b"0", b"0", s_field, total.tobytes()]
            args += [w_field, repr(weight).encode(), b"vs", pack_versions(stored)]
            commands.append(_resp.resp_command(b"EVALSHA", sha, b"1", key, *args))
        # packed, not a redis-py pipeline: a cluster pipeline refuses EVALSHA (redis-py#2914)
        replies = _resp.execute_raw(self.client, commands)
        if any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
            self.client.script_load(APPLY_SCRIPT)  # a new or restarted Redis
            replies = _resp.execute_raw(self.client, commands)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return [bool(ok) for ok in replies]

    def drop_version(self, user_ids: Iterable[str], version: str) -> None:
        """Remove a retired version's sums."""
        pipe = self.client.pipeline(transaction=False)
        for user_id in user_ids:
            pipe.hdel(self.key(user_id), f"s:{version}", f"w:{version}")
        pipe.execute()

    def scan_users(self, count: int = 1000) -> Iterable[str]:
        """Every user id with a state (SCAN, so it never blocks Redis)."""
        for key in self.client.scan_iter(match=self.keys.users, count=count):
            yield self.keys.user_id(key)
