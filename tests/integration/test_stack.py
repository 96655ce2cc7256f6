"""The local stack launcher against the real binaries (redis-server, Tansu)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, Producer
from redis.backoff import NoBackoff
from redis.retry import Retry

from ledrec.deploy.stack import (
    KafkaBroker,
    RedisServer,
    StackNotRunning,
    ensure_topics,
    resolve_addresses,
    stack_down,
    stack_status,
    stack_up,
)
from ledrec.settings import Settings


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_redis_server_start_ping_stop(tmp_path: Path) -> None:
    server = RedisServer(tmp_path).start()
    pid = server.pid
    assert pid is not None
    client = redis.Redis.from_url(server.url)
    assert client.ping()
    client.close()
    server.stop()
    assert server.pid is None and _gone(pid)
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(server.url, socket_connect_timeout=1).ping()


def test_redis_aof_survives_restart_and_kill(tmp_path: Path) -> None:
    with RedisServer(tmp_path, appendonly=True, appendfsync="always") as server:
        port = server.port
        server.client().set(b"k", b"v1")
        server.restart()
        assert server.port == port
        assert server.client().get(b"k") == b"v1"
        server.client().set(b"k", b"v2")
        server.kill()  # a crash: with appendfsync always, acknowledged writes are on disk
        server.start()
        assert server.port == port
        assert server.client().get(b"k") == b"v2"


def test_redis_without_aof_restarts_empty(tmp_path: Path) -> None:
    with RedisServer(tmp_path) as server:
        server.client().set(b"k", b"v")
        server.restart()
        assert server.client().get(b"k") is None


def test_redis_password_required(tmp_path: Path) -> None:
    with RedisServer(tmp_path, password="s3cret/pw") as server:
        assert "s3cret" in server.url
        anonymous = redis.Redis(host="127.0.0.1", port=server.port, retry=Retry(NoBackoff(), 0))
        with pytest.raises(redis.AuthenticationError):  # no retry: fails at once, no backoff
            anonymous.set(b"a", b"1")
        authed = redis.Redis.from_url(server.url)
        assert authed.set(b"a", b"1")
        assert authed.get(b"a") == b"1"


def test_kafka_round_trip_through_consumer_group(kafka_broker: KafkaBroker) -> None:
    topic = f"rt-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_broker.bootstrap, {topic: 3})
    ensure_topics(kafka_broker.bootstrap, {topic: 3})  # already exists: fine
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    sent = {f"user-{i}".encode(): f"event-{i}".encode() for i in range(20)}
    for key, value in sent.items():
        producer.produce(topic, key=key, value=value)
    assert producer.flush(10) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_broker.bootstrap,
            "group.id": f"g-{topic}",
            "session.timeout.ms": 6000,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    assigned_at: list[float] = []
    consumer.subscribe([topic], on_assign=lambda c, parts: assigned_at.append(time.monotonic()))
    start = time.monotonic()
    received: dict[bytes, bytes] = {}
    while len(received) < len(sent) and time.monotonic() - start < 30:
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        got_key, got_value = msg.key(), msg.value()
        assert isinstance(got_key, bytes) and isinstance(got_value, bytes)
        received[got_key] = got_value
    consumer.commit(asynchronous=False)
    committed = consumer.committed(consumer.assignment(), timeout=10)
    consumer.close()
    assert received == sent
    assert sum(tp.offset for tp in committed) == len(sent)
    # DESIGN.md: Tansu completes the join after about half the session timeout.
    assert assigned_at and assigned_at[0] - start < 6.0


def test_kafka_broker_restart_same_port(tmp_path: Path) -> None:
    with KafkaBroker(tmp_path) as broker:
        bootstrap = broker.bootstrap
        ensure_topics(bootstrap, {"before": 1})
        broker.restart()
        assert broker.bootstrap == bootstrap
        ensure_topics(bootstrap, {"after": 1})  # answers again on the same address


def test_stack_up_status_down(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert stack_status(home) is None
    info = stack_up(home)
    try:
        assert (home / "stack.json").is_file()
        assert (home / "stack" / "redis").is_dir() and (home / "stack" / "kafka").is_dir()
        assert redis.Redis.from_url(info.redis_url).ping()
        ensure_topics(info.kafka_bootstrap, {"stack-check": 1})
        status = stack_status(home)
        assert status is not None and status.alive and status.redis_pid == info.redis_pid
        again = stack_up(home)  # idempotent: the live stack is returned, nothing restarted
        assert (again.redis_pid, again.kafka_pid) == (info.redis_pid, info.kafka_pid)
        assert os.getpgid(info.redis_pid) != os.getpgid(0)  # detached: own session
    finally:
        stack_down(home)
    assert stack_status(home) is None
    assert not (home / "stack.json").exists()
    assert _gone(info.redis_pid) and _gone(info.kafka_pid)
    stack_down(home)  # nothing recorded: a no-op


def test_stack_status_reports_dead_pids_and_up_replaces_them(tmp_path: Path) -> None:
    home = tmp_path / "home"
    info = stack_up(home)
    try:
        os.kill(info.kafka_pid, 9)
        deadline = time.monotonic() + 5
        status = stack_status(home)
        while status is not None and status.kafka_alive and time.monotonic() < deadline:
            time.sleep(0.02)
            status = stack_status(home)
        assert status is not None and status.redis_alive and not status.kafka_alive
        assert not status.alive
        with pytest.raises(StackNotRunning, match="not running"):
            resolve_addresses(Settings(kafka_bootstrap="", redis_url="", home=home))
        fresh = stack_up(home)
        assert fresh.alive and fresh.kafka_pid != info.kafka_pid
        assert fresh.kafka_bootstrap == info.kafka_bootstrap  # on its recorded port
        assert fresh.redis_pid == info.redis_pid  # only what was down was started
    finally:
        stack_down(home)
    assert _gone(info.redis_pid)


def test_after_redis_is_killed_stack_up_keeps_the_broker_and_its_events(tmp_path: Path) -> None:
    from ledrec.connect import ensure_event_topics
    from ledrec.stream.consumer import StateUpdater
    from ledrec.stream.producer import EventPublisher
    from ledrec.stream.state import UserStateStore

    home = tmp_path / "home"
    info = stack_up(home)
    try:
        settings = Settings(home=home, consumer_status_every_s=0)
        ensure_event_topics(settings, info.kafka_bootstrap)
        with EventPublisher.from_settings(settings) as publisher:
            for n in range(5):
                publisher.send("alice", f"i{n}", "view")
        os.kill(info.redis_pid, 9)  # Redis crashes; the broker holds the events
        deadline = time.monotonic() + 5
        while not _gone(info.redis_pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        fresh = stack_up(home)
        assert fresh.kafka_pid == info.kafka_pid and fresh.redis_url == info.redis_url
        client = redis.Redis.from_url(fresh.redis_url)
        updater = StateUpdater(settings, fresh.kafka_bootstrap, client)
        totals = updater.run(max_idle_s=5.0)
        assert totals.applied == 5
        state = UserStateStore(client, settings.key_prefix, 100, 0).read("alice", [])
        assert state is not None and state.size == 5
        client.close()
    finally:
        stack_down(home)


def test_resolve_addresses_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.delenv("KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(StackNotRunning, match="ledrec stack up"):
        resolve_addresses(Settings(home=home))

    explicit = Settings(kafka_bootstrap="k:9092", redis_url="redis://r:6379/0", home=home)
    assert resolve_addresses(explicit) == ("k:9092", "redis://r:6379/0")
    assert stack_status(home) is None  # nothing was started

    info = stack_up(home)
    try:
        assert resolve_addresses(Settings(home=home)) == (info.kafka_bootstrap, info.redis_url)
        assert resolve_addresses(explicit) == ("k:9092", "redis://r:6379/0")
        monkeypatch.setenv("KAFKA_BOOTSTRAP", "env:1")
        assert resolve_addresses(Settings(home=home)) == ("env:1", info.redis_url)
        monkeypatch.setenv("REDIS_URL", "redis://env:2/0")
        assert resolve_addresses(Settings(home=home)) == ("env:1", "redis://env:2/0")
    finally:
        stack_down(home)


def test_settings_fixture(settings: Settings, redis_client: redis.Redis) -> None:
    assert redis_client.ping()
    assert settings.events_topic != Settings().events_topic
    from confluent_kafka.admin import AdminClient

    meta = AdminClient({"bootstrap.servers": settings.kafka_bootstrap}).list_topics(timeout=10)
    assert len(meta.topics[settings.events_topic].partitions) == settings.events_partitions
    assert len(meta.topics[settings.dead_letter_topic].partitions) == 1


@pytest.mark.cluster
def test_stack_up_redis_cluster_status_and_a_dead_node_restarted(tmp_path: Path) -> None:
    """``ledrec stack up --redis-cluster 3``: status shows every node and the cluster
    healthy; a SIGKILLed node makes it unhealthy, and ``stack up`` restarts just that node
    (from its AOF and nodes.conf) with the data it held."""
    import signal
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ledrec.cli", "--home", str(tmp_path), "stack", *args],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    up = cli("up", "--redis-cluster", "3")
    assert up.returncode == 0, up.stderr
    try:
        status = cli("status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count(" up") == 5  # redis, 3 nodes, kafka
        assert "cluster healthy" in status.stdout
        info = stack_status(tmp_path)
        assert info is not None and len(info.redis_nodes) == 3
        client = redis.RedisCluster.from_url(info.redis_url.replace("+cluster", ""))
        client.set("{a}k", "kept")
        owner = client.get_node_from_key("{a}k")
        assert owner is not None
        victim = next(pid for port, pid in info.redis_nodes if port == int(owner.port))
        client.close()
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while "NOT healthy" not in (status := cli("status")).stdout:
            assert time.monotonic() < deadline, status.stdout
            time.sleep(0.5)
        assert status.returncode == 1 and "DOWN" in status.stdout
        assert cli("up").returncode == 0  # the recorded cluster: only the dead node starts
        after = stack_status(tmp_path)
        assert (
            after is not None and after.redis_alive and after.redis_nodes[0] == info.redis_nodes[0]
        )
        assert "cluster healthy" in cli("status").stdout
        client = redis.RedisCluster.from_url(info.redis_url.replace("+cluster", ""))
        assert client.get("{a}k") == b"kept"  # from the node's AOF
        client.close()
    finally:
        assert cli("down").returncode == 0
    assert stack_status(tmp_path) is None
