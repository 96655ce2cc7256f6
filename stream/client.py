"""Recommendation clients (sync and asyncio) over the Redis RPC.

    with RecommenderClient.from_settings() as client:   # env, or the `ledrec stack up` record
        client.recommend("user-42", k=10)   # -> [("item-7", 3.2), ...]

A call's timeout bounds all of it, connecting included (for clients built by
``from_settings`` / ``from_url``), and every failure is one of the documented errors:
``Timeout``, ``Overloaded``, ``BadRequest``, ``Unavailable``.

Every call has a request id (``request(..., request_id=)``, else a fresh one): the scorer
logs it, the reply carries it back (``Recommendations.request_id``) and every error names
it (``RecommendError.request_id``), so one id follows a request through each log.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from ledrec.connect import is_cluster_url, plain_url, resolve_redis_url
from ledrec.errors import LedrecError
from ledrec.keyspace import Keyspace
from ledrec.settings import Settings
from ledrec.stream import protocol
from ledrec.stream._resp import resp_command
from ledrec.stream.protocol import Request

log = logging.getLogger(__name__)

# A blocking read is given this much longer than the reply's server-side wait (BLPOP's
# timeout), so that the server's "nothing came" answer, not the socket, ends the call.
_READ_GRACE_S = 0.25
CLOCK_REFRESH_S = 60.0  # how often a client re-measures its clock against Redis's


class RecommendError(LedrecError, RuntimeError):
    """Base class of the client's errors; ``request_id`` names the call that failed."""

    def __init__(self, message: str, request_id: str = "") -> None:
        super().__init__(f"{message} (request {request_id})" if request_id else message)
        self.request_id = request_id


class Timeout(RecommendError):
    """No reply before the deadline (no scorer running, or all of them overloaded)."""


class BadRequest(RecommendError):
    """The scorer refused the request as malformed (bad k, ids too long...)."""


class Overloaded(RecommendError):
    """The request queue is over its bound, or every connection of the client's pool is in
    a call: shed load instead of queueing without end."""


class Unavailable(RecommendError):
    """Nothing can answer: Redis is unreachable, or the scorers have no model."""


@dataclass(frozen=True)
class Recommendations:
    items: list[tuple[str, float]]
    version: str  # model version that answered
    source: str  # "state", "timeline" (encoded on the fly), "items" or "popularity"
    request_id: str = ""  # as the scorer received and logged it


def _result(raw: Any, timeout_s: float, request_id: str) -> Recommendations:
    if raw is None:
        raise Timeout(f"no reply within {timeout_s:.3f}s", request_id)
    return read_reply(raw[1])


def read_reply(body: bytes) -> Recommendations:
    """The recommendations in a reply body, or its error raised as the documented exception."""
    return _recommendations(protocol.decode_reply(body))


def _recommendations(reply: dict[str, Any]) -> Recommendations:
    """The recommendations in a decoded reply, or its error raised as the documented one."""
    request_id = str(reply.get("id", ""))
    if not reply.get("ok"):
        error = reply.get("error", {})
        code, message = error.get("code"), error.get("message", "")
        if code == protocol.BAD_REQUEST:
            raise BadRequest(message, request_id)
        if code == protocol.OVERLOADED:
            raise Overloaded(message, request_id)
        raise Unavailable(message, request_id)
    return Recommendations(
        [(str(i), float(s)) for i, s in reply["items"]],
        reply["version"],
        reply["source"],
        request_id,
    )


def _redis_failure(error: BaseException, timeout_s: float, request_id: str) -> RecommendError:
    """The documented error for what Redis (or the call's own timeout) did to a call."""
    if isinstance(error, TimeoutError | redis.TimeoutError):
        return Timeout(f"no reply within {timeout_s:.3f}s", request_id)
    if isinstance(error, redis.exceptions.MaxConnectionsError):  # a ConnectionError too
        # every connection of this client's pool is in a call: too many calls at once
        return Overloaded(f"every connection of the client is busy ({error})", request_id)
    if isinstance(error, redis.AuthenticationError):  # a ConnectionError in redis-py
        message = f"redis refused the credentials (AuthenticationError): {error}"
    elif isinstance(error, redis.ConnectionError):
        message = f"redis unreachable: {error}"
    else:
        message = f"redis refused the request: {error}"
    return Unavailable(message, request_id)


