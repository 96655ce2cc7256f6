"""Both clients under far more calls than a scorer can answer: documented errors only, a
bounded number of connections, and full recovery once the load drops."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from ledrec import (
    AsyncRecommenderClient,
    BadRequest,
    Overloaded,
    RecommenderClient,
    Settings,
    Timeout,
    Unavailable,
)
from tests.helpers import publish_model, random_model, running_server

DOCUMENTED = (Overloaded, Timeout, Unavailable, BadRequest)
CALLS = 400  # at once; a one-request-batch scorer answers ~1-3k/s here, each call 0.3 s


def _connections(client: redis.Redis) -> int:
    return len(client.client_list())


@pytest.fixture
def slow_settings(settings: Settings, redis_client: redis.Redis) -> Settings:
    publish_model(settings, redis_client, random_model(version="v1"))
    return settings.model_copy(update={"serve_batch_size": 1, "max_queue_length": 150})


def test_asyncio_client_overload(slow_settings: Settings, redis_client: redis.Redis) -> None:
    with running_server(slow_settings, redis_client):

        async def main() -> tuple[list[object], int, int]:
            client = AsyncRecommenderClient.from_settings(slow_settings, timeout_s=0.3)
            await client.request(user_id="warm", timeout_s=5.0)
            before = _connections(redis_client)  # the scorer's, this test's, 3 of the client's
            outcomes = await asyncio.gather(
                *(client.request(user_id=f"u{i}") for i in range(CALLS)), return_exceptions=True
            )
            held = _connections(redis_client) - before
            after = [await client.request(user_id="again", timeout_s=2.0) for _ in range(20)]
            await client.aclose()
            return outcomes, held, len(after)

        outcomes, held, recovered = asyncio.run(main())
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert all(isinstance(e, DOCUMENTED) for e in errors), {type(e) for e in errors}
    assert len(errors) < CALLS  # it answered what it could
    assert held <= 16 - 1  # max_connections (the per-call path; one already open, as are
    # the multiplexer's two)
    assert recovered == 20


def test_asyncio_client_sheds_calls_past_max_in_flight(
    slow_settings: Settings, redis_client: redis.Redis
) -> None:
    """Calls past ``max_in_flight`` are ``Overloaded`` at once, without a round trip; the
    ones admitted are answered (a one-request-batch scorer answers 50 well within 5 s)."""
    with running_server(slow_settings, redis_client):

        async def main() -> list[object]:
            client = AsyncRecommenderClient.from_settings(slow_settings, timeout_s=5.0)
            client.max_in_flight = 50
            try:
                await client.request(user_id="warm")
                return await asyncio.gather(
                    *(client.request(user_id=f"u{i}") for i in range(CALLS)),
                    return_exceptions=True,
                )
            finally:
                await client.aclose()

        outcomes = asyncio.run(main())
    shed = [o for o in outcomes if isinstance(o, Overloaded) and "in flight" in str(o)]
    answered = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(shed) == CALLS - 50 and len(answered) == 50, {type(o) for o in outcomes}


def test_asyncio_client_cold_start_takes_no_pool_connections(
    slow_settings: Settings, redis_client: redis.Redis
) -> None:
    """Many first calls at once share one clock measurement: on one Redis none of them
    takes a connection of the pool, so a pool of one cannot run out (it did: each call
    sent its own ``TIME`` and the seventeenth was ``Overloaded``)."""
    settings = slow_settings.model_copy(update={"serve_batch_size": 64})
    with running_server(settings, redis_client):

        async def main() -> list[object]:
            client = AsyncRecommenderClient.from_url(
                settings.redis_url,
                queue=settings.request_queue,
                prefix=settings.key_prefix,
                max_connections=1,
            )
            try:
                return await asyncio.gather(
                    *(client.request(user_id=f"u{i}", timeout_s=5.0) for i in range(50)),
                    return_exceptions=True,
                )
            finally:
                await client.aclose()

        outcomes = asyncio.run(main())
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert not errors, errors[:3]


def test_sync_client_overload(slow_settings: Settings, redis_client: redis.Redis) -> None:
    with running_server(slow_settings, redis_client):
        client = RecommenderClient.from_url(
            slow_settings.redis_url,
            timeout_s=0.3,
            max_connections=8,
            prefix=slow_settings.key_prefix,
            max_queue_length=slow_settings.max_queue_length,
        )
        client.request(user_id="warm", timeout_s=5.0)
        before = _connections(redis_client)  # the scorer's, this test's, 1 of the client's
        held: list[int] = []
        listing = threading.Lock()  # the test's own client: one connection, not one a thread

        def one(i: int) -> object:
            try:
                if i % 50 == 0:
                    with listing:
                        held.append(_connections(redis_client) - before)
                return client.request(user_id=f"u{i}")
            except Exception as e:
                return e

        with ThreadPoolExecutor(32) as pool:  # 32 threads, 8 connections: most are shed
            outcomes = list(pool.map(one, range(CALLS)))
        after = [client.request(user_id="again", timeout_s=2.0) for _ in range(20)]
        client.close()
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert all(isinstance(e, DOCUMENTED) for e in errors), {type(e) for e in errors}
    assert any(isinstance(e, Overloaded) for e in errors)
    assert len(errors) < CALLS
    assert max(held) <= 8 - 1  # the pool's bound (one open already)
    assert len(after) == 20
