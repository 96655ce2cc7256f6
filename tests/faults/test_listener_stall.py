"""Redis paused (SIGSTOP) longer than the asyncio client's reply listener waits for a
``BLMPOP`` answer: the listener drops that connection and takes a new one, and once Redis
resumes the waiting call is answered and the next calls are too (by their own ids)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable

import pytest

from ledrec import AsyncRecommenderClient, Settings
from ledrec.deploy.stack import RedisServer
from ledrec.stream import client as client_module
from tests.helpers import publish_model, random_model, running_server


def test_a_stalled_reply_listener_reconnects(
    settings: Settings,
    redis_server_factory: Callable[..., RedisServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = redis_server_factory()
    settings = settings.model_copy(update={"redis_url": server.url})
    redis_client = server.client()
    publish_model(settings, redis_client, random_model(n_items=50, dim=8, version="v1"))
    stall_s = client_module._LISTEN_S + client_module._LISTEN_STALL_S + 1.0
    pid = server.pid
    assert pid is not None

    async def main() -> tuple[list[str], list[str]]:
        client = AsyncRecommenderClient.from_url(
            settings.redis_url, timeout_s=stall_s + 10, queue=settings.request_queue,
            prefix=settings.key_prefix,
        )  # fmt: skip
        try:
            await client.request(user_id="warm")
            resume = threading.Timer(stall_s, os.kill, (pid, signal.SIGCONT))
            os.kill(pid, signal.SIGSTOP)
            resume.start()
            waited = await client.request(user_id="during", request_id="during")
            after = await asyncio.gather(
                *(client.request(user_id=f"u{n}", request_id=f"after-{n}") for n in range(20))
            )
            return [waited.request_id], [r.request_id for r in after]
        finally:
            os.kill(pid, signal.SIGCONT)
            await client.aclose()

    with running_server(settings, redis_client), caplog.at_level(logging.WARNING):
        during, after = asyncio.run(main())
    stalled = [r for r in caplog.records if r.getMessage().startswith("reply listener stalled")]
    assert len(stalled) == 1 and stalled[0].waiting == 1  # type: ignore[attr-defined]
    assert during == ["during"]
    assert after == [f"after-{n}" for n in range(20)]
