"""No silent loss across topic resets: a re-created events topic (a new Kafka topic id) is a
new incarnation whose events are applied as new; a broker that lost events is logged and
counted; `ledrec stack down; ledrec stack up` then publish is applied."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY

from ledrec.connect import admin_client, ensure_event_topics, resolve_addresses
from ledrec.settings import Settings
from ledrec.stream.consumer import consumer_statuses
from ledrec.stream.incarnation import TopicIncarnations, topic_id
from ledrec.stream.producer import EventPublisher
from ledrec.stream.state import UserStateStore
from tests.helpers import running_consumer, settings_env, start_cli, wait_until

pytestmark = pytest.mark.contract
USERS = [f"reset-u{i}" for i in range(6)]


def _metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def _publish(settings: Settings, round_: int) -> None:
    with EventPublisher(settings, settings.kafka_bootstrap) as publisher:
        for user in USERS:
            publisher.send(user, f"i{round_}", "view")


def _sizes(store: UserStateStore) -> list[int]:
    return [s.size if s is not None else 0 for s in store.read_many(USERS, [])]


def test_a_topic_recreated_under_a_running_consumer_has_its_events_applied(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """The consumer runs as its own process, as in production. librdkafka (confluent-kafka
    2.16) segfaults when its subscribed topic is deleted on the local broker (Tansu),
    reproduced with a bare Consumer; so, like any supervisor, the test restarts a consumer
    that died. Either way, the events of the new topic must be applied, none skipped."""
    store = UserStateStore(redis_client, settings.key_prefix, settings.timeline_max, 0)
    env = settings_env(settings, consumer_status_every_s=0)
    log = tmp_path / "consume.log"
    consumer = start_cli(["consume"], env, log)
    restarts = 0
    try:
        for round_ in range(3):
            _publish(settings, round_)
        wait_until(lambda: _sizes(store) == [3] * len(USERS), 60, "the first topic applied")
        admin = admin_client(settings.kafka_bootstrap, None)
        admin.delete_topics([settings.events_topic])[settings.events_topic].result(10)
        time.sleep(1.0)
        ensure_event_topics(settings, settings.kafka_bootstrap)
        _publish(settings, 3)  # offsets start again at 0: below what the consumer took
        deadline = time.monotonic() + 90
        while _sizes(store) != [4] * len(USERS):
            assert time.monotonic() < deadline, (_sizes(store), log.read_text()[-3000:])
            if consumer.poll() is not None:  # died: restart it, as a supervisor would
                restarts += 1
                consumer = start_cli(["consume"], env, log)
            time.sleep(0.2)
    finally:
        consumer.terminate()
        consumer.wait(timeout=30)
    statuses = consumer_statuses(redis_client, settings.key_prefix)
    assert statuses and all(s["skipped"] == 0 for s in statuses.values()), statuses
    incarnations = TopicIncarnations(redis_client, settings.keyspace, settings.events_topic)
    new_id = topic_id(admin_client(settings.kafka_bootstrap, None), settings.events_topic)
    assert incarnations.number(new_id) == 2
    print(f"\nre-created topic applied; consumer restarts: {restarts}")


def test_a_log_that_ends_below_what_was_committed_is_logged_and_counted(
    settings: Settings, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    _publish(settings, 0)
    incarnations = TopicIncarnations(redis_client, settings.keyspace, settings.events_topic)
    found = topic_id(admin_client(settings.kafka_bootstrap, None), settings.events_topic)
    number = incarnations.number(found)
    # as if this group had committed far more than the broker now holds
    incarnations.record_commit(settings.consumer_group, found, number, {0: 10_000})
    before = _metric("ledrec_offsets_backwards_total")
    store = UserStateStore(redis_client, settings.key_prefix, settings.timeline_max, 0)
    with caplog.at_level(logging.ERROR), running_consumer(settings, redis_client):
        wait_until(lambda: _sizes(store) == [1] * len(USERS), 30, "the events applied")
    assert _metric("ledrec_offsets_backwards_total") >= before + 1
    assert any("lost events" in r.getMessage() for r in caplog.records)


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDREC_", "KAFKA_B"))}
    env.pop("REDIS_URL", None)
    env["LEDREC_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "ledrec.cli", *args],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def test_stack_down_and_up_then_publish_is_applied(tmp_path: Path) -> None:
    home = tmp_path / "home"
    events = tmp_path / "events.csv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDREC_", "KAFKA_B"))}
    env.pop("REDIS_URL", None)
    env["LEDREC_HOME"] = str(home)
    log = open(tmp_path / "consume.log", "ab")  # noqa: SIM115  # closed at the end

    def consume() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "ledrec.cli", "consume"], env=env, stdout=log, stderr=log
        )

    def alice() -> int:
        _, url = resolve_addresses(Settings(home=home))
        client = redis.Redis.from_url(url)
        state = UserStateStore(client, "ledrec", 100, 0).read("alice", [])
        client.close()
        return state.size if state is not None else 0

    assert _cli(home, "stack", "up").returncode == 0
    consumer = consume()
    try:
        for round_ in range(2):
            rows = [f"alice,i{round_}{n},view" for n in range(3)]
            events.write_text("user_id,item_id,type\n" + "\n".join(rows) + "\n")
            run = _cli(home, "publish", str(events))
            assert run.returncode == 0, run.stderr
            wait_until(lambda r=round_: alice() == 3 * (r + 1), 60, f"round {round_} applied")
            if round_ == 0:
                consumer.terminate()
                consumer.wait(timeout=30)
                assert _cli(home, "stack", "down").returncode == 0
                assert _cli(home, "stack", "up").returncode == 0  # Redis keeps its AOF
                consumer = consume()
    finally:
        consumer.terminate()
        consumer.wait(timeout=30)
        _cli(home, "stack", "down")
        log.close()