def _remaining(deadline: float) -> float:
    """Seconds left before ``deadline`` (monotonic); at least 1 ms (BLPOP 0 would block)."""
    return max(deadline - time.monotonic(), 0.001)


class _ClientBase:
    """What the sync and asyncio clients share: where to queue, and how to build a request.

    Deadlines are epoch times *by Redis's clock* (the scorers judge them by it too), so a
    client and a scorer need no clock sync: the client measures its clock's offset to
    Redis's (``TIME``) on its first call and every ``CLOCK_REFRESH_S``. ``clock``: the
    local clock (a test shifts it).
    """

    def __init__(
        self,
        client: Any,
        queue: str | None,
        prefix: str,
        timeout_s: float,
        max_queue_length: int,
        clock: Callable[[], float] = time.time,
        queues: int = 0,
    ) -> None:
        self.keys = Keyspace.of(client, prefix, queue or "", queues)
        self.queue, self.prefix = self.keys.requests, prefix
        # Requests go to the queues in turn (round robin): every scorer serves every queue,
        # so any spread works, and turns spread even one hot user's requests evenly.
        self.queues = self.keys.request_queues
        self._turn = itertools.count()
        self.timeout_s, self.max_queue_length = timeout_s, max_queue_length
        # the bound is the deployment's; each queue holds its share of it
        self._queue_bound = max(1, -(-max_queue_length // len(self.queues)))
        self.clock = clock
        self._offset: float | None = None  # Redis's clock minus ours
        self._offset_at = 0.0  # time.monotonic() when measured

    @classmethod
    def from_settings(
        cls, settings: Settings | None = None, *, timeout_s: float | None = None
    ) -> Self:
        """A client for the deployment ``settings`` describe (default: ``Settings()``, i.e.
        the environment, else the local stack ``ledrec stack up`` recorded)."""
        settings = settings if settings is not None else Settings()
        return cls.from_url(
            resolve_redis_url(settings),
            queue=settings.request_queue,
            prefix=settings.key_prefix,
            timeout_s=settings.request_timeout_s if timeout_s is None else timeout_s,
            max_queue_length=settings.max_queue_length,
            queues=settings.request_queues,
        )

    @classmethod
    def from_url(cls, url: str, timeout_s: float = 2.0, **kwargs: Any) -> Self:
        """A client for the Redis at ``url`` (each client builds its own kind)."""
        raise NotImplementedError

    def _clock_stale(self) -> bool:
        return self._offset is None or time.monotonic() - self._offset_at > CLOCK_REFRESH_S

    def _set_clock(self, reply: Any, sent_at: float) -> None:
        """The offset to Redis's clock from a ``TIME`` reply (at the round trip's middle)."""
        seconds, micros = reply
        redis_now = int(seconds) + int(micros) / 1e6
        self._offset = redis_now - (sent_at + self.clock()) / 2
        self._offset_at = time.monotonic()

    @staticmethod
    def _request_id(request_id: str | None) -> str:
        """The caller's request id, checked, else a fresh one."""
        if request_id is None:
            return protocol.new_request_id()
        if not protocol.valid_request_id(request_id):
            raise BadRequest(
                f"request_id must be 1 to {protocol.MAX_REQUEST_ID_LENGTH} visible ASCII "
                f"characters, not {request_id!r:.60}"
            )
        return request_id

    def _prepare(
        self,
        user_id: str | None,
        items: list[str] | None,
        k: int,
        exclude_seen: bool,
        timeout: float,
        lane: int,
        request_id: str,
        reply_to: str | None = None,
    ) -> tuple[Request, list[bytes | int]]:
        """The request to queue ``lane`` (its deadline by Redis's clock, its reply key in the
        queue's slot) and the enqueue script's arguments."""
        now = self.clock() + (self._offset or 0.0)
        req = protocol.new_request(
            self.prefix, k, timeout, user_id, items, exclude_seen, now, self.keys, lane,
            request_id, reply_to,
        )  # fmt: skip
        return req, [protocol.encode_request(req), self._queue_bound]

    def _lane(self) -> int:
        """The queue the next request goes to."""
        return next(self._turn) % len(self.queues) if len(self.queues) > 1 else 0

    def _queue_full(self, request_id: str) -> Overloaded:
        return Overloaded(f"request queue is full ({self.max_queue_length} waiting)", request_id)


class RecommenderClient(_ClientBase):
    """Synchronous client. Thread-safe (redis-py connection pool)."""

    def __init__(
        self,
        client: redis.Redis,
        queue: str | None = None,  # default: <prefix>:rpc:requests
        prefix: str = "ledrec",
        timeout_s: float = 2.0,
        max_queue_length: int = 10_000,
        clock: Callable[[], float] = time.time,
        queues: int = 0,
    ) -> None:
        super().__init__(client, queue, prefix, timeout_s, max_queue_length, clock, queues)
        self.client = client
        self._push = client.register_script(protocol.ENQUEUE_SCRIPT)

    @classmethod
    def from_url(
        cls, url: str, timeout_s: float = 2.0, max_connections: int = 64, **kwargs: Any
    ) -> Self:
        """A client for the Redis at ``url`` (``redis+cluster://``: a Redis Cluster),
        connecting within ``timeout_s``; ``max_connections``: its pool (per node on a
        cluster), i.e. calls at once: one more is ``Overloaded``."""
        options: dict[str, Any] = {
            "socket_connect_timeout": timeout_s,
            "socket_timeout": timeout_s + _READ_GRACE_S,
            "retry": Retry(NoBackoff(), 0),  # the call's timeout, not retries, bounds it
            "max_connections": max_connections,
        }
        client: Any = (
            redis.RedisCluster.from_url(plain_url(url), **options)
            if is_cluster_url(url)
            else redis.Redis.from_url(url, **options)
        )
        return cls(client, timeout_s=timeout_s, **kwargs)

    def _pool_of(self, queue: str) -> Any:
        """The connection pool of the node that holds ``queue`` (and its replies)."""
        if not self.keys.cluster:
            return self.client.connection_pool
        cluster: Any = self.client
        return cluster.get_redis_connection(cluster.get_node_from_key(queue)).connection_pool

    def close(self) -> None:
        """Close the connections."""
        self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def recommend(
        self, user_id: str, k: int = 10, exclude_seen: bool = True, timeout_s: float | None = None
    ) -> list[tuple[str, float]]:
        """Top-k (item_id, score) for a known user (popularity if unknown)."""
        return self.request(
            user_id=user_id, k=k, exclude_seen=exclude_seen, timeout_s=timeout_s
        ).items

    def recommend_for_items(
        self,
        items: list[str],
        k: int = 10,
        exclude_seen: bool = True,
        timeout_s: float | None = None,
    ) -> list[tuple[str, float]]:
        """Top-k for an explicit timeline (anonymous or session users)."""
        return self.request(items=items, k=k, exclude_seen=exclude_seen, timeout_s=timeout_s).items

    def request(
        self,
        user_id: str | None = None,
        items: list[str] | None = None,
        k: int = 10,
        exclude_seen: bool = True,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> Recommendations:
        """The recommendations for a user (``user_id``) or a timeline (``items``);
        ``request_id``: the caller's id for this call (default: a fresh one)."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        rid = self._request_id(request_id)
        lane = self._lane()
        queue = self.queues[lane]
        try:
            pool = self._pool_of(queue)
            conn: Any = pool.get_connection()  # connects within the connect timeout
            try:
                if self._clock_stale():
                    sent_at = self.clock()
                    conn.send_command("TIME")
                    self._set_clock(conn.read_response(timeout=_remaining(deadline)), sent_at)
                req, args = self._prepare(user_id, items, k, exclude_seen, timeout, lane, rid)
                conn.send_command("EVALSHA", self._push.sha, 1, queue, *args)
                try:
                    pushed = conn.read_response(timeout=_remaining(deadline))
                except redis.exceptions.NoScriptError:  # a new or restarted Redis: load it
                    conn.send_command("SCRIPT", "LOAD", protocol.ENQUEUE_SCRIPT)
                    conn.read_response(timeout=_remaining(deadline))
                    conn.send_command("EVALSHA", self._push.sha, 1, queue, *args)
                    pushed = conn.read_response(timeout=_remaining(deadline))
                if pushed < 0:
                    raise self._queue_full(rid)
                wait = _remaining(deadline)
                conn.send_command("BLPOP", req.reply_to, f"{wait:.3f}")
                raw = conn.read_response(timeout=wait + _READ_GRACE_S)
            except BaseException:
                conn.disconnect()  # a half-read connection is never reused
                raise
            finally:
                pool.release(conn)
        except redis.RedisError as e:
            moved = isinstance(e, redis.exceptions.AskError | redis.exceptions.ClusterError)
            lost = isinstance(e, redis.ConnectionError) and not isinstance(
                e, redis.AuthenticationError
            )
            if moved or lost:
                self._refresh_slots()  # a failover or resharding: the next call goes right
            raise _redis_failure(e, timeout, rid) from e
        return _result(raw, timeout, rid)

    def _refresh_slots(self) -> None:
        """On a cluster, re-read the slot map (best effort: the next call retries)."""
        if self.keys.cluster:
            with contextlib.suppress(redis.RedisError, redis.exceptions.RedisClusterException):
                self.client.nodes_manager.initialize()  # type: ignore[attr-defined]


# A caller's request id stays reserved this long past its deadline after a call that got no
# reply: a scorer that took it just in time may still answer, and that late reply must not
# be taken for the answer to a new call with the same id.
_LATE_REPLY_S = 10.0
_LISTEN_S = 1  # the reply listener's BLMPOP timeout (seconds): how often it looks up
_LISTEN_STALL_S = 5.0  # a BLMPOP unanswered this long past its timeout: a stalled link
_NO_READ_TIMEOUT_S = 3600.0  # a read bounded by the caller's asyncio.timeout instead
_TAKE_REPLIES = 256  # replies the listener takes per round trip, at most


class _Multiplexer:
    """One asyncio client's requests over two connections of its own (one Redis only).

    A sender task writes every enqueue script call that came in since its last write in
    one write (a pipeline) and hands each caller its reply; a listener task takes the
    replies to every request from the client's one reply key (``BLMPOP ... COUNT``) and
    gives each to the call waiting for its ``id``. A call only awaits futures: its timeout
    or cancellation never interrupts a command on a connection, so no connection is ever
    left half-read, and the connections held stay two whatever the load.
    """

    def __init__(self, client: aredis.Redis, reply_key: str) -> None:
        self.pool = client.connection_pool
        self.reply_key = reply_key
        self.outbox: list[tuple[bytes, asyncio.Future[Any]]] = []
        self.waiting: dict[str, asyncio.Future[Any]] = {}  # wire id -> its call
        self.reserved: dict[str, float] = {}  # caller ids a late reply may still come for
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def busy(self, request_id: str) -> bool:
        """Whether a reply to ``request_id`` may still come (it cannot be told apart)."""
        if request_id in self.waiting:
            return True
        until = self.reserved.get(request_id)
        return until is not None and until > time.monotonic()

    def reserve(self, request_id: str, until: float) -> None:
        if len(self.reserved) > 4096:  # drop the expired ones now and then
            now = time.monotonic()
            self.reserved = {r: t for r, t in self.reserved.items() if t > now}
        self.reserved[request_id] = until

    def submit(self, command: bytes) -> asyncio.Future[Any]:
        """Queue a packed command; the future gets its reply (or the error, as a value)."""
        if not self._tasks or any(t.done() for t in self._tasks):
            self._start()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.outbox.append((command, future))
        self._ready.set()
        return future

    def _start(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = [asyncio.create_task(self._send()), asyncio.create_task(self._listen())]

    async def _send(self) -> None:
        conn = self.pool.make_connection()  # type: ignore[no-untyped-call]
        batch: list[tuple[bytes, asyncio.Future[Any]]] = []
        try:
            await conn.connect()
            await conn.send_command("SCRIPT", "LOAD", protocol.ENQUEUE_SCRIPT)
            await conn.read_response()
            while True:
                if not self.outbox:
                    self._ready.clear()
                    await self._ready.wait()
                    continue
                batch, self.outbox = self.outbox, []
                await conn.send_packed_command([c for c, _ in batch], check_health=False)
                for _, future in batch:
                    try:
                        result: Any = await conn.read_response()
                    except redis.ResponseError as e:  # this command's error, not the link's
                        result = e
                    if not future.done():
                        future.set_result(result)
                batch = []
        except (redis.RedisError, OSError) as e:
            self._fail([*batch, *self.outbox], e)
            self.outbox = []
        finally:
            await conn.disconnect(nowait=True)

    async def _listen(self) -> None:
        conn = self.pool.make_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.connect()
            while True:
                await conn.send_command(
                    "BLMPOP", _LISTEN_S, 1, self.reply_key, "RIGHT", "COUNT", _TAKE_REPLIES
                )
                # The deadline is ours, not read_response's: given a timeout, redis-py
                # returns None when it passes (as for a BLMPOP that found nothing) and
                # leaves the reply unread, so the next BLMPOP would read this one's.
                # Cancelled mid-read, redis-py drops the connection: take a new one (a
                # Redis that is gone fails the connect, and the calls with it).
                try:
                    async with asyncio.timeout(_LISTEN_S + _LISTEN_STALL_S):
                        taken = await conn.read_response(timeout=_NO_READ_TIMEOUT_S)
                except TimeoutError:
                    log.warning("reply listener stalled; reconnecting",
                                extra={"waiting": len(self.waiting)})  # fmt: skip
                    await conn.disconnect(nowait=True)
                    await conn.connect()
                    continue
                for body in taken[1] if taken else ():
                    reply = protocol.decode_reply(body)
                    future = self.waiting.pop(str(reply.get("id", "")), None)
                    if future is not None and not future.done():
                        future.set_result(reply)
        except (redis.RedisError, OSError) as e:
            self._fail([("", f) for f in self.waiting.values()], e)
        finally:
            await conn.disconnect(nowait=True)

    def _fail(self, calls: list[tuple[Any, asyncio.Future[Any]]], error: BaseException) -> None:
        """Hand the calls the error of the connection they were on (and restart next time)."""
        for _, future in calls:
            if not future.done():
                future.set_result(error)
        self._tasks = [t for t in self._tasks if not t.done() and t is not asyncio.current_task()]
        for task in self._tasks:
            task.cancel()  # the other half starts afresh with it
        self._tasks = []

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # bounded: a read being cancelled inside redis-py may linger
            await asyncio.wait(self._tasks, timeout=_LISTEN_S + _READ_GRACE_S)
        self._tasks = []


class AsyncRecommenderClient(_ClientBase):
    """asyncio client with the same surface as ``RecommenderClient``.

    On one Redis its calls are multiplexed (``_Multiplexer``): every request is sent on one
    shared connection, pipelined with the others, and its reply comes to the client's own
    reply key, ``<prefix>:rpc:reply:<client token>``, which one listener connection takes
    them all from, by request id. A call whose id is still in use by another of its calls
    (a caller's id given twice) and every call on a Redis Cluster take the per-call path
    instead: a connection of the pool (``max_connections`` at most; a call that finds
    them all busy is ``Overloaded``) for the enqueue and a ``BLPOP`` on its own reply key.

    ``max_in_flight``: calls of this client at once, at most; the next is ``Overloaded``
    at once. Past the scorers' capacity, admitting every call would leave each one waiting
    behind all the others until nearly none is answered in time; shedding the excess at
    the door keeps the ones admitted answered.
    """

    def __init__(
        self,
        client: aredis.Redis,
        queue: str | None = None,  # default: <prefix>:rpc:requests
        prefix: str = "ledrec",
        timeout_s: float = 2.0,
        max_queue_length: int = 10_000,
        clock: Callable[[], float] = time.time,
        queues: int = 0,
        max_in_flight: int = 1024,
    ) -> None:
        super().__init__(client, queue, prefix, timeout_s, max_queue_length, clock, queues)
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.client = client
        self.max_in_flight = max_in_flight
        self._in_flight = 0
        self._push = client.register_script(protocol.ENQUEUE_SCRIPT)
        self._mux: _Multiplexer | None = None
        self._clock_refresh: asyncio.Future[None] | None = None
        if not self.keys.cluster:
            self._mux = _Multiplexer(client, self.keys.reply(f"c{protocol.new_request_id()}"))

    @classmethod
    def from_url(
        cls, url: str, timeout_s: float = 2.0, max_connections: int = 16, **kwargs: Any
    ) -> Self:
        """A client for the Redis at ``url`` (``redis+cluster://``: a Redis Cluster),
        connecting within ``timeout_s``; ``max_connections``: the per-call path's pool
        (per node on a cluster), two more on one Redis for the multiplexed calls."""
        options: dict[str, Any] = {
            "socket_connect_timeout": timeout_s,
            "socket_timeout": timeout_s + _READ_GRACE_S,
            "max_connections": max_connections,
        }
        client: Any = (
            aredis.RedisCluster.from_url(plain_url(url), **options)
            if is_cluster_url(url)
            else aredis.Redis.from_url(url, retry=AsyncRetry(NoBackoff(), 0), **options)
        )
        return cls(client, timeout_s=timeout_s, **kwargs)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def recommend(
        self, user_id: str, k: int = 10, exclude_seen: bool = True, timeout_s: float | None = None
    ) -> list[tuple[str, float]]:
        return (
            await self.request(user_id=user_id, k=k, exclude_seen=exclude_seen, timeout_s=timeout_s)
        ).items

    async def recommend_for_items(
        self,
        items: list[str],
        k: int = 10,
        exclude_seen: bool = True,
        timeout_s: float | None = None,
    ) -> list[tuple[str, float]]:
        return (
            await self.request(items=items, k=k, exclude_seen=exclude_seen, timeout_s=timeout_s)
        ).items

    async def request(
        self,
        user_id: str | None = None,
        items: list[str] | None = None,
        k: int = 10,
        exclude_seen: bool = True,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> Recommendations:
        """The recommendations for a user (``user_id``) or a timeline (``items``);
        ``request_id``: the caller's id for this call (default: a fresh one)."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        rid = self._request_id(request_id)
        if self._in_flight >= self.max_in_flight:
            raise Overloaded(f"{self._in_flight} calls of this client in flight", rid)
        self._in_flight += 1
        try:
            if self._mux is not None and not self._mux.busy(rid):
                return await self._multiplexed(
                    self._mux, user_id, items, k, exclude_seen, timeout, rid
                )
            return await self._alone(user_id, items, k, exclude_seen, timeout, rid)
        finally:
            self._in_flight -= 1

    async def _refresh_clock(self, mux: _Multiplexer | None) -> None:
        """Measure the offset to Redis's clock once for all the calls that find it stale.

        Concurrent calls share one ``TIME`` (through ``mux`` when given, so it takes no
        connection of the pool): twenty first calls asking each would take twenty
        connections and find the pool exhausted. Shielded: one caller's timeout does not
        cancel the measurement the others wait for.
        """
        if self._clock_refresh is None or self._clock_refresh.done():
            self._clock_refresh = asyncio.ensure_future(self._measure_clock(mux))
        await asyncio.shield(self._clock_refresh)

    async def _measure_clock(self, mux: _Multiplexer | None) -> None:
        sent_at = self.clock()
        reply: Any = (
            await mux.submit(resp_command(b"TIME")) if mux is not None else await self.client.time()
        )
        if isinstance(reply, BaseException):
            raise reply
        self._set_clock(reply, sent_at)

    async def _multiplexed(
        self,
        mux: _Multiplexer,
        user_id: str | None,
        items: list[str] | None,
        k: int,
        exclude_seen: bool,
        timeout: float,
        rid: str,
    ) -> Recommendations:
        """A call through the client's shared connections (``_Multiplexer``)."""
        deadline = time.monotonic() + timeout
        reply: Any = None
        mux.waiting[rid] = answer = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                if self._clock_stale():
                    await self._refresh_clock(mux)
                lane = self._lane()
                for attempt in (1, 2):
                    _, args = self._prepare(
                        user_id, items, k, exclude_seen, timeout, lane, rid, mux.reply_key
                    )
                    pushed = await mux.submit(
                        resp_command(b"EVALSHA", self._push.sha.encode(), b"1",
                                     self.queues[lane].encode(), *(_arg(a) for a in args))
                    )  # fmt: skip
                    if not isinstance(pushed, redis.exceptions.NoScriptError) or attempt == 2:
                        break
                    await self.client.script_load(protocol.ENQUEUE_SCRIPT)  # flushed: reload
                if isinstance(pushed, BaseException):
                    raise pushed
                if pushed < 0:
                    raise self._queue_full(rid)
                reply = await answer
                if isinstance(reply, BaseException):
                    raise reply
        except (TimeoutError, redis.RedisError, OSError) as e:
            if isinstance(e, OSError) and not isinstance(e, TimeoutError):
                e = redis.ConnectionError(str(e))
            raise _redis_failure(e, timeout, rid) from e
        finally:
            if mux.waiting.get(rid) is answer:
                del mux.waiting[rid]
            if reply is None:  # no reply yet: one may still come, under this id
                mux.reserve(rid, deadline + _LATE_REPLY_S)
        return _recommendations(reply)

    async def _alone(
        self,
        user_id: str | None,
        items: list[str] | None,
        k: int,
        exclude_seen: bool,
        timeout: float,
        rid: str,
    ) -> Recommendations:
        """A call on a connection of the pool, with a reply key of its own."""
        deadline = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout + _READ_GRACE_S):
                if self._clock_stale():
                    await self._refresh_clock(None)
                lane = self._lane()
                req, args = self._prepare(user_id, items, k, exclude_seen, timeout, lane, rid)
                if await self._push(keys=[self.queues[lane]], args=args) < 0:
                    raise self._queue_full(rid)
                wait = _remaining(deadline)
                raw = await self.client.blpop([req.reply_to], timeout=round(wait, 3))
        except (TimeoutError, redis.RedisError) as e:
            raise _redis_failure(e, timeout, rid) from e
        return _result(raw, timeout, rid)

    async def aclose(self) -> None:
        """Close the connections."""
        if self._mux is not None:
            await self._mux.aclose()
        await self.client.aclose()


def _arg(value: bytes | int) -> bytes:
    return value if isinstance(value, bytes) else b"%d" % value
