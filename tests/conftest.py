"""Shared fixtures: real Redis and a real Kafka-protocol broker for the whole session.

By default both run as local processes (``redis-server`` and Tansu, see ``deploy/stack.py``).
With ``LEDREC_TEST_DOCKER=1`` and a reachable Docker engine, the same fixtures run the
``apache/kafka`` (KRaft) and ``redis`` images through testcontainers instead.

Tests marked ``both_redis`` run twice: on the session's redis-server and on a 3-primary
Redis Cluster started on first use (``redis_cluster``; those runs are marked ``cluster``).

Session servers are shared: tests isolate themselves through the unique names of the
``settings`` fixture. A test that kills or restarts a server starts its own with
``redis_server_factory`` / ``kafka_broker_factory``. Nothing here skips: a server that
cannot start fails the tests that need it.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import redis

from ledrec.connect import is_cluster_url, plain_url
from ledrec.deploy.cluster import RedisClusterServers
from ledrec.deploy.stack import (
    KafkaBroker,
    RedisServer,
    ensure_topics,
    free_port,
    wait_for_kafka,
)
from ledrec.settings import Settings

KAFKA_IMAGE = "apache/kafka:3.9.1"
REDIS_IMAGE = "redis:7.4"


class RedisEndpoint(Protocol):
    @property
    def url(self) -> str: ...


class KafkaEndpoint(Protocol):
    @property
    def bootstrap(self) -> str: ...


def _docker_reachable() -> bool:
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        return False
    return True


_WANT_DOCKER = os.environ.get("LEDREC_TEST_DOCKER") == "1"
USE_DOCKER = _WANT_DOCKER and _docker_reachable()


_FOLDER_MARKS = {"unit": pytest.mark.unit, "integration": pytest.mark.integration,
                 "faults": pytest.mark.faults}  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test by its folder: ``-m unit`` runs the tests that start no server; the
    Redis Cluster runs of ``both_redis`` tests are marked ``cluster``."""
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        if folder in _FOLDER_MARKS:
            item.add_marker(_FOLDER_MARKS[folder])
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("redis_kind") == "cluster":
            item.add_marker(pytest.mark.cluster)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked ``both_redis`` runs on one Redis and on a 3-primary Redis Cluster."""
    if "redis_kind" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "both_redis"
    ):
        metafunc.parametrize("redis_kind", ["single", "cluster"], indirect=True)


def pytest_report_header(config: pytest.Config) -> str:
    if USE_DOCKER:
        return f"ledrec servers: docker ({KAFKA_IMAGE}, {REDIS_IMAGE}) via testcontainers"
    if _WANT_DOCKER:
        return "ledrec servers: LEDREC_TEST_DOCKER=1 but no Docker engine answers: local processes"
    return "ledrec servers: local processes (redis-server, Tansu)"


# --------------------------------------------------------------------------- docker backend


class _DockerRedis:
    def __init__(self) -> None:
        try:
            from testcontainers.community.redis import RedisContainer
        except ImportError:  # testcontainers < 4.14
            from testcontainers.redis import RedisContainer

        self.container = RedisContainer(REDIS_IMAGE).with_command("redis-server --appendonly yes")
        self.container.start()
        self.host = self.container.get_container_host_ip()
        self.port = int(self.container.get_exposed_port(6379))

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, **kwargs)

    def stop(self) -> None:
        self.container.stop()


class _DockerKafka:
    """apache/kafka in KRaft mode, advertised on the host port it is published on.

    The advertised host is the Docker host as seen from here (testcontainers' "docker_host"
    connection mode, the usual one); it must be known before the container starts.
    """

    def __init__(self) -> None:
        from testcontainers.core.container import DockerContainer

        port = free_port()  # same port inside and outside: the advertised address just works
        self.container = DockerContainer(KAFKA_IMAGE).with_bind_ports(port, port)
        self.host = self.container.get_container_host_ip()
        env = {
            "KAFKA_NODE_ID": "1",
            "KAFKA_PROCESS_ROLES": "broker,controller",
            "KAFKA_LISTENERS": f"PLAINTEXT://0.0.0.0:{port},CONTROLLER://0.0.0.0:9093",
            "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{self.host}:{port}",
            "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
            "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        }
        for key, value in env.items():
            self.container.with_env(key, value)
        self.container.start()
        self.port = port
        wait_for_kafka(self.bootstrap, timeout=120)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        self.container.stop()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisEndpoint]:
    """The session's Redis: ``.url`` and ``.client(**kw)`` (a RedisServer when local)."""
    if USE_DOCKER:
        docker_redis = _DockerRedis()
        yield docker_redis
        docker_redis.stop()
        return
    with RedisServer(tmp_path_factory.mktemp("redis"), die_with_parent=True) as server:
        yield server


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaEndpoint]:
    """The session's Kafka-protocol broker: ``.bootstrap`` (a KafkaBroker when local)."""
    if USE_DOCKER:
        docker_kafka = _DockerKafka()
        yield docker_kafka
        docker_kafka.stop()
        return
    with KafkaBroker(tmp_path_factory.mktemp("kafka"), die_with_parent=True) as broker:
        yield broker


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """The session's Redis Cluster: 3 primaries on free loopback ports (started on first use)."""
    with RedisClusterServers(tmp_path_factory.mktemp("cluster"), die_with_parent=True) as c:
        yield c


