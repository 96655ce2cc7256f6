"""Planning a batch's writes: each user's new timeline, its window sums, the packed writes.

Private to ``ledrec.stream.state``: ``StateWriter`` is the one entry point that applies
batches; these are its steps (plan on the states read, pack, settle the replies).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import redis

from ledrec.stream import _resp
from ledrec.stream.artifact import Model
from ledrec.stream.encoder import segment_sums
from ledrec.stream.state.schema import (
    APPLY_SCRIPT,
    ITEM_SEP,
    WEIGHT,
    ApplyStats,
    TimelineEvent,
    UserState,
    pack_versions,
)
from ledrec.stream.state.store import UserStateStore

_SEP = ITEM_SEP.encode()
_PACK_WEIGHT = struct.Struct("<d").pack
Sums = tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]  # per plan: (n, d), (n,)


@dataclass(slots=True)
class Plan:
    """One user's write: the new packed timeline and what entered and left the window."""

    user_id: str
    state: UserState | None
    events: list[TimelineEvent]
    items: bytes  # the new timeline, packed as stored
    weights: bytes
    added: list[str]
    added_weights: list[float]
    removed: list[bytes] = field(default_factory=list)  # fell off the window (packed ids)
    removed_weights: bytes = b""


@dataclass
class PreparedWrites:
    """A batch's compare-and-set writes, packed; ``settle`` fills ``retry`` from the replies."""

    events_by_user: dict[str, list[TimelineEvent]]
    plans: list[Plan]
    commands: list[bytes]
    versions: list[str]  # the models' versions, in the order of ``sums``
    sums: list[Sums]  # per model, per plan
    retry: dict[str, list[TimelineEvent]] = field(default_factory=dict)


def prepare(
    store: UserStateStore,
    events_by_user: dict[str, list[TimelineEvent]],
    users: Sequence[str],
    states: Sequence[UserState | None],
    models: Sequence[Model],
    stats: ApplyStats,
) -> PreparedWrites:
    """Plan every user's update on the state read, and pack the compare-and-set writes.

    ``users``/``states`` are the users of ``events_by_user`` in the order read.
    """
    plans: list[Plan] = []
    timeline_max = store.timeline_max
    for user_id, state in zip(users, states, strict=True):
        events = events_by_user[user_id]
        new_events = _unapplied(events, state)
        stats.skipped_events += len(events) - len(new_events)
        if new_events:
            plans.append(_plan(user_id, state, new_events, timeline_max))
    versions = [m.version for m in models]
    sums = [_window_sums(model, plans) for model in models]
    commands = _write_commands(store, plans, versions, sums)
    return PreparedWrites(events_by_user, plans, commands, versions, sums)


def settle(
    store: UserStateStore, writes: PreparedWrites, replies: Sequence[Any], stats: ApplyStats
) -> None:
    """Count the writes that took; users whose compare-and-set lost go to ``retry``."""
    loaded = False
    for plan, ok in zip(writes.plans, replies, strict=True):
        if isinstance(ok, Exception):
            if not isinstance(ok, redis.exceptions.NoScriptError):
                raise ok
            if not loaded:  # a new or restarted Redis: load the script, then redo
                store.client.script_load(APPLY_SCRIPT)
                loaded = True
            writes.retry[plan.user_id] = writes.events_by_user[plan.user_id]
        elif ok:
            stats.applied_events += len(plan.events)
        else:
            stats.conflicts += 1
            writes.retry[plan.user_id] = writes.events_by_user[plan.user_id]


def projection(writes: PreparedWrites, j: int) -> UserState:
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
        pack_versions(writes.versions),
        offsets,
    )
    for v, (totals, weights) in zip(writes.versions, writes.sums, strict=True):
        state.sums[v] = totals[j]
        state.weights[v] = float(weights[j])
    return state


def combine(parts: list[PreparedWrites], versions: list[str]) -> PreparedWrites:
    """One batch of writes from its parts, plans and sums in the same order (the order
    their commands were sent in)."""
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return PreparedWrites({}, [], [], versions, [])
    sums = [
        (
            np.concatenate([p.sums[m][0] for p in parts]),
            np.concatenate([p.sums[m][1] for p in parts]),
        )
        for m in range(len(versions))
    ]
    events_by_user: dict[str, list[TimelineEvent]] = {}
    for p in parts:
        events_by_user.update(p.events_by_user)
    return PreparedWrites(
        events_by_user,
        [plan for p in parts for plan in p.plans],
        [command for p in parts for command in p.commands],
        versions,
        sums,
    )


def _unapplied(events: list[TimelineEvent], state: UserState | None) -> list[TimelineEvent]:
    if state is None or not state.offsets:
        return events
    offsets = state.offsets
    if len(events) == 1:
        e = events[0]
        return events if e.offset > offsets.get(e.partition, -1) else []
    return [e for e in events if e.offset > offsets.get(e.partition, -1)]


