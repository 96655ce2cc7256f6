"""Both clients bound a call by their timeout, connecting included, and report an
unreachable Redis as ``Unavailable``: real sockets on loopback, no Redis needed."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from ledrec import AsyncRecommenderClient, RecommenderClient, Timeout, Unavailable


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


@pytest.fixture
def refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"  # closed: connecting is refused


def test_sync_client_times_out_against_a_silent_server(silent_url: str) -> None:
    with RecommenderClient.from_url(silent_url, timeout_s=1.0) as client:
        started = time.monotonic()
        with pytest.raises(Timeout):
            client.recommend("alice")
        assert time.monotonic() - started < 2.0


def test_async_client_times_out_against_a_silent_server(silent_url: str) -> None:
    async def call() -> float:
        async with AsyncRecommenderClient.from_url(silent_url, timeout_s=1.0) as client:
            started = time.monotonic()
            with pytest.raises(Timeout):
                await client.recommend("alice")
            return time.monotonic() - started

    assert asyncio.run(call()) < 2.0


def test_sync_client_reports_a_refused_port_as_unavailable(refused_url: str) -> None:
    client = RecommenderClient.from_url(refused_url, timeout_s=1.0)
    with client, pytest.raises(Unavailable):
        client.recommend("alice")


def test_async_client_reports_a_refused_port_as_unavailable(refused_url: str) -> None:
    async def call() -> None:
        async with AsyncRecommenderClient.from_url(refused_url, timeout_s=1.0) as client:
            with pytest.raises(Unavailable):
                await client.recommend("alice")

    asyncio.run(call())
