"""The private RESP module: every hand packer equals the reference packer, and the redis-py
internals it reads (the hiredis parser's reader, socket and buffer) are still there.

If the canary fails after a redis-py upgrade, ``ledrec/stream/_resp.py`` must follow the
new internals (or fall back to ``read_response``) before anything else is trusted.
"""

from __future__ import annotations

import socket

import pytest
import redis

from ledrec.stream import _resp
from ledrec.stream._resp import bulk, cas_write, hmget, reply_commands, resp_command


def test_hmget_packs_as_resp_command() -> None:
    keys = [b"p:u:alice", b"p:u:\xc3\xa9", b""]
    fields = [b"ti", b"tw", b"s:v1", b"o:12"]
    assert hmget(keys, fields) == [resp_command(b"HMGET", k, *fields) for k in keys]


def test_reply_commands_pack_as_resp_command() -> None:
    key, body = b"p:reply:123", bytes(range(256)) * 3
    assert reply_commands(key, body) == [
        resp_command(b"LPUSH", key, body),
        resp_command(b"EXPIRE", key, b"30"),
    ]
    assert reply_commands(key, b"", b"7")[1] == resp_command(b"EXPIRE", key, b"7")


@pytest.mark.parametrize("n_deletes", [0, 2, 4])
@pytest.mark.parametrize("n_pairs", [0, 1, 3])
def test_cas_write_packs_as_resp_command(n_deletes: int, n_pairs: int) -> None:
    sha, key, seq, ttl = b"a" * 40, b"p:u:bob", b"17", b"86400"
    deletes = [b"s:old%d" % i for i in range(n_deletes)]
    pairs = [(b"o:%d" % i, b"\x00\r\n%d" % i) for i in range(n_pairs)]
    items, weights, versions = b"i1\x1fi2", b"\x00" * 16, b"v1\x1fv2"
    packed = cas_write(
        bulk(sha) + bulk(b"1"),
        key,
        seq,
        bulk(ttl),
        b"".join(bulk(d) for d in deletes),
        n_deletes,
        items,
        weights,
        versions,
        b"".join(bulk(f) + bulk(v) for f, v in pairs),
        n_pairs,
    )
    flat = [x for pair in pairs for x in pair]
    expected = resp_command(
        b"EVALSHA", sha, b"1", key, seq, ttl, b"%d" % n_deletes, *deletes,
        b"ti", items, b"tw", weights, b"vs", versions, *flat,
    )  # fmt: skip
    assert packed == expected


@pytest.fixture
def connected() -> tuple[redis.Connection, socket.socket]:
    """A redis-py connection whose socket is one end of a socket pair (the test is Redis)."""
    ours, peer = socket.socketpair()
    conn = redis.Connection()
    conn._sock = ours
    conn._parser.on_connect(conn)
    yield conn, peer
    conn._parser.on_disconnect()
    ours.close()
    peer.close()


def test_canary_redis_py_internals_read_raw_replies(
    connected: tuple[redis.Connection, socket.socket],
) -> None:
    conn, peer = connected
    parser = conn._parser
    assert type(parser).__name__ == "_HiredisParser", "hiredis is a pinned dependency"
    for name in ("_reader", "_sock", "_buffer", "read_from_socket"):
        assert hasattr(parser, name), f"redis-py's hiredis parser lost {name}"
    assert parser._reader.gets(False) is _resp._NOT_ENOUGH_DATA
    peer.sendall(b"+OK\r\n-ERR nope\r\n$3\r\nabc\r\n*2\r\n:1\r\n$-1\r\n")
    replies = _resp._read_replies(conn, 4)
    assert replies[0] == b"OK" and replies[2] == b"abc" and replies[3] == [1, None]
    assert isinstance(replies[1], redis.ResponseError)  # returned, not raised


def test_canary_polling_reads_what_arrives_and_reports_a_close(
    connected: tuple[redis.Connection, socket.socket],
) -> None:
    conn, peer = connected
    raw = _resp.RawConnection.__new__(_resp.RawConnection)
    raw.polled_s = 0.0
    assert _resp._poll(conn._parser, 0.005, raw) is False  # nothing sent: polled, no data
    assert raw.polled_s >= 0.005
    peer.sendall(b":42\r\n")
    assert _resp._read_replies(conn, 1, spin_s=1.0) == [42]
    peer.close()
    with pytest.raises(redis.ConnectionError):
        _resp._read_replies(conn, 1, spin_s=0.5)


def test_command_key_finds_the_key_of_every_routed_command() -> None:
    from ledrec.stream._cluster import command_key

    key = b"t:{x}:u:\xc3\xa9\r\n"  # any bytes, CRLF included
    assert command_key(resp_command(b"HMGET", key, b"ti", b"tw")) == key
    assert command_key(resp_command(b"EVALSHA", b"f" * 40, b"1", key, b"7")) == key
    assert command_key(resp_command(b"LPUSH", key, b"body")) == key
    assert command_key(hmget([key], [b"ti"])[0]) == key
    assert command_key(reply_commands(key, b"body")[1]) == key