def _plan(
    user_id: str, state: UserState | None, events: list[TimelineEvent], timeline_max: int
) -> Plan:
    """The new packed timeline, and what entered and left the window."""
    if len(events) == 1:  # the common case, without the list work
        e = events[0]
        window = events
        added, added_weights = [e.item_id], [e.weight]
        new_items, new_weights = e.item_id.encode(), _PACK_WEIGHT(e.weight)
    else:
        window = events[-timeline_max:]  # older new events never enter the window
        added = [e.item_id for e in window]
        added_weights = [e.weight for e in window]
        new_items = ITEM_SEP.join(added).encode()
        new_weights = struct.pack(f"<{len(window)}d", *added_weights)
    if state is None or not state.weights_packed:
        return Plan(user_id, state, events, new_items, new_weights, added, added_weights)
    old_n = len(state.weights_packed) >> 3
    cut = old_n + len(window) - timeline_max  # old items falling off, if > 0
    if cut <= 0:
        return Plan(
            user_id,
            state,
            events,
            state.items_packed + _SEP + new_items,
            state.weights_packed + new_weights,
            added,
            added_weights,
        )
    parts = state.items_packed.split(_SEP, cut)
    if cut < old_n:
        removed, kept = parts[:cut], parts[cut] + _SEP + new_items
    else:
        removed, kept = parts, new_items
    return Plan(
        user_id,
        state,
        events,
        kept,
        state.weights_packed[8 * cut :] + new_weights,
        added,
        added_weights,
        removed,
        state.weights_packed[: 8 * cut],
    )


def _window_sums(model: Model, plans: Sequence[Plan]) -> Sums:
    """Every plan's new (sum, weight) for ``model``, in float64, computed at once.

    A user with a stored sum gets ``sum + Σ added - Σ removed`` (incremental); one without
    (new user, version not back-filled) gets the sum of the whole new window. The loop
    only gathers item ids, signed weights and plan indices; ``segment_sums`` does the maths.
    """
    v = model.version
    based: list[int] = []  # plans with a stored sum
    base_sums: list[memoryview] = []
    base_weights: list[float] = []
    items: list[str] = []
    signed: list[float] = []
    owner: list[int] = []
    for j, plan in enumerate(plans):
        state = plan.state
        old = state.sums.get(v) if state is not None else None
        if old is not None:
            assert state is not None
            based.append(j)
            base_sums.append(old.data)
            base_weights.append(state.weights[v])
            items += plan.added
            signed += plan.added_weights
            owner += [j] * len(plan.added)
            if plan.removed:
                items += [packed.decode() for packed in plan.removed]
                signed += (-np.frombuffer(plan.removed_weights, dtype=WEIGHT)).tolist()
                owner += [j] * len(plan.removed)
        else:
            window = plan.items.decode().split(ITEM_SEP)
            items += window
            signed += np.frombuffer(plan.weights, dtype=WEIGHT).tolist()
            owner += [j] * len(window)
    return segment_sums(
        model, len(plans), based, b"".join(base_sums), base_weights, items, signed, owner
    )


def _write_commands(
    store: UserStateStore, plans: Sequence[Plan], versions: Sequence[str], sums: Sequence[Sums]
) -> list[bytes]:
    """EVALSHA of the compare-and-set script for each plan, packed for the wire."""
    per_version = []
    for v, (totals, weights) in zip(versions, sums, strict=True):
        s_field, w_field = _version_fields(v)
        per_version.append(
            (s_field, w_field, totals.tobytes(), 8 * totals.shape[1], weights.tolist())
        )
    head = _resp.bulk(store.apply_script.sha.encode()) + _resp.bulk(b"1")  # sha, numkeys
    ttl = _resp.bulk(b"%d" % store.ttl_seconds)
    key_prefix = store.key_prefix
    carried = pack_versions(versions)
    carried_set = set(versions)
    commands = []
    for j, plan in enumerate(plans):
        stored = plan.state.stored_versions if plan.state is not None else b""
        deletes = b""
        n_deletes = 0
        if stored and stored != carried:
            for v in stored.decode().split(ITEM_SEP):
                if v not in carried_set:
                    s_field, w_field = _version_fields(v)
                    deletes += s_field + w_field
                    n_deletes += 2
        events = plan.events
        if len(events) == 1:
            offsets = {events[0].partition: events[0].offset}
        else:
            offsets = {e.partition: e.offset for e in events}  # in order: the last wins
        pairs = [b"%b%b" % (_offset_field(p), _resp.bulk(b"%d" % o)) for p, o in offsets.items()]
        for s_field, w_field, raw, size, weights in per_version:
            pairs.append(
                s_field
                + _resp.bulk(raw[j * size : (j + 1) * size])
                + w_field
                + _resp.bulk(b"%r" % weights[j])
            )
        commands.append(
            _resp.cas_write(
                head,
                key_prefix + plan.user_id.encode(),
                b"%d" % (plan.state.seq if plan.state is not None else 0),
                ttl,
                deletes,
                n_deletes,
                plan.items,
                plan.weights,
                carried,
                b"".join(pairs),
                len(offsets) + 2 * len(per_version),
            )
        )
    return commands


@functools.lru_cache(maxsize=1024)
def _offset_field(partition: int) -> bytes:
    """RESP bulk string of the ``o:<partition>`` field name."""
    return _resp.bulk(b"o:%d" % partition)


@functools.lru_cache(maxsize=64)
def _version_fields(version: str) -> tuple[bytes, bytes]:
    """RESP bulk strings of the ``s:<ver>`` and ``w:<ver>`` field names."""
    return _resp.bulk(f"s:{version}".encode()), _resp.bulk(f"w:{version}".encode())
