"""Polling for replies before sleeping (``serve_spin_us``) over a real Redis: the same
replies as a sleeping read, a fallback to it when Redis answers late, the socket left as it
was, and a closed connection reported, not polled forever."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from ledrec.settings import Settings
from ledrec.stream._resp import RawConnection, resp_command
from ledrec.stream.protocol import decode_reply
from ledrec.stream.server import RecommendServer
from ledrec.stream.state import StateWriter, TimelineEvent, UserStateStore
from tests.helpers import publish_model, random_model
from tests.integration.test_intake import _request

COMMANDS = [
    resp_command(b"SET", b"poll:a", b"1"),
    resp_command(b"GET", b"poll:a"),
    resp_command(b"INCR", b"poll:a"),
    resp_command(b"HGET", b"poll:a", b"x"),  # WRONGTYPE: an error reply, returned
    resp_command(b"GET", b"poll:missing"),
]


def _receive(client: redis.Redis, spin_s: float) -> list[object]:
    conn = RawConnection(client, spin_s)
    try:
        conn.send(COMMANDS)
        return conn.receive()
    finally:
        conn.close()


def test_polled_replies_are_the_replies_of_a_sleeping_read(redis_client: redis.Redis) -> None:
    slept = _receive(redis_client, 0.0)
    polled = _receive(redis_client, 0.05)
    assert [type(r) for r in polled] == [type(r) for r in slept]
    assert [r for r in polled if not isinstance(r, Exception)] == [b"OK", b"1", 2, None]
    assert [r for r in slept if not isinstance(r, Exception)] == [b"OK", b"1", 2, None]
    assert isinstance(polled[3], redis.ResponseError)


def test_a_reply_later_than_the_poll_is_read_by_sleeping_and_the_socket_is_restored(
    redis_client: redis.Redis,
) -> None:
    conn = RawConnection(redis_client, spin_s=0.01)
    conn.send([resp_command(b"BLPOP", b"poll:late", b"5")])
    pusher = threading.Timer(0.3, redis_client.rpush, args=(b"poll:late", b"v"))
    pusher.start()
    started = time.perf_counter()
    try:
        assert conn.receive() == [[b"poll:late", b"v"]]
        assert time.perf_counter() - started >= 0.25  # waited past the 10 ms poll
        # the socket waits again as redis-py set it up (a timeout, not non-blocking)
        assert conn._conn._sock.gettimeout() == conn._conn.socket_timeout
    finally:
        pusher.join()
        conn.close()


def test_a_connection_closed_while_polling_raises(redis_client: redis.Redis) -> None:
    conn = RawConnection(redis_client, spin_s=5.0)
    conn.send([resp_command(b"CLIENT", b"ID"), resp_command(b"BLPOP", b"poll:never", b"10")])
    (client_id,) = conn.receive(1)
    killer = threading.Timer(0.2, redis_client.client_kill_filter, kwargs={"_id": client_id})
    killer.start()
    started = time.perf_counter()
    try:
        with pytest.raises(redis.ConnectionError):
            conn.receive()
        assert time.perf_counter() - started < 4.0  # seen by the poll, not its 5 s budget
    finally:
        killer.join()
        conn.close()


def test_a_polling_scorer_answers_like_a_sleeping_one(
    settings: Settings, redis_client: redis.Redis
) -> None:
    model = random_model(n_items=100, version="v1")
    publish_model(settings, redis_client, model)
    store = UserStateStore(redis_client, settings.key_prefix, settings.timeline_max, 0)
    StateWriter(store).apply({"bob": [TimelineEvent(0, 1, model.item_ids[0], 1.0)]}, [model])
    replies = []
    for spin_us in (0, 2000):
        server = RecommendServer(
            settings.model_copy(update={"serve_spin_us": spin_us}), redis_client
        )
        server.load_active()
        redis_client.lpush(settings.request_queue, _request(settings, spin_us, "bob"))
        assert server.serve_once(block_s=0.05) == 1
        popped = redis_client.blpop([f"{settings.key_prefix}:rpc:reply:r{spin_us}"], timeout=5)
        assert popped is not None and isinstance(popped[1], bytes)
        reply = decode_reply(popped[1])
        assert reply["ok"] and reply["source"] == "state"
        replies.append(reply["items"])
    assert replies[0] == replies[1]
    assert model.item_ids[0] not in [item for item, _ in replies[1]]  # seen, excluded
