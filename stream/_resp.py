"""Raw RESP I/O on redis-py's connections: the hot paths' round trips, without its per-command
Python work.

The only module allowed to touch redis-py's private parser and pool internals (ruff TID251
bans ``redis._parsers`` elsewhere); ``tests/unit/test_resp_canary.py`` fails loudly if the
internals relied on here change, and ``tests/unit/test_resp_packers.py`` checks every hand
packer against :func:`resp_command`. Why it exists, with the measurements:
``benchmarks/results/NOTES.md`` ("raw RESP") and ``benchmarks/state_cpu.py``.

- :func:`execute_raw`: a pipeline of pre-packed commands, replies undecoded.
- :class:`RawConnection`: a held connection; send now, read the replies later.
- :class:`HeldConnectionPool`: a pool of one connection for one thread, no checkout checks.
- the packers: :func:`resp_command` (the reference) and the hand-packed forms of the
  commands sent per user or per request.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import redis
from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA

from ledrec.keyspace import is_cluster

__all__ = [
    "HeldConnectionPool",
    "RawConnection",
    "bulk",
    "cas_write",
    "execute_raw",
    "hmget",
    "reply_commands",
    "resp_command",
]


# -- packing ---------------------------------------------------------------------------------
def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def resp_command(*args: bytes) -> bytes:
    """One command packed as RESP: the reference every hand packer below must equal."""
    return b"*%d\r\n" % len(args) + b"".join(bulk(a) for a in args)


def hmget(keys: Sequence[bytes], fields: Sequence[bytes]) -> list[bytes]:
    """``HMGET key *fields`` for each key (the fields packed once for all of them)."""
    head = b"*%d\r\n$5\r\nHMGET\r\n" % (2 + len(fields))
    tail = b"".join(bulk(f) for f in fields)
    return [head + bulk(k) + tail for k in keys]


def reply_commands(key: bytes, body: bytes, ttl: bytes = b"30") -> list[bytes]:
    """``LPUSH key body`` and ``EXPIRE key ttl``: a scorer's reply to one request."""
    return [
        b"*3\r\n$5\r\nLPUSH\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(key), key, len(body), body),
        b"*3\r\n$6\r\nEXPIRE\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(key), key, len(ttl), ttl),
    ]


def cas_write(
    script_head: bytes,
    key: bytes,
    seq: bytes,
    ttl: bytes,
    deletes: bytes,
    n_deletes: int,
    items: bytes,
    weights: bytes,
    versions: bytes,
    pairs: bytes,
    n_pairs: int,
) -> bytes:
    """``EVALSHA sha 1 key seq ttl n_deletes *deletes ti items tw weights vs versions *pairs``:
    one user's compare-and-set write (``ledrec.stream.state.schema.APPLY_SCRIPT``).

    ``script_head`` is ``bulk(sha) + bulk(b"1")``, ``ttl`` a bulk string, ``deletes`` the
    ``n_deletes`` field names and ``pairs`` the ``n_pairs`` field/value pairs, bulk-packed.
    One format string: the consumer packs one of these per user per batch.
    """
    n_del = b"%d" % n_deletes
    return (
        b"*%d\r\n$7\r\nEVALSHA\r\n%b$%d\r\n%b\r\n$%d\r\n%b\r\n%b$%d\r\n%b\r\n%b"
        b"$2\r\nti\r\n$%d\r\n%b\r\n$2\r\ntw\r\n$%d\r\n%b\r\n$2\r\nvs\r\n$%d\r\n%b\r\n%b"
        % (
            13 + n_deletes + 2 * n_pairs,
            script_head,
            len(key),
            key,
            len(seq),
            seq,
            ttl,
            len(n_del),
            n_del,
            deletes,
            len(items),
            items,
            len(weights),
            weights,
            len(versions),
            versions,
            pairs,
        )
    )


