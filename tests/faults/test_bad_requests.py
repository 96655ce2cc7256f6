"""Malformed requests on the real request list: each gets an error reply (or is dropped when
it names no reply key), and the scorer process keeps serving. The limits it enforces are
the deployment's configuration, not constants."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, cast

import msgpack
import pytest
import redis

from ledrec.settings import Settings
from ledrec.stream import protocol
from ledrec.stream.client import BadRequest, RecommenderClient
from ledrec.stream.consumer import StateUpdater
from ledrec.stream.producer import EventPublisher
from tests.helpers import publish_model, random_model, settings_env, start_cli, wait_until

# Deliberately small limits, passed to the scorer process through its environment.
LIMITS = {"max_k": 50, "max_id_length": 16, "max_request_timeline": 5, "max_request_bytes": 2048}


def _bad(reply_to: str, fields: dict[str, Any]) -> bytes:
    """A valid request with ``fields`` changed (``...`` removes a field)."""
    body = {"id": "bad", "reply_to": reply_to, "deadline": time.time() + 30, "k": 5,
            "user_id": "u1"} | fields  # fmt: skip
    packed: bytes = msgpack.packb({k: v for k, v in body.items() if v is not ...})
    return packed


ANSWERABLE: list[dict[str, Any]] = [  # each names its reply key: the client is told what is wrong
    {"k": 0}, {"k": -1}, {"k": 51}, {"k": 2**64 - 1}, {"k": "10"}, {"k": 1.5}, {"k": True},
    {"deadline": math.nan}, {"deadline": math.inf}, {"deadline": "soon"}, {"deadline": ...},
    {"user_id": ...}, {"items": ["i1"]}, {"user_id": "u" * 17}, {"user_id": ""},
    {"user_id": 42}, {"user_id": ..., "items": ["i"] * 6}, {"user_id": ..., "items": ["i" * 17]},
    {"user_id": ..., "items": "i1,i2"}, {"user_id": ..., "items": [1, 2]},
    {"exclude_seen": "yes"}, {"user_id": {"nested": [[[]]]}},
]  # fmt: skip
UNANSWERABLE = [  # no usable reply key (or too big to read one): dropped, counted, logged
    b"", b"\xc1", b"\xdd\xff\xff\xff\xff", b"\x91" * 5000 + b"\xc0", msgpack.packb([1, 2]),
    msgpack.packb({"reply_to": 7, "k": 5}), msgpack.packb({"reply_to": "", "k": 5}),
    msgpack.packb({"reply_to": "r" * 513, "k": 5}),
    msgpack.packb({"reply_to": "REPLY:big", "user_id": "u1", "pad": "x" * 3000}),
]  # fmt: skip
# Regression: reply keys were bounded by 2 * max_id_length, so with max_id_length=16 every
# client's reply key (prefix + 43 chars) was refused and every request timed out.


def test_malformed_requests_get_errors_and_the_scorer_keeps_serving(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    settings = settings.model_copy(update=LIMITS)
    publish_model(settings, redis_client, random_model(n_items=100, dim=8))
    log = tmp_path / "scorer.log"
    scorer = start_cli(["serve"], settings_env(settings), log)
    rpc = RecommenderClient(redis_client, settings.request_queue, settings.key_prefix)
    prefix = f"{settings.key_prefix}:bad"
    try:
        wait_until(lambda: "model swapped" in log.read_text(), 60, "scorer ready", step=0.05)
        payloads = [_bad(f"{prefix}:{n}", fields) for n, fields in enumerate(ANSWERABLE)]
        for _ in range(3):  # interleaved with valid requests, several times over
            redis_client.lpush(settings.request_queue, *payloads, *UNANSWERABLE)
            assert rpc.recommend("u1", k=50)  # the largest k allowed is served
            assert rpc.recommend_for_items(["i1", "i2", "i3", "i4", "i5"], k=3)
            for n in range(len(ANSWERABLE)):
                popped = redis_client.blpop([f"{prefix}:{n}"], timeout=5)
                assert popped is not None, f"no reply to {ANSWERABLE[n]}"
                reply = protocol.decode_reply(cast(bytes, popped[1]))
                assert not reply["ok"] and reply["error"]["code"] == protocol.BAD_REQUEST
                assert reply["error"]["message"], ANSWERABLE[n]
        assert redis_client.llen(settings.request_queue) == 0
        with pytest.raises(BadRequest, match=r"k must be an integer in \[1, 50\]"):
            rpc.recommend("u1", k=51)
        assert scorer.poll() is None
    finally:
        scorer.terminate()
        scorer.wait(timeout=20)
    print(
        f"\n{3 * len(ANSWERABLE)} malformed requests answered with bad_request, "
        f"{3 * len(UNANSWERABLE)} without a usable reply key dropped; scorer kept serving"
    )


def test_event_limits_come_from_settings(settings: Settings, redis_client: redis.Redis) -> None:
    settings = settings.model_copy(update={"max_id_length": 16, "max_event_bytes": 512})
    for codec in (
        EventPublisher(settings, settings.kafka_bootstrap).codec,
        StateUpdater(settings, settings.kafka_bootstrap, redis_client).codec,
    ):
        assert codec.max_id_length == 16 and codec.max_event_bytes == 512
        assert codec.event_types == frozenset(settings.event_weights)
