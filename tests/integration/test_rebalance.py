"""Many consumers over a partitioned topic, on a 3-primary Redis Cluster: a fourth consumer
joins and one leaves under load. With cooperative-sticky assignment only the partitions
that change hands are revoked (the rebalance log says which), and every user's state
still equals a clean pass over the events."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import redis

from ledrec.connect import ensure_event_topics
from ledrec.settings import Settings
from ledrec.stream.consumer import StateUpdater
from ledrec.stream.producer import EventPublisher
from tests.helpers import (
    Events,
    assert_clean_pass,
    publish_model,
    random_model,
    random_views,
    running_consumer,
    wait_until,
)

PARTITIONS = 12


class _Rebalances(logging.Handler):
    """Collects the consumers' "partitions revoked/assigned" lines."""

    def __init__(self) -> None:
        super().__init__()
        self.revoked: list[tuple[str, list[int]]] = []
        self.added: list[tuple[str, list[int]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "partitions revoked":
            self.revoked.append((record.consumer, record.revoked))  # type: ignore[attr-defined]
        elif record.getMessage() == "partitions assigned":
            self.added.append((record.consumer, record.added))  # type: ignore[attr-defined]


def _owned(updaters: list[StateUpdater]) -> list[int]:
    return sorted(p for u in updaters for p in u.assigned)


@pytest.mark.parametrize("redis_kind", ["cluster"], indirect=True)
def test_a_consumer_joins_and_one_leaves_under_load(
    settings: Settings, redis_client: redis.Redis, redis_kind: str
) -> None:
    settings = settings.model_copy(
        update={"events_topic": settings.events_topic + ".p12", "events_partitions": PARTITIONS,
                "timeline_max": 1000}
    )  # fmt: skip
    ensure_event_topics(settings, settings.kafka_bootstrap)
    model = publish_model(settings, redis_client, random_model(n_items=200, dim=8))
    events: Events = random_views(24_000, 400, 200, seed=3)
    rebalances = _Rebalances()
    logger = logging.getLogger("ledrec.stream.consumer")
    logger.addHandler(rebalances)
    logger.setLevel(logging.INFO)
    stop = threading.Event()

    def publish() -> None:  # under load: events keep coming through both rebalances
        with EventPublisher(settings, settings.kafka_bootstrap) as publisher:
            for n, (user, item, _) in enumerate(events):
                publisher.send(user, item, "view", ts=1.0)
                if n % 1000 == 999:
                    publisher.flush()
                    time.sleep(0.25)

    try:
        with (
            running_consumer(settings, redis_client, "c1") as c1,
            running_consumer(settings, redis_client, "c2") as c2,
            running_consumer(settings, redis_client, "c3") as c3,
        ):
            three = [c1, c2, c3]
            wait_until(lambda: _owned(three) == list(range(PARTITIONS)), 60, "3-way split", 0.1)
            producer = threading.Thread(target=publish, daemon=True)
            producer.start()
            wait_until(lambda: sum(c.totals.applied for c in three) > 2000, 60, "ingest", 0.1)
            before = {c.name: set(c.assigned) for c in three}
            rebalances.revoked.clear()
            with running_consumer(settings, redis_client, "c4") as c4:
                four = [*three, c4]
                wait_until(
                    lambda: _owned(four) == list(range(PARTITIONS)) and len(c4.assigned) >= 2,
                    60, "the fourth consumer's share", 0.1,
                )  # fmt: skip
                joined = set(c4.assigned)
                # only what moved to c4 was revoked, from whoever had it
                revoked = {p for name, parts in rebalances.revoked if name != "c4" for p in parts}
                assert revoked == joined, (rebalances.revoked, joined)
                for c in three:
                    assert before[c.name] - set(c.assigned) <= joined
                rebalances.revoked.clear()
                c3.stop_event.set()  # c3 leaves (cleanly): its partitions go to the others
                wait_until(
                    lambda: _owned([c1, c2, c4]) == list(range(PARTITIONS)), 60, "c3 left", 0.1
                )
                # the consumers that stayed gave up nothing
                assert all(name == "c3" or not parts for name, parts in rebalances.revoked)
                producer.join(timeout=120)
                stayed = [c1, c2, c4]
                wait_until(
                    lambda: sum(c.totals.applied + c.totals.skipped for c in four) >= len(events),
                    120, "every event", 0.2,
                )  # fmt: skip
                wait_until(lambda: all(c.writer.idle for c in stayed), 30, "settled", 0.1)
    finally:
        stop.set()
        logger.removeHandler(rebalances)
    assert assert_clean_pass(redis_client, settings, events, model) == 400


@pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])
def test_static_members_restarted_in_time_get_their_partitions_back_alone(
    settings: Settings, redis_client: redis.Redis, static: bool
) -> None:
    """With ``consumer_instance_id`` (static membership) a consumer that restarts within the
    session timeout takes back its own partitions and the other member revokes nothing;
    a dynamic member's restart moves its partitions to the other and back."""
    settings = settings.model_copy(update={"session_timeout_ms": 10_000})
    publish_model(settings, redis_client, random_model(n_items=50, dim=8))
    rebalances = _Rebalances()
    logger = logging.getLogger("ledrec.stream.consumer")
    logger.addHandler(rebalances)
    logger.setLevel(logging.INFO)

    def member(name: str) -> Settings:
        instance = f"{settings.key_prefix}-{name}" if static else None
        return settings.model_copy(update={"consumer_instance_id": instance})

    try:
        with (
            running_consumer(member("a"), redis_client, "a") as a,
            running_consumer(member("b"), redis_client, "b") as b,
        ):
            wait_until(lambda: len(a.assigned) == 2 and len(b.assigned) == 2, 60, "split", 0.1)
            mine, theirs = list(a.assigned), list(b.assigned)
            rebalances.revoked.clear()
            a.stop_event.set()  # a static member leaves no LeaveGroup behind: no rebalance
            if static:
                time.sleep(5.0)  # a restart that takes a while, within the session timeout
                assert sorted(b.assigned) == sorted(theirs)  # nobody took a's partitions
            else:  # a dynamic member's leaving is a rebalance: b takes everything
                wait_until(lambda: len(b.assigned) == 4, 30, "b taking over", 0.1)
            with running_consumer(member("a"), redis_client, "a2") as a2:
                wait_until(lambda: len(a2.assigned) == 2, 60, "a's share back", 0.1)
                if static:
                    assert a2.assigned == mine  # its own partitions
                moved = [parts for name, parts in rebalances.revoked if name == "b" and parts]
                assert b.assigned == theirs or not static
                assert bool(moved) is not static, rebalances.revoked
    finally:
        logger.removeHandler(rebalances)