S3_CREDENTIALS = {  # moto checks none; boto3 needs some
    "AWS_ACCESS_KEY_ID": "ledrec",
    "AWS_SECRET_ACCESS_KEY": "ledrec-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A local S3 server for the session (moto's ThreadedMotoServer, a real HTTP server on
    a free loopback port): its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_store(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """An ``s3://`` model store URL in a bucket of its own (the bucket not created: the
    first publish creates it), with the credentials in this process's environment."""
    for name, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return f"s3://ledrec-{uuid.uuid4().hex[:12]}/models"


@pytest.fixture
def redis_kind(request: pytest.FixtureRequest) -> str:
    """``single`` (one redis-server) unless the test is marked ``both_redis``."""
    return str(getattr(request, "param", "single"))


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, redis_kind: str) -> str:
    """The URL of the Redis the test runs on (``redis+cluster://`` for the cluster)."""
    if redis_kind == "cluster":
        return str(request.getfixturevalue("redis_cluster").url)
    return str(request.getfixturevalue("redis_server").url)


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:limit] or "t"


@pytest.fixture
def settings(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_url: str,
    kafka_broker: KafkaEndpoint,
) -> Settings:
    """Settings on the session servers, with names unique to this test, topics created."""
    tag = f"{_slug(request.node.name)}-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        kafka_bootstrap=kafka_broker.bootstrap,
        redis_url=redis_url,
        home=tmp_path,
        events_topic=f"ledrec.events.{tag}",
        dead_letter_topic=f"ledrec.dlq.{tag}",
        consumer_group=f"ledrec-state-{tag}",
        key_prefix=f"t:{tag}",
    )
    ensure_topics(
        settings.kafka_bootstrap,
        {settings.events_topic: settings.events_partitions, settings.dead_letter_topic: 1},
        settings.kafka_config,
    )
    return settings


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client (bytes, ``decode_responses=False``) on the test's Redis: a ``redis.Redis``,
    or a ``redis.RedisCluster`` typed as one on the cluster (``ledrec.connect``)."""
    client: Any = (
        redis.RedisCluster.from_url(plain_url(redis_url))
        if is_cluster_url(redis_url)
        else redis.Redis.from_url(redis_url, decode_responses=False)
    )
    yield client
    client.close()


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start private RedisServers (kwargs as RedisServer's) for tests that break them."""
    servers: list[RedisServer] = []

    def make(**kwargs: Any) -> RedisServer:
        data_dir = tmp_path / f"redis-{len(servers)}"
        server = RedisServer(data_dir, die_with_parent=True, **kwargs)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.kill()


@pytest.fixture
def kafka_broker_factory(tmp_path: Path) -> Iterator[Callable[..., KafkaBroker]]:
    """Start private KafkaBrokers (kwargs as KafkaBroker's) for tests that break them."""
    brokers: list[KafkaBroker] = []

    def make(**kwargs: Any) -> KafkaBroker:
        data_dir = tmp_path / f"kafka-{len(brokers)}"
        broker = KafkaBroker(data_dir, die_with_parent=True, **kwargs)
        brokers.append(broker)
        return broker.start()

    yield make
    for broker in brokers:
        broker.kill()
