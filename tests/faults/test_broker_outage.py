"""The Kafka broker killed and restarted under a running producer and consumer.

The broker keeps its log in S3 (Tansu ``--storage-engine s3://`` on a local moto server),
as a real deployment keeps it on disk. Short outage: the idempotent, acks=all producer
retries until every event is acknowledged, once. Outage longer than the delivery timeout:
``flush`` raises ``PublishError`` listing exactly the unacknowledged events, which the
caller publishes again. Either way every acknowledged event reaches the user state once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from deploy.stack import KafkaBroker, S3Server, ensure_topics
from ledrec.settings import Settings
from stream.producer import EventPublisher, PublishError
from tests.faults.common import (
    Events,
    assert_clean_pass,
    publish_stream,
    random_views,
    start_cli,
    wait_until,
)
from tests.helpers import committed_lag, publish_model, random_model, settings_env

pytestmark = pytest.mark.faults

BUCKET = "ledrec-log"
STREAMED = 20_000  # published while the broker dies for OUTAGE_S
OUTAGE_S = 3.0
STRANDED = 2_000  # published while the broker is down for longer than the delivery timeout


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
        streamed: list[tuple[Events, dict[int, int]]] = []
        producer = threading.Thread(
            target=lambda: streamed.append(
                publish_stream(settings, STREAMED, 500, 520, seed=1, chunks=10, pause_s=0.4)
            )
        )
        producer.start()
        time.sleep(1.5)
        broker.kill()
        time.sleep(OUTAGE_S)
        broker.start()
        producer.join(timeout=120)
        ((events, ends),) = streamed  # flush raised nothing: every event acknowledged

        # 2. Down for longer than the delivery timeout: the caller is told what was lost.
        broker.kill()
        short = settings.model_copy(update={"kafka_config": {"delivery.timeout.ms": "2000"}})
        publisher = EventPublisher(short, broker.bootstrap)
        stranded = random_views(STRANDED, 500, 520, seed=2)
        for user, item, _ in stranded:
            publisher.send(user, item, "view", ts=1.0)
        with pytest.raises(PublishError) as failure:
            publisher.flush(10.0)
        undelivered = failure.value.undelivered
        assert [(e.user_id, e.item_id) for e in undelivered] == [(u, i) for u, i, _ in stranded]
        assert publisher.report.delivered == 0
        broker.start()
        for event in undelivered:  # the caller's retry
            publisher.publish(event)
        report = publisher.flush()
        assert report.delivered == STRANDED
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
        f"\n{STREAMED} events streamed through a {OUTAGE_S}s broker kill (all acknowledged), "
        f"{STRANDED} refused during a longer outage and listed in PublishError, then "
        f"republished; {len(events)} events, {users} users: state = clean pass "
        f"({time.monotonic() - started:.1f}s)"
    )
