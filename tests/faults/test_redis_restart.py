"""Redis killed and restarted (AOF, appendfsync always) under a running consumer and scorer.

Nobody restarts the components: they reconnect by themselves with backoff. State written
before a crash survives it; the consumer commits no offset past what Redis has, so no
event is lost or applied twice; clients see errors only while Redis is down.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from ledrec.deploy.stack import RedisServer
from ledrec.settings import Settings
from ledrec.stream.client import RecommenderClient, RecommendError
from tests.helpers import (
    Events,
    assert_clean_pass,
    committed_lag,
    publish_model,
    publish_stream,
    random_model,
    settings_env,
    start_cli,
    wait_until,
)

N_EVENTS = 40_000
# Short outages are ridden out by redis-py's own retries; the long one outlasts them (~9 s
# at most), so the components' outer loops must carry the consumer and the scorer through.
DOWNTIMES_S = (1.0, 1.0, 10.0)


def test_redis_restarts_lose_nothing_and_components_reconnect(
    settings: Settings, redis_server_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_server_factory(appendonly=True, appendfsync="always")
    settings = settings.model_copy(
        update={"redis_url": server.url, "timeline_max": 200, "request_timeout_s": 1.0}
    )
    client = server.client()
    model = publish_model(settings, client, random_model(n_items=500, dim=8))
    env = settings_env(settings)
    log = tmp_path / "components.log"
    consumer = start_cli(["consume"], env, log)
    scorer = start_cli(["serve"], env, log)

    # Events trickle in (~8 s) while Redis dies three times.
    published: list[tuple[Events, dict[int, int]]] = []
    publisher = threading.Thread(
        target=lambda: published.append(
            publish_stream(settings, N_EVENTS, 1000, 520, seed=3, chunks=8, pause_s=1.0)
        )
    )

    outcomes: list[tuple[float, bool]] = []
    stop = threading.Event()

    def ask() -> None:
        rpc = RecommenderClient.from_url(
            settings.redis_url,
            timeout_s=1.0,
            queue=settings.request_queue,
            prefix=settings.key_prefix,
        )
        while not stop.is_set():
            try:
                rpc.recommend("u1", k=5)
                outcomes.append((time.monotonic(), True))
            except RecommendError:  # only the documented errors, Redis down or not
                outcomes.append((time.monotonic(), False))
                time.sleep(0.05)

    asker = threading.Thread(target=ask)
    wait_until(lambda: client.exists(settings.request_queue) == 0, 10, "scorer start")
    publisher.start()
    asker.start()
    try:
        for downtime in DOWNTIMES_S:
            time.sleep(1.5)
            server.kill()  # SIGKILL: only what the AOF has fsynced survives
            time.sleep(downtime)
            server.start()
        last_restart = time.monotonic()
        publisher.join(timeout=60)
        ((events, ends),) = published
        wait_until(lambda: committed_lag(settings, ends) == 0, 60, "catch-up", step=0.2)
        wait_until(lambda: any(ok and t > last_restart for t, ok in outcomes), 30,
                   "a client answered after the last restart")  # fmt: skip
        stop.set()
        asker.join(timeout=5)
        rpc = RecommenderClient(server.client(), settings.request_queue, settings.key_prefix)
        after = [rpc.recommend(f"u{i}", k=5) for i in range(50)]  # the same scorer serves
    finally:
        stop.set()
        alive = consumer.poll() is None and scorer.poll() is None
        for proc in (consumer, scorer):
            proc.terminate()
            proc.wait(timeout=20)
    assert alive, f"a component died instead of reconnecting:\n{log.read_text()[-3000:]}"

    client = server.client()
    users = assert_clean_pass(client, settings, events, model)
    recovery = min(t for t, ok in outcomes if ok and t > last_restart) - last_restart
    failed = sum(not ok for _, ok in outcomes)
    retries = log.read_text().count("redis unavailable")
    print(
        f"\n{len(events)} events, {users} users, {len(DOWNTIMES_S)} Redis SIGKILL+restarts "
        f"(down {DOWNTIMES_S} s): state = clean pass; {len(outcomes)} requests, "
        f"{failed} failed while Redis was down, first success {recovery:.2f}s after the last "
        f"restart, {len(after)} after recovery all ok; "
        f"{retries} component retries logged"
    )
    assert all(len(items) == 5 for items in after)
    assert retries > 0  # the long outage went through the components' own retry loops
