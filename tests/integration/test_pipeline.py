"""The whole streaming path over real servers: publish → Kafka → consumer → Redis → RPC."""

from __future__ import annotations

import asyncio
import time

import msgpack
import numpy as np
import pytest
import redis
from confluent_kafka import Consumer, Producer

from ledrec.settings import Settings
from ledrec.stream.client import AsyncRecommenderClient, BadRequest, RecommenderClient, Timeout
from ledrec.stream.consumer import consumer_statuses
from ledrec.stream.producer import EventPublisher
from ledrec.stream.protocol import Request, encode_request
from ledrec.stream.state import UserStateStore
from tests.helpers import clean_pass, publish_model, random_model, running_consumer, running_server

pytestmark = pytest.mark.both_redis


def _client(settings: Settings, r: redis.Redis, timeout_s: float = 3.0) -> RecommenderClient:
    return RecommenderClient(r, settings.request_queue, settings.key_prefix, timeout_s)


def _wait_applied(settings: Settings, r: redis.Redis, n: int, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while True:
        statuses = consumer_statuses(r, settings.key_prefix).values()
        if sum(s["applied"] + s["dead_lettered"] for s in statuses) >= n:
            return
        assert time.time() < deadline, f"consumer did not process {n} events: {list(statuses)}"
        time.sleep(0.05)


def _dead_letters(settings: Settings, n: int) -> list[tuple[bytes | None, dict[str, bytes]]]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": "dlq-reader-" + settings.consumer_group,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([settings.dead_letter_topic])
    out: list[tuple[bytes | None, dict[str, bytes]]] = []
    deadline = time.time() + 30
    while len(out) < n and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            out.append((msg.value(), dict(msg.headers() or [])))
    consumer.close()
    return out


def test_events_reach_user_state_and_bad_ones_the_dead_letter_topic(
    settings: Settings, redis_client: redis.Redis
) -> None:
    model = publish_model(settings, redis_client, random_model(n_items=50))
    publisher = EventPublisher(settings, settings.kafka_bootstrap)
    rng = np.random.default_rng(0)
    events = []
    for n in range(400):
        user, item, kind = (
            f"u{rng.integers(20)}",
            f"i{rng.integers(60)}",
            ["view", "click", "sale"][n % 3],
        )
        publisher.send(user, item, kind, ts=float(n))
        events.append((user, item, settings.event_weights[kind]))
    raw = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    bad = [
        b"\xc1\xc1",
        msgpack.packb({"user_id": "u1"}),
        msgpack.packb({"user_id": "u1", "item_id": "i1", "type": "purchase", "ts": 1.0}),
        b"",
        b"x" * 10_000,
    ]
    for payload in bad:
        raw.produce(settings.events_topic, value=payload, key=b"u1")
    raw.flush()
    assert publisher.flush().delivered == 400
    with running_consumer(settings, redis_client):
        _wait_applied(settings, redis_client, 400 + len(bad))
    store = UserStateStore(redis_client, settings.key_prefix, settings.timeline_max, 60)
    expected = clean_pass(events, settings.timeline_max, model)
    for user, (window, total, weight) in expected.items():
        state = store.read(user, [model.version])
        assert state is not None and state.timeline == window
        np.testing.assert_allclose(state.sums[model.version], total, rtol=1e-9, atol=1e-9)
        assert state.weights[model.version] == pytest.approx(weight)
    letters = _dead_letters(settings, len(bad))
    assert sorted(v or b"" for v, _ in letters) == sorted(bad)
    reasons = sorted(h["ledrec.error"].decode() for _, h in letters)
    assert any("undecodable" in r for r in reasons) and any(
        "unknown event type" in r for r in reasons
    )
    assert all(h["ledrec.source"].startswith(settings.events_topic.encode()) for _, h in letters)


def test_recommendations_follow_published_events_and_match_offline_scoring(
    settings: Settings, redis_client: redis.Redis
) -> None:
    model = publish_model(settings, redis_client, random_model(n_items=300, dim=16))
    client = _client(settings, redis_client)
    publisher = EventPublisher(settings, settings.kafka_bootstrap)
    with running_consumer(settings, redis_client), running_server(settings, redis_client):
        before = client.request(user_id="alice", k=10)
        assert before.source == "popularity"
        timeline = [f"i{n}" for n in (3, 17, 42, 99, 150)]
        for item in timeline:
            publisher.send("alice", item, "click")
        publisher.flush()
        _wait_applied(settings, redis_client, len(timeline))
        after = client.request(user_id="alice", k=10)
    assert after.source == "state" and after.version == model.version
    assert after.items != before.items
    assert not set(timeline) & {i for i, _ in after.items}  # seen items excluded
    # Offline: the same model and timeline, scored directly.
    u = model.embeddings[[model.row_of[i] for i in timeline]].astype(np.float64).mean(axis=0)
    scores = model.embeddings.astype(np.float64) @ u + model.biases
    offline = [
        str(model.item_ids[i])
        for i in np.argsort(-scores)
        if str(model.item_ids[i]) not in timeline
    ][:10]
    assert [i for i, _ in after.items] == offline


def test_explicit_timeline_bad_request_and_async_client(
    settings: Settings, redis_client: redis.Redis
) -> None:
    model = publish_model(settings, redis_client, random_model(n_items=100))
    client = _client(settings, redis_client)
    with running_server(settings, redis_client):
        rec = client.request(items=["i1", "i2"], k=5)
        assert rec.source == "items" and len(rec.items) == 5
        assert not {"i1", "i2"} & {i for i, _ in rec.items}
        with pytest.raises(BadRequest, match="k must be"):
            client.recommend("u", k=0)
        with pytest.raises(BadRequest, match="user_id"):
            client.recommend("x" * 1000)

        async def ask() -> list[list[tuple[str, float]]]:
            aclient = AsyncRecommenderClient.from_url(
                settings.redis_url, queue=settings.request_queue, prefix=settings.key_prefix
            )
            try:
                return await asyncio.gather(
                    *(aclient.recommend_for_items([f"i{n}"], k=3) for n in range(20))
                )
            finally:
                await aclient.aclose()

        answers = asyncio.run(ask())
        assert len(answers) == 20 and all(len(a) == 3 for a in answers)
        assert answers[0] == client.recommend_for_items(["i0"], k=3)  # same scorer, same answer
        assert client.request(items=["i0"]).version == model.version


def test_no_scorer_means_a_timeout_and_expired_requests_are_shed(
    settings: Settings, redis_client: redis.Redis
) -> None:
    publish_model(settings, redis_client, random_model(n_items=50))
    client = _client(settings, redis_client, timeout_s=0.2)
    started = time.perf_counter()
    with pytest.raises(Timeout):
        client.recommend("u")
    assert time.perf_counter() - started < 1.0
    keys = settings.keyspace_of(redis_client)
    late = Request("late", keys.reply("late"), time.time() - 1, 5, user_id="u")
    redis_client.lpush(keys.requests, encode_request(late))
    with running_server(settings, redis_client) as server:
        assert client.recommend("u", timeout_s=3.0)
    assert server.totals.shed == 2  # the timed-out request and the late one, never answered
    assert redis_client.llen(late.reply_to) == 0
