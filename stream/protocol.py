"""The recommendation RPC's wire format, shared by the server and the clients.

Clients LPUSH a msgpack request onto the request list and BLPOP their own reply key;
scorers pop requests in batches and LPUSH the reply (which expires if nobody takes it).

Request: ``{"id", "reply_to", "deadline", "k", "user_id" | "items", "exclude_seen"}``; the
deadline is in epoch seconds *by Redis's clock* (``TIME``), which clients and scorers both
measure themselves against, so they need no clock sync between them. ``id`` is the request
id: the caller's (an HTTP ``X-Request-Id``) or a fresh one; the scorer logs it and the
reply carries it back, so one id finds a request in every log. It routes nothing: the reply
key is always made of a fresh id, since a caller's need not be unique.
Reply:   ``{"id", "ok": true, "items": [[item_id, score], ...], "version", "source"}`` or
         ``{"id", "ok": false, "error": {"code", "message"}}``

Queues (``ledrec.keyspace``): one on one Redis; on a Redis Cluster eight by default, each
``<p>:rpc:{<p>:q<i>}:requests``. A client may push to any of them (ours go round robin),
and on a cluster its ``reply_to`` must share that queue's hash tag
(``<p>:rpc:{<p>:q<i>}:reply:<id>``): the scorer sends the reply with its next take from
that queue, on that queue's node; a reply key in another slot is still answered, in a
round trip of its own.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from ledrec.errors import LedrecError
from ledrec.keyspace import Keyspace
from ledrec.stream.wire import unpack_untrusted

# Clients enqueue with this script: only while the queue is under its bound, so an
# overloaded system says so at once (-1) instead of queueing without end.
# KEYS[1] the request queue; ARGV: the request, the bound. Returns the queue length or -1.
ENQUEUE_SCRIPT = """
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[2]) then return -1 end
return redis.call('LPUSH', KEYS[1], ARGV[1])
"""

MAX_REQUEST_ID_LENGTH = 128
_REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID_LENGTH}}}")

BAD_REQUEST = "bad_request"
OVERLOADED = "overloaded"
UNAVAILABLE = "unavailable"


class RequestError(LedrecError, ValueError):
    """A request that cannot be served; ``reply_to`` is set when an error reply is possible."""

    def __init__(self, message: str, reply_to: str | None = None, request_id: str = "") -> None:
        super().__init__(message)
        self.reply_to = reply_to
        self.request_id = request_id


@dataclass(frozen=True)
class Request:
    id: str
    reply_to: str
    deadline: float
    k: int
    user_id: str | None = None
    items: tuple[str, ...] | None = None
    exclude_seen: bool = True


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int = 65536
    max_id_length: int = 256
    max_k: int = 1000
    max_timeline: int = 1000
    # Reply keys are made by the client library from the key prefix, not by users: a bound of
    # their own, so a small max_id_length cannot make every reply undeliverable.
    max_reply_key: int = 512


def valid_request_id(value: object) -> bool:
    """A request id: 1 to ``MAX_REQUEST_ID_LENGTH`` visible ASCII characters (no space or
    control character), so it goes into an HTTP header and a log line as it is."""
    return isinstance(value, str) and _REQUEST_ID.fullmatch(value) is not None


def new_request_id() -> str:
    return uuid.uuid4().hex


def new_request(
    prefix: str,
    k: int,
    timeout_s: float,
    user_id: str | None,
    items: Sequence[str] | None,
    exclude_seen: bool,
    now: float | None = None,
    keys: Keyspace | None = None,
    queue: int = 0,
    request_id: str | None = None,
    reply_to: str | None = None,
) -> Request:
    """A request with its own reply key and a deadline ``timeout_s`` after ``now`` (epoch
    seconds by Redis's clock; default: this machine's).

    ``keys``/``queue``: the keyspace and the queue it is sent to (on a cluster the reply key
    shares the queue's hash tag, so the scorer's replies go to that queue's node).
    ``request_id``: the caller's (``valid_request_id``); default: the fresh id of the reply
    key. ``reply_to``: a reply key of the caller's (default: one of its own for this request).
    """
    token = new_request_id() if request_id is None or reply_to is None else ""  # ~4 µs
    return Request(
        id=token if request_id is None else request_id,
        reply_to=reply_to or (keys or Keyspace(prefix)).reply(token, queue),
        deadline=(time.time() if now is None else now) + timeout_s,
        k=k,
        user_id=user_id,
        items=tuple(items) if items is not None else None,
        exclude_seen=exclude_seen,
    )


def encode_request(req: Request) -> bytes:
    body: dict[str, Any] = {
        "id": req.id,
        "reply_to": req.reply_to,
        "deadline": req.deadline,
        "k": req.k,
        "exclude_seen": req.exclude_seen,
    }
    if req.user_id is not None:
        body["user_id"] = req.user_id
    if req.items is not None:
        body["items"] = list(req.items)
    packed: bytes = msgpack.packb(body)
    return packed


def decode_request(raw: bytes, limits: Limits) -> Request:
    """Parse and check a request; raises RequestError with the reason."""
    try:
        body = unpack_untrusted(raw, limits.max_request_bytes, "request")
    except ValueError as e:
        raise RequestError(str(e)) from None
    if not isinstance(body, dict):
        raise RequestError("request must be a map")
    rid = body.get("id", "")
    rid = rid if valid_request_id(rid) else ""  # still answered, under no id
    reply_to = body.get("reply_to")
    if not isinstance(reply_to, str) or not 0 < len(reply_to) <= limits.max_reply_key:
        raise RequestError("reply_to must be a non-empty string", request_id=rid)

    def bad(message: str) -> RequestError:
        return RequestError(message, reply_to, rid)

    k = body.get("k", 10)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limits.max_k:
        raise bad(f"k must be an integer in [1, {limits.max_k}]")
    deadline = body.get("deadline")
    if isinstance(deadline, bool) or not isinstance(deadline, int | float):
        raise bad("deadline must be an epoch time in seconds")
    if not math.isfinite(deadline):
        raise bad("deadline must be finite")
    exclude_seen = body.get("exclude_seen", True)
    if not isinstance(exclude_seen, bool):
        raise bad("exclude_seen must be a boolean")
    user_id, items = body.get("user_id"), body.get("items")
    if (user_id is None) == (items is None):
        raise bad("give exactly one of user_id or items")
    if user_id is not None and not _valid_id(user_id, limits):
        raise bad(f"user_id must be a non-empty string of at most {limits.max_id_length} chars")
    if items is not None:
        if not isinstance(items, list) or len(items) > limits.max_timeline:
            raise bad(f"items must be a list of at most {limits.max_timeline} item ids")
        if not all(_valid_id(i, limits) for i in items):
            raise bad(
                f"every item id must be a non-empty string of at most {limits.max_id_length} chars"
            )
        items = tuple(items)
    return Request(rid, reply_to, float(deadline), k, user_id, items, exclude_seen)


def _valid_id(v: Any, limits: Limits) -> bool:
    return isinstance(v, str) and 0 < len(v) <= limits.max_id_length


def encode_reply(
    request_id: str, items: list[tuple[str, float]], version: str, source: str
) -> bytes:
    packed: bytes = msgpack.packb(
        {"id": request_id, "ok": True, "items": items, "version": version, "source": source}
    )
    return packed


def encode_error(request_id: str, code: str, message: str) -> bytes:
    packed: bytes = msgpack.packb(
        {"id": request_id, "ok": False, "error": {"code": code, "message": message}}
    )
    return packed


def decode_reply(raw: bytes) -> dict[str, Any]:
    reply: dict[str, Any] = msgpack.unpackb(raw, raw=False)
    return reply
