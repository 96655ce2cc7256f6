"""The Kafka broker stopped and restarted under a running producer and consumer.

The broker keeps its log in S3 (Tansu ``--storage-engine s3://`` on a local moto server),
as a real deployment keeps it on disk. Short outage: the idempotent, acks=all producer
retries until every event is acknowledged, once. Outage longer than the delivery timeout:
``flush`` raises ``PublishError`` listing exactly the unacknowledged events, which the
caller publishes again. Every acknowledged event then reaches the user state once.

Tansu itself sometimes loses acknowledged events across a restart: a partition's offsets
restart below what it had acknowledged (~1 run in 6 here, after SIGINT or SIGKILL alike).
No client can repair that. The publisher detects it (an acknowledgement at an offset it had
already seen acknowledged) and raises ``PublishError`` with ``broker_lost`` instead of
reporting success, and this test then marks itself xfail (broker bug) rather than fail on
a loss that was reported. docs/reliability.md has the figures.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
import redis

from ledrec.deploy.stack import KafkaBroker, S3Server, ensure_topics
from ledrec.settings import Settings
from ledrec.stream.producer import EventPublisher, PublishError
from tests.helpers import (
    Events,
    assert_clean_pass,
    committed_lag,
    publish_model,
    publish_stream,
    random_model,
    random_views,
    settings_env,
    start_cli,
    wait_until,
)

BUCKET = "ledrec-log"
STREAMED = 20_000  # published while the broker dies for OUTAGE_S
OUTAGE_S = 3.0
STRANDED = 2_000  # published while the broker is down for longer than the delivery timeout


def _by_user(events: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    timelines: dict[str, list[str]] = collections.defaultdict(list)
    for user, item in events:
        timelines[user].append(item)
    return dict(timelines)


def _broker_lost(error: PublishError) -> NoReturn:
    """Tansu lost acknowledged events on a restart and the loss was reported: xfail."""
    if not error.broker_lost:
        raise error
    pytest.xfail(f"the broker lost acknowledged events on a restart (Tansu bug): {error}")


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    server = S3Server(tmp_path / "s3", die_with_parent=True).start()
    try:
        server.create_bucket(BUCKET)
        yield server
    finally:
        server.kill()


def test_broker_outage_loses_no_acknowledged_event(
    settings: Settings,
    redis_client: redis.Redis,
    s3: S3Server,
    kafka_broker_factory: Callable[..., KafkaBroker],
    tmp_path: Path,
) -> None:
    broker = kafka_broker_factory(storage_engine=f"s3://{BUCKET}/", env=s3.aws_env)
    settings = settings.model_copy(
        update={"kafka_bootstrap": broker.bootstrap, "timeline_max": 200}
    )
    ensure_topics(broker.bootstrap, {settings.events_topic: 4, settings.dead_letter_topic: 1})
    model = publish_model(settings, redis_client, random_model(n_items=500, dim=8))
    log = tmp_path / "consumer.log"
    consumer = start_cli(["consume"], settings_env(settings), log)
    started = time.monotonic()
    try:
        # 1. A short outage under a running producer and consumer.
        streamed: list[tuple[Events, dict[int, int]] | PublishError] = []

        def stream() -> None:
            try:
                streamed.append(publish_stream(settings, STREAMED, 500, 520, 1, 10, 0.4))
            except PublishError as e:
                streamed.append(e)

        producer = threading.Thread(target=stream)
        producer.start()
        time.sleep(1.5)
        broker.stop()
        time.sleep(OUTAGE_S)
        broker.start()
        producer.join(timeout=120)
        (outcome,) = streamed
        if isinstance(outcome, PublishError):
            _broker_lost(outcome)
        events, ends = outcome  # flush raised nothing: every event acknowledged

        # 2. Down for longer than the delivery timeout: the caller is told what was lost.
        broker.stop()
        short = settings.model_copy(update={"kafka_config": {"delivery.timeout.ms": "2000"}})
        publisher = EventPublisher(short, broker.bootstrap)
        stranded = random_views(STRANDED, 500, 520, seed=2)
        for user, item, _ in stranded:
            publisher.send(user, item, "view", ts=1.0)
        with pytest.raises(PublishError) as failure:
            publisher.flush(10.0)
        undelivered = failure.value.undelivered
        # Every stranded event, each user's in the order published (one partition per user).
        assert sorted((e.user_id, e.item_id) for e in undelivered) == sorted(
            (u, i) for u, i, _ in stranded
        )
        assert _by_user((e.user_id, e.item_id) for e in undelivered) == _by_user(
            (u, i) for u, i, _ in stranded
        )
        assert publisher.report.delivered == 0
        broker.start()
        for event in undelivered:  # the caller's retry
            publisher.publish(event)
        report = publisher.flush()
        assert report.delivered == STRANDED
        # A new publisher cannot see offsets reused across this restart; compare with phase 1.
        reused = sum(report.last_offsets[p] <= ends.get(p, -1) for p in report.last_offsets)
        if reused:
            _broker_lost(PublishError("offsets reused after the restart", broker_lost=reused))
        events += stranded
        for partition, offset in report.last_offsets.items():
            ends[partition] = max(offset, ends.get(partition, -1))

        wait_until(lambda: committed_lag(settings, ends) == 0, 120, "catch-up", step=0.2)
        alive = consumer.poll() is None
    finally:
        consumer.terminate()
        consumer.wait(timeout=20)
    assert alive, f"the consumer died instead of reconnecting:\n{log.read_text()[-3000:]}"
    users = assert_clean_pass(redis_client, settings, events, model)
    print(
        f"\n{STREAMED} events streamed through a {OUTAGE_S}s broker stop (all acknowledged), "
        f"{STRANDED} refused during a longer outage and listed in PublishError, then "
        f"republished; {len(events)} events, {users} users: state = clean pass "
        f"({time.monotonic() - started:.1f}s)"
    )
