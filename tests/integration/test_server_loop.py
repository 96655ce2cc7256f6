"""The serving loop over a real Redis: batches taken with the replies' round trip, and a
reply Redis refuses."""

from __future__ import annotations

import time

import redis

from ledrec.settings import Settings
from ledrec.stream.client import RecommenderClient
from ledrec.stream.protocol import Request, decode_reply, encode_request
from ledrec.stream.server import RecommendServer
from tests.helpers import publish_model, random_model, running_server


def _request(settings: Settings, n: int, reply_to: str | None = None) -> bytes:
    return encode_request(
        Request(
            id=f"r{n}",
            reply_to=reply_to or f"{settings.key_prefix}:rpc:reply:r{n}",
            deadline=time.time() + 30,
            k=3,
            user_id=f"u{n}",
        )
    )


def test_a_refused_reply_does_not_stop_the_batch_or_the_server(
    settings: Settings, redis_client: redis.Redis
) -> None:
    publish_model(settings, redis_client, random_model(n_items=100))
    hash_key = f"{settings.key_prefix}:not-a-list"
    redis_client.hset(hash_key, "f", "v")  # LPUSH to it fails with WRONGTYPE
    client = RecommenderClient(redis_client, settings.request_queue, settings.key_prefix, 5.0)
    with running_server(settings, redis_client):
        assert client.recommend("warm", k=3)
        redis_client.lpush(
            settings.request_queue,
            *[_request(settings, 0, hash_key), _request(settings, 1), _request(settings, 2)],
        )
        for n in (1, 2):
            popped = redis_client.blpop([f"{settings.key_prefix}:rpc:reply:r{n}"], timeout=5)
            assert popped is not None
            reply = decode_reply(popped[1])
            assert reply["ok"] and reply["id"] == f"r{n}" and len(reply["items"]) == 3
        assert client.recommend("after", k=3)  # still serving
    assert redis_client.type(hash_key) == b"hash"


def test_queued_requests_are_served_in_batches(
    settings: Settings, redis_client: redis.Redis
) -> None:
    publish_model(settings, redis_client, random_model(n_items=100))
    server = RecommendServer(settings, redis_client)
    server.load_active()
    payloads = [_request(settings, n) for n in range(10)]
    redis_client.lpush(settings.request_queue, *payloads)
    popped = [server.serve_once(block_s=0.1) for _ in range(3)]
    assert popped[0] == 10 and popped[1:] == [0, 0]  # one BLMOVE + take script took them all
    for n in range(10):
        assert redis_client.llen(f"{settings.key_prefix}:rpc:reply:r{n}") == 1
        assert redis_client.ttl(f"{settings.key_prefix}:rpc:reply:r{n}") > 0