# -- round trips -----------------------------------------------------------------------------
def execute_raw(client: redis.Redis, commands: Sequence[bytes]) -> list[Any]:
    """Send RESP-packed ``commands`` in one write on one connection; read every reply.

    A pipeline without redis-py's per-command packing and callbacks. Error replies are
    returned as exceptions, not raised. A broken pooled connection (Redis restarted) is
    retried once on a new one: callers send only reads and compare-and-set writes, which
    are safe to send again.
    """
    if is_cluster(client):  # each command to its slot's primary (``stream._cluster``)
        from ledrec.stream._cluster import execute_routed

        return execute_routed(client, commands)  # type: ignore[arg-type]
    payload = [b"".join(commands)]
    pool = client.connection_pool
    for attempt in (0, 1):
        conn = pool.get_connection()
        try:
            conn.send_packed_command(payload)  # type: ignore[no-untyped-call]
            return _read_replies(conn, len(commands))
        except (redis.ConnectionError, redis.TimeoutError):
            conn.disconnect()  # type: ignore[no-untyped-call]
            if attempt:
                raise
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call]  # never pool a half-read one
            raise
        finally:
            pool.release(conn)
    raise AssertionError("unreachable")  # pragma: no cover


class RawConnection:
    """A connection of the client's pool held to send RESP-packed commands now and read
    their replies later, so the caller can work while Redis runs them. Several sends may
    be outstanding; replies come back in the order sent. Error replies are returned as
    exceptions; a connection error drops the connection (its replies are lost).

    ``spin_s``: how long ``receive`` polls for replies before it sleeps (``_poll``).
    """

    def __init__(self, client: redis.Redis, spin_s: float = 0.0) -> None:
        self._pool = client.connection_pool
        self._conn: Any = None
        self._waiting = 0
        self._arrived: list[Any] = []  # replies parsed by ``pump``, not yet received
        self.spin_s = spin_s
        # Seconds spent polling (``spin_s``): waiting, not work; observers subtract it.
        self.polled_s = 0.0

    def send(self, commands: Sequence[bytes]) -> None:
        if self._conn is None:
            self._conn = self._pool.get_connection()
        try:
            self._conn.send_packed_command([b"".join(commands)])
        except BaseException:
            self.close()
            raise
        self._waiting += len(commands)

    def receive(self, count: int | None = None) -> list[Any]:
        """The next ``count`` replies (default: every reply still due)."""
        count = self._waiting if count is None else count
        if count > self._waiting:
            raise RuntimeError(f"{count} replies asked, {self._waiting} due")
        early, self._arrived = self._arrived[:count], self._arrived[count:]
        try:
            replies = early + _read_replies(self._conn, count - len(early), self.spin_s, self)
        except BaseException:
            self.close()
            raise
        self._waiting -= count
        return replies

    def pump(self) -> bool:
        """Parse the replies that have arrived, without waiting for more; whether every
        reply due is in. For a caller that ``select``s on several connections: a readable
        socket may hold only the first replies of a round trip (a blocking command's
        reply comes later), so reading all of them would block."""
        parser = self._conn._parser if self._conn is not None else None
        reader = getattr(parser, "_reader", None)
        if reader is None:
            return True  # without hiredis: ``receive`` reads them (blocking)
        try:
            while len(self._arrived) < self._waiting:
                reply = reader.gets(False)
                if reply is _NOT_ENOUGH_DATA:
                    if not _recv_available(parser):
                        return False
                    continue
                if isinstance(reply, redis.ConnectionError):
                    raise reply
                self._arrived.append(reply)
        except OSError as e:
            self.close()
            raise redis.ConnectionError(f"error while reading from socket: {e}") from e
        except BaseException:
            self.close()
            raise
        return True

    @property
    def waiting(self) -> int:
        """How many replies are due."""
        return self._waiting

    def fileno(self) -> int:
        """The socket's file descriptor (for ``select``); -1 when not connected."""
        sock = getattr(self._conn, "_sock", None) if self._conn is not None else None
        return sock.fileno() if sock is not None else -1

    def close(self) -> None:
        """Drop the connection (replies not read are lost)."""
        if self._conn is not None:
            self._conn.disconnect()
            self._pool.release(self._conn)
            self._conn = None
        self._waiting = 0
        self._arrived = []


