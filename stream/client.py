"""Recommendation clients (sync and asyncio) over the Redis RPC.

client = RecommenderClient.from_url("redis://127.0.0.1:6379/0")
client.recommend("user-42", k=10)   # -> [("item-7", 3.2), ...]
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aredis

from ledrec.stream import protocol
from ledrec.stream.protocol import Request

# Enqueue only while the queue is under its bound: an overloaded system says so at once
# instead of queueing without end. KEYS[1] queue; ARGV: request, bound.
_BOUNDED_PUSH = """
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[2]) then return -1 end
return redis.call('LPUSH', KEYS[1], ARGV[1])
"""


class RecommendError(RuntimeError):
    """Base class of the client's errors."""


class Timeout(RecommendError):
    """No reply before the deadline (no scorer running, or all of them overloaded)."""


class BadRequest(RecommendError):
    """The scorer refused the request as malformed (bad k, ids too long...)."""


class Overloaded(RecommendError):
    """The request queue is over its bound: shed load instead of queueing without end."""


class Unavailable(RecommendError):
    """The scorer has no model to answer with."""


@dataclass(frozen=True)
class Recommendations:
    items: list[tuple[str, float]]
    version: str  # model version that answered
    source: str  # "state", "timeline" (encoded on the fly), "items" or "popularity"


def _request(
    prefix: str,
    k: int,
    timeout_s: float,
    user_id: str | None,
    items: list[str] | None,
    exclude_seen: bool,
) -> Request:
    rid = uuid.uuid4().hex
    return Request(
        id=rid,
        reply_to=f"{prefix}:rpc:reply:{rid}",
        deadline=time.time() + timeout_s,
        k=k,
        user_id=user_id,
        items=tuple(items) if items is not None else None,
        exclude_seen=exclude_seen,
    )


def _result(raw: Any, timeout_s: float) -> Recommendations:
    if raw is None:
        raise Timeout(f"no reply within {timeout_s:.3f}s")
    reply = protocol.decode_reply(raw[1])
    if not reply.get("ok"):
        error = reply.get("error", {})
        code, message = error.get("code"), error.get("message", "")
        if code == protocol.BAD_REQUEST:
            raise BadRequest(message)
        if code == protocol.OVERLOADED:
            raise Overloaded(message)
        raise Unavailable(message)
    return Recommendations(
        [(str(i), float(s)) for i, s in reply["items"]], reply["version"], reply["source"]
    )


class _ClientBase:
    """What the sync and asyncio clients share: where to queue, and how to build a request."""

    def __init__(self, queue: str, prefix: str, timeout_s: float, max_queue_length: int) -> None:
        self.queue, self.prefix = queue, prefix
        self.timeout_s, self.max_queue_length = timeout_s, max_queue_length

    def _prepare(
        self,
        user_id: str | None,
        items: list[str] | None,
        k: int,
        exclude_seen: bool,
        timeout_s: float | None,
    ) -> tuple[Request, float, list[bytes | int]]:
        """The request, its timeout, and the bounded-push script's arguments."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        req = _request(self.prefix, k, timeout, user_id, items, exclude_seen)
        return req, timeout, [protocol.encode_request(req), self.max_queue_length]

    def _queue_full(self) -> Overloaded:
        return Overloaded(f"request queue is full ({self.max_queue_length} waiting)")


class RecommenderClient(_ClientBase):
    """Synchronous client. Thread-safe (redis-py connection pool)."""

    def __init__(
        self,
        client: redis.Redis,
        queue: str = "ledrec:rpc:requests",
        prefix: str = "ledrec",
        timeout_s: float = 2.0,
        max_queue_length: int = 10_000,
    ) -> None:
        super().__init__(queue, prefix, timeout_s, max_queue_length)
        self.client = client
        self._push = client.register_script(_BOUNDED_PUSH)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RecommenderClient:
        return cls(redis.Redis.from_url(url), **kwargs)

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
    ) -> Recommendations:
        req, timeout, args = self._prepare(user_id, items, k, exclude_seen, timeout_s)
        if self._push(keys=[self.queue], args=args) < 0:
            raise self._queue_full()
        return _result(self.client.blpop([req.reply_to], timeout=timeout), timeout)


class AsyncRecommenderClient(_ClientBase):
    """asyncio client with the same surface as ``RecommenderClient``."""

    def __init__(
        self,
        client: aredis.Redis,
        queue: str = "ledrec:rpc:requests",
        prefix: str = "ledrec",
        timeout_s: float = 2.0,
        max_queue_length: int = 10_000,
    ) -> None:
        super().__init__(queue, prefix, timeout_s, max_queue_length)
        self.client = client
        self._push = client.register_script(_BOUNDED_PUSH)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> AsyncRecommenderClient:
        return cls(aredis.Redis.from_url(url), **kwargs)

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
    ) -> Recommendations:
        req, timeout, args = self._prepare(user_id, items, k, exclude_seen, timeout_s)
        if await self._push(keys=[self.queue], args=args) < 0:
            raise self._queue_full()
        return _result(await self.client.blpop([req.reply_to], timeout=timeout), timeout)

    async def aclose(self) -> None:
        await self.client.aclose()
