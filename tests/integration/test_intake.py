"""The scorer's intake over a real Redis: requests taken with their users' states in one
round trip, oldest first, whatever the requests hold, and after Redis lost the script."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import redis

from ledrec.settings import Settings
from ledrec.stream._resp import RawConnection
from ledrec.stream.intake import Intake, Taken
from ledrec.stream.protocol import Request, decode_reply, encode_request
from ledrec.stream.server import RecommendServer
from ledrec.stream.state import (
    StateWriter,
    TimelineEvent,
    UserStateStore,
    parse_states,
    state_fields,
)
from tests.helpers import publish_model, random_model


def _intake(settings: Settings, client: redis.Redis, batch_size: int = 8) -> Intake:
    store = _store(settings, client)
    return Intake(
        client, settings.request_queue, f"{settings.key_prefix}:rpc:taking:t", batch_size,
        settings.max_request_bytes, settings.max_id_length, store.key_prefix,
    )  # fmt: skip


def _store(settings: Settings, client: redis.Redis) -> UserStateStore:
    return UserStateStore(client, settings.key_prefix, settings.timeline_max, 0)


def _request(settings: Settings, n: int, user_id: str | None = None) -> bytes:
    return encode_request(
        Request(
            id=f"r{n}",
            reply_to=f"{settings.key_prefix}:rpc:reply:r{n}",
            deadline=time.time() + 30,
            k=3,
            user_id=user_id,
            items=None if user_id is not None else ("a", "b"),
        )
    )


def _take(
    intake: Intake, client: redis.Redis, fields: tuple[bytes, ...], block_s: float = 0.1
) -> list[Taken]:
    conn = RawConnection(client)
    try:
        conn.send(intake.commands(block_s, fields))
        return intake.taken(conn.receive(), fields)
    finally:
        conn.close()


def test_requests_are_taken_oldest_first_with_their_users_states(
    settings: Settings, redis_client: redis.Redis
) -> None:
    model = random_model(n_items=50, dim=4, version="v1")
    store = _store(settings, redis_client)
    StateWriter(store).apply({"alice": [TimelineEvent(0, 1, model.item_ids[3], 1.0)]}, [model])
    payloads = [
        _request(settings, 0, "alice"),
        _request(settings, 1, "nobody"),
        _request(settings, 2),  # explicit items: no state to read
        b"\xc1 not msgpack",
        msgpack.packb(["a", "list"]),
        msgpack.packb({"user_id": 42}),
        msgpack.packb({"user_id": "x" * (4 * settings.max_id_length + 1)}),
    ]
    redis_client.lpush(settings.request_queue, *payloads)  # clients LPUSH: oldest on the right
    fields = state_fields(["v1"])
    taken = _take(_intake(settings, redis_client), redis_client, fields)
    assert [t.payload for t in taken] == payloads
    assert taken[0].state is not None and taken[1].state is not None
    assert all(t.state is None for t in taken[2:])
    alice, nobody = parse_states([taken[0].state, taken[1].state], ["v1"])
    assert nobody is None
    expected = store.read("alice", ["v1"])
    assert alice is not None and expected is not None
    assert alice.items == [model.item_ids[3]] and alice.seq == expected.seq
    np.testing.assert_array_equal(alice.sums["v1"], expected.sums["v1"])
    assert redis_client.llen(settings.request_queue) == 0
    assert redis_client.llen(f"{settings.key_prefix}:rpc:taking:t") == 0


def test_hostile_payloads_are_taken_without_a_state_and_redis_survives(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """The take script decodes untrusted bytes with Redis's cmsgpack: deep nesting and
    lengths that claim gigabytes must fail inside its pcall, not take Redis down."""
    payloads = [
        b"\x91" * 60_000 + b"\xc0",  # an array in an array in ... 60,000 deep
        b"\x81\xa7user_id" + b"\x91" * 60_000 + b"\xc0",
        b"\xdd\xff\xff\xff\xff",  # an array of 2^32 - 1 elements, none given
        b"\xdf\xff\xff\xff\xff",  # the same for a map
        b"\xdb\xff\xff\xff\xff",  # a string of 4 GiB
    ]
    redis_client.lpush(settings.request_queue, *payloads)
    taken = _take(_intake(settings, redis_client), redis_client, state_fields([]))
    assert [t.payload for t in taken] == payloads
    assert all(t.state is None for t in taken)
    assert redis_client.ping()


def test_a_batch_is_bounded_and_the_rest_stays_queued(
    settings: Settings, redis_client: redis.Redis
) -> None:
    redis_client.lpush(settings.request_queue, *[_request(settings, n, f"u{n}") for n in range(10)])
    intake = _intake(settings, redis_client, batch_size=4)
    fields = state_fields([])
    assert len(_take(intake, redis_client, fields)) == 4
    assert redis_client.llen(settings.request_queue) == 6
    assert len(_take(intake, redis_client, fields)) == 4
    assert len(_take(intake, redis_client, fields)) == 2


def test_a_timed_out_wait_still_takes_what_was_queued_behind_it(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """A push can land between the BLMOVE's timeout and the script: it is taken, not lost."""
    intake = _intake(settings, redis_client)
    fields = state_fields([])
    moved, took = intake.commands(0.05, fields)
    conn = RawConnection(redis_client)
    conn.send([moved])
    assert conn.receive() == [None]  # timed out, the queue empty
    late = _request(settings, 0, "late")
    redis_client.lpush(settings.request_queue, late)
    conn.send([took])
    taken = intake.taken([None, *conn.receive()], fields)
    conn.close()
    assert [t.payload for t in taken] == [late]


def test_the_request_moved_survives_a_flushed_script(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """Redis restarted or flushed its scripts: the request BLMOVE moved is still taken."""
    redis_client.script_flush()
    payload = _request(settings, 0, "u0")
    redis_client.lpush(settings.request_queue, payload)
    taken = _take(_intake(settings, redis_client), redis_client, state_fields([]))
    assert [t.payload for t in taken] == [payload]


def test_a_state_not_taken_with_its_request_is_read_when_served(
    settings: Settings, redis_client: redis.Redis
) -> None:
    model = random_model(n_items=100, version="v1")
    publish_model(settings, redis_client, model)
    store = _store(settings, redis_client)
    StateWriter(store).apply({"bob": [TimelineEvent(0, 1, model.item_ids[0], 1.0)]}, [model])
    server = RecommendServer(settings, redis_client)
    server.load_active()
    # taken while no version was served: no state with it
    server.lanes[0].prefetched = [Taken(_request(settings, 0, "bob"), None)]
    assert server.serve_once(block_s=0.05) == 1
    popped = redis_client.blpop([f"{settings.key_prefix}:rpc:reply:r0"], timeout=5)
    assert popped is not None and isinstance(popped[1], bytes)
    reply = decode_reply(popped[1])
    assert reply["ok"] and reply["source"] == "state"
    assert model.item_ids[0] not in [item for item, _ in reply["items"]]  # seen, excluded