class HeldConnectionPool(redis.ConnectionPool):
    """A pool of one connection for one thread alone: no checkout checks.

    redis-py's pool checks every checkout (a lock, a poll syscall for stale data, metrics),
    which cost more CPU than the scorer's round trip itself (NOTES.md). Same connection
    settings (TLS, ACL user, retries) as the pool it copies; connects on first use and
    after a reset.
    """

    def __init__(self, like: redis.ConnectionPool) -> None:
        super().__init__(connection_class=like.connection_class, **like.connection_kwargs)
        self._held = self.make_connection()

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        self._held.connect()  # type: ignore[no-untyped-call]  # no-op when connected
        return self._held

    def release(self, connection: Any) -> None:
        pass  # held, never shared

    def disconnect(self, inuse_connections: bool = True) -> None:
        self._held.disconnect()  # type: ignore[no-untyped-call]


# -- reading ---------------------------------------------------------------------------------
def _read_replies(
    conn: Any, n: int, spin_s: float = 0.0, raw: RawConnection | None = None
) -> list[Any]:
    """``n`` replies from ``conn``, undecoded; error replies as exception objects.

    With hiredis, straight from the connection's hiredis reader: redis-py's
    ``read_response`` costs a few µs of Python per reply. The reader is set up by redis-py
    to return (not raise) error replies as redis-py's exception classes, and its socket
    reads keep redis-py's timeout and error handling. Without hiredis, redis-py's own path.
    ``spin_s``: poll the socket this long for missing data before a blocking read (hiredis
    only); the time polled is added to ``raw.polled_s``.
    """
    parser = conn._parser
    reader = getattr(parser, "_reader", None)
    replies: list[Any] = []
    if reader is None or not hasattr(parser, "read_from_socket"):
        for _ in range(n):
            try:
                replies.append(conn.read_response(disable_decoding=True))
            except redis.ResponseError as e:
                replies.append(e)
        return replies
    gets, fill = reader.gets, parser.read_from_socket
    while len(replies) < n:
        reply = gets(False)
        if reply is _NOT_ENOUGH_DATA:
            try:
                if not (spin_s and _poll(parser, spin_s, raw)):
                    fill()
            except OSError as e:  # as redis-py's read_response does: a reset is a ConnectionError
                raise redis.ConnectionError(f"error while reading from socket: {e}") from e
            continue
        if isinstance(reply, redis.ConnectionError):
            raise reply
        replies.append(reply)
    return replies


def _recv_available(parser: Any) -> bool:
    """Feed ``parser`` what its socket holds now, without waiting; whether anything came."""
    sock, buffer = parser._sock, parser._buffer
    if sock is None:
        raise redis.ConnectionError("connection closed while reading")
    timeout = sock.gettimeout()
    sock.settimeout(0.0)
    try:
        got = sock.recv_into(buffer)
    except BlockingIOError:
        return False
    finally:
        sock.settimeout(timeout)
    if not got:
        raise redis.ConnectionError("connection closed by server")
    parser._reader.feed(buffer, 0, got)
    return True


def _poll(parser: Any, spin_s: float, raw: RawConnection | None) -> bool:
    """Poll ``parser``'s socket for up to ``spin_s`` without sleeping; whether data came.

    A blocking read sleeps until Redis answers, and Redis's answer must then wake the
    thread: on a VM that wake-up costs tens of µs of CPU on both sides and adds latency.
    Socket errors are raised as they are (``_read_replies`` translates them).
    """
    sock, buffer = parser._sock, parser._buffer
    if sock is None:
        raise redis.ConnectionError("connection closed while reading")
    timeout = sock.gettimeout()
    sock.settimeout(0.0)  # non-blocking for the poll only (a timeout socket would wait)
    started = time.perf_counter()
    try:
        until = started + spin_s
        while time.perf_counter() < until:
            try:
                got = sock.recv_into(buffer)
            except BlockingIOError:
                continue
            if not got:
                raise redis.ConnectionError("connection closed by server")
            parser._reader.feed(buffer, 0, got)
            return True
        return False
    finally:
        sock.settimeout(timeout)
        if raw is not None:
            raw.polled_s += time.perf_counter() - started
