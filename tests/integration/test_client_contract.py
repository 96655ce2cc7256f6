"""One contract for both recommendation clients: the same calls, the same answers and the
same documented errors, against a real Redis and a real scorer."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pytest
import redis

from ledrec import (
    AsyncRecommenderClient,
    BadRequest,
    Overloaded,
    Recommendations,
    RecommenderClient,
    Settings,
    Timeout,
    Unavailable,
)
from tests.helpers import publish_model, random_model, running_server

pytestmark = pytest.mark.contract


class Client(Protocol):
    def request(self, **kwargs: Any) -> Recommendations: ...
    def close(self) -> None: ...


class _AsyncAsSync:
    """The asyncio client driven from a test: every call on one event loop."""

    def __init__(self, client: AsyncRecommenderClient) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = client

    def request(self, **kwargs: Any) -> Recommendations:
        return self.loop.run_until_complete(self.client.request(**kwargs))

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


def _sync(settings: Settings, **kw: Any) -> Client:
    return RecommenderClient.from_settings(settings, **kw)


def _async(settings: Settings, **kw: Any) -> Client:
    return _AsyncAsSync(AsyncRecommenderClient.from_settings(settings, **kw))


@pytest.fixture(params=[_sync, _async], ids=["sync", "asyncio"])
def make_client(request: pytest.FixtureRequest) -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(settings: Settings, **kw: Any) -> Client:
        client: Client = request.param(settings, **kw)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def test_answers_with_items_scores_and_version(
    settings: Settings, redis_client: redis.Redis, make_client: Callable[..., Client]
) -> None:
    model = publish_model(settings, redis_client, random_model(version="v1"))
    with running_server(settings, redis_client):
        recs = make_client(settings).request(items=[model.item_ids[0]], k=5)
    assert recs.version == "v1" and recs.source == "items" and len(recs.items) == 5
    assert model.item_ids[0] not in [item for item, _ in recs.items]  # seen items excluded


def test_a_request_id_goes_to_the_scorer_and_comes_back(
    settings: Settings, redis_client: redis.Redis, make_client: Callable[..., Client]
) -> None:
    publish_model(settings, redis_client, random_model(version="v1"))
    client = make_client(settings)
    with running_server(settings, redis_client):
        given = client.request(user_id="alice", request_id="trace-42")
        fresh = [client.request(items=["i1"]).request_id for _ in range(2)]
        with pytest.raises(BadRequest) as refused:  # the scorer's error reply names it too
            client.request(user_id="alice", k=settings.max_k + 1, request_id="trace-43")
    assert given.request_id == "trace-42" and given.version == "v1"
    assert all(re.fullmatch("[0-9a-f]{32}", rid) for rid in fresh) and fresh[0] != fresh[1]
    assert refused.value.request_id == "trace-43" and "(request trace-43)" in str(refused.value)


def test_every_error_names_its_request_id(
    settings: Settings, make_client: Callable[..., Client]
) -> None:
    client = make_client(settings, timeout_s=0.3)
    with pytest.raises(Timeout) as late:  # no scorer
        client.request(user_id="alice", request_id="trace-44")
    assert late.value.request_id == "trace-44" and "trace-44" in str(late.value)
    with pytest.raises(BadRequest, match="request_id must be"):  # refused before it is sent
        client.request(user_id="alice", request_id="two words")


def test_no_scorer_is_a_timeout_within_the_timeout(
    settings: Settings, make_client: Callable[..., Client]
) -> None:
    client = make_client(settings, timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(Timeout):
        client.request(user_id="alice")
    assert time.monotonic() - started < 1.5


def test_a_full_queue_is_overloaded(
    settings: Settings, redis_client: redis.Redis, make_client: Callable[..., Client]
) -> None:
    redis_client.lpush(settings.request_queue, b"waiting")
    client = make_client(settings.model_copy(update={"max_queue_length": 1}))
    with pytest.raises(Overloaded):
        client.request(user_id="alice")


def test_a_malformed_request_is_a_bad_request(
    settings: Settings, redis_client: redis.Redis, make_client: Callable[..., Client]
) -> None:
    publish_model(settings, redis_client, random_model(version="v1"))
    with running_server(settings, redis_client), pytest.raises(BadRequest, match="k must be"):
        make_client(settings).request(user_id="alice", k=settings.max_k + 1)


def test_no_active_model_is_unavailable(
    settings: Settings, redis_client: redis.Redis, make_client: Callable[..., Client]
) -> None:
    with running_server(settings, redis_client), pytest.raises(Unavailable, match="no active"):
        make_client(settings).request(user_id="alice")


def test_an_unreachable_redis_is_unavailable(
    settings: Settings, make_client: Callable[..., Client]
) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gone = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"})
    with pytest.raises(Unavailable):
        make_client(gone, timeout_s=1.0).request(user_id="alice")


@pytest.mark.parametrize("shift_s", [-3.0, 3.0])
def test_a_client_whose_clock_is_off_still_gets_answers(
    settings: Settings,
    redis_client: redis.Redis,
    make_client: Callable[..., Client],
    shift_s: float,
) -> None:
    """Deadlines are judged by Redis's clock: a client 3 s ahead or behind (timeout 2 s)
    is answered, not shed as late nor kept waiting past its timeout."""
    publish_model(settings, redis_client, random_model(version="v1"))
    client = make_client(settings, timeout_s=2.0)
    inner = client.client if isinstance(client, _AsyncAsSync) else client
    inner.clock = lambda: time.time() + shift_s  # type: ignore[attr-defined]
    with running_server(settings, redis_client):
        for _ in range(3):
            assert client.request(user_id="alice").version == "v1"


def test_more_calls_than_connections_are_overloaded_not_unreachable(
    settings: Settings,
) -> None:
    """A client whose every connection is in a call sheds the next calls as ``Overloaded``
    (the gateway's 429), not ``Unavailable`` ("Too many connections" is no outage).

    The asyncio client's multiplexed calls take no connection of the pool, so only its
    per-call path can run out: five calls with one caller's id (the first multiplexed, four
    alone on a pool of two: two wait, two are shed); with five ids, none is shed."""
    import concurrent.futures

    import redis.asyncio as aredis

    async def five_async(same_id: bool) -> list[BaseException | Recommendations]:
        pool = aredis.Redis.from_url(settings.redis_url, max_connections=2)
        client = AsyncRecommenderClient(pool, settings.request_queue, settings.key_prefix, 1.0)
        try:
            calls = [
                client.request(user_id=f"u{n}", request_id="one" if same_id else f"r{n}")
                for n in range(5)
            ]
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await client.aclose()

    def five_sync() -> list[BaseException | Recommendations]:
        pool = redis.Redis.from_url(settings.redis_url, max_connections=2)
        client = RecommenderClient(pool, settings.request_queue, settings.key_prefix, 1.0)

        def call(n: int) -> BaseException | Recommendations:
            try:
                return client.request(user_id=f"u{n}")
            except Exception as e:
                return e

        with client, concurrent.futures.ThreadPoolExecutor(5) as threads:
            return list(threads.map(call, range(5)))

    shed = {"sync": 3, "asyncio, one id": 2, "asyncio, five ids": 0}  # no scorer answers
    for path, outcomes in [
        ("sync", five_sync()),
        ("asyncio, one id", asyncio.run(five_async(same_id=True))),
        ("asyncio, five ids", asyncio.run(five_async(same_id=False))),
    ]:
        kinds = sorted(type(o).__name__ for o in outcomes)
        assert set(kinds) <= {"Overloaded", "Timeout"}, (path, kinds)
        assert kinds.count("Overloaded") == shed[path], (path, kinds)
