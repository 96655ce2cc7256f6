"""Reaching the servers: addresses, Redis clients, Kafka topics.

The runtime (CLI, services, clients) finds its servers here, never in ``ledrec.deploy``
(the local launcher): ``KAFKA_BOOTSTRAP`` / ``REDIS_URL`` when set, else the live stack that
``ledrec stack up`` recorded in ``<home>/stack.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar, cast

import redis
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from ledrec.errors import ConnectError, StackNotRunning
from ledrec.settings import Settings

__all__ = [
    "StackInfo",
    "ensure_event_topics",
    "ensure_topics",
    "redis_client",
    "resolve_addresses",
    "resolve_kafka_bootstrap",
    "resolve_redis_url",
    "stack_status",
    "wait_for_kafka",
]

HOST = "127.0.0.1"
STACK_RECORD = "stack.json"
_T = TypeVar("_T")


# -- addresses -------------------------------------------------------------------------------
@dataclass(frozen=True)
class StackInfo:
    """A local stack as recorded in ``<home>/stack.json``, with the liveness of each pid."""

    redis_url: str
    kafka_bootstrap: str
    redis_pid: int
    kafka_pid: int
    started_at: str  # ISO 8601, UTC
    # A Redis Cluster stack: every node's (port, pid); redis_url names the first node.
    redis_nodes: tuple[tuple[int, int], ...] = ()
    redis_alive: bool = True
    kafka_alive: bool = True
    nodes_alive: tuple[bool, ...] = ()

    @property
    def alive(self) -> bool:
        """Both servers are running."""
        return self.redis_alive and self.kafka_alive

    def record(self) -> dict[str, Any]:
        """The fields written to ``stack.json`` (no liveness)."""
        data = asdict(self)
        del data["redis_alive"], data["kafka_alive"], data["nodes_alive"]
        if not self.redis_nodes:
            del data["redis_nodes"]
        else:
            data["redis_nodes"] = [list(node) for node in self.redis_nodes]
        return data


def record_path(home: Path) -> Path:
    return Path(home) / STACK_RECORD


def pid_alive(pid: int, markers: tuple[str, ...] = ()) -> bool:
    """Whether ``pid`` runs (not a zombie) with one of ``markers`` (if any) in its cmdline."""
    if pid <= 0:
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own exited child
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            stat = (proc / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return False
            if markers:  # guards against a recycled pid
                cmdline = (
                    (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
                )
                return any(m in cmdline for m in markers)
        except (OSError, IndexError):
            return False
    return True


def port_of(address: str) -> str:
    """The port of ``host:port`` or ``redis://...host:port/db``."""
    hostport = address.split("://", 1)[-1].split("@")[-1].split("/")[0]
    return hostport.rsplit(":", 1)[-1]


def read_record(home: Path) -> StackInfo | None:
    path = record_path(home)
    try:
        data = json.loads(path.read_text())
        return StackInfo(
            redis_url=str(data["redis_url"]),
            kafka_bootstrap=str(data["kafka_bootstrap"]),
            redis_pid=int(data["redis_pid"]),
            kafka_pid=int(data["kafka_pid"]),
            started_at=str(data["started_at"]),
            redis_nodes=tuple((int(p), int(q)) for p, q in data.get("redis_nodes", [])),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConnectError(f"unreadable stack record {path}: {exc}") from exc


def redis_markers(info: StackInfo) -> tuple[str, ...]:
    return _node_markers(int(port_of(info.redis_url)))


def _node_markers(port: int) -> tuple[str, ...]:
    # redis-server rewrites its process title to "redis-server 127.0.0.1:PORT" (and
    # "... [cluster]" for a cluster node).
    return (f"{HOST}:{port}", f"--port {port}")


def stack_status(home: Path) -> StackInfo | None:
    """The recorded stack with the liveness of each pid, or None if nothing is recorded."""
    info = read_record(home)
    if info is None:
        return None
    if info.redis_nodes:
        nodes = tuple(pid_alive(pid, _node_markers(port)) for port, pid in info.redis_nodes)
        return replace(
            info,
            redis_alive=all(nodes),
            nodes_alive=nodes,
            kafka_alive=pid_alive(info.kafka_pid, (info.kafka_bootstrap,)),
        )
    return replace(
        info,
        redis_alive=pid_alive(info.redis_pid, redis_markers(info)),
        kafka_alive=pid_alive(info.kafka_pid, (info.kafka_bootstrap,)),
    )


def resolve_addresses(settings: Settings) -> tuple[str, str]:
    """``(kafka_bootstrap, redis_url)``: from settings/env when set, else the live local stack.

    Raises :class:`StackNotRunning` when an address is neither configured nor recorded.
    """
    kafka, redis_url = _resolve(settings, kafka=True, redis=True)
    return kafka, redis_url


def resolve_redis_url(settings: Settings) -> str:
    """The Redis URL alone (the recommendation clients need nothing else)."""
    return _resolve(settings, kafka=False, redis=True)[1]


def resolve_kafka_bootstrap(settings: Settings) -> str:
    """The Kafka bootstrap servers alone (the publisher needs nothing else)."""
    return _resolve(settings, kafka=True, redis=False)[0]


def _resolve(settings: Settings, *, kafka: bool, redis: bool) -> tuple[str, str]:
    configured = {"KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "REDIS_URL": settings.redis_url}
    needed = [name for name, need in (("KAFKA_BOOTSTRAP", kafka), ("REDIS_URL", redis)) if need]
    if all(configured[name] for name in needed):
        return settings.kafka_bootstrap, settings.redis_url
    info = stack_status(settings.home)
    alive = {"KAFKA_BOOTSTRAP": info.kafka_alive, "REDIS_URL": info.redis_alive} if info else {}
    if info is None or not all(configured[n] or alive[n] for n in needed):
        missing = " and ".join(name for name in needed if not configured[name])
        where = record_path(settings.home)
        state = (
            f"the stack recorded in {where} is not running"
            if info is not None
            else f"no local stack is recorded in {where}"
        )
        raise StackNotRunning(
            f"no {missing} configured and {state}: "
            "run `ledrec stack up` or set KAFKA_BOOTSTRAP / REDIS_URL"
        )
    return (
        settings.kafka_bootstrap or info.kafka_bootstrap,
        settings.redis_url or info.redis_url,
    )


# -- Redis -----------------------------------------------------------------------------------
class _ReconnectRetry(Retry):
    """Retries lost connections, never a refused password (redis-py's AuthenticationError is
    a ConnectionError, so a wrong password used to take ~7 s of backoff to report)."""

    def call_with_retry(
        self,
        do: Callable[[], _T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> _T:
        def retryable(error: Exception) -> bool:
            if isinstance(error, redis.AuthenticationError):
                return False
            return is_retryable is None or is_retryable(error)

        return super().call_with_retry(do, fail, retryable, with_failure_count)


CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")

# Errors after which a Redis operation may succeed if retried: a lost or slow connection,
# and on a cluster a failover or resharding in progress (redirections the raw paths could
# not follow yet, a slot map that could not be read).
REDIS_UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.AskError,  # and MovedError, its subclass
    redis.exceptions.SlotNotCoveredError,
    redis.exceptions.RedisClusterException,
)


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://host:port``, a seed node)."""
    return url.split("://", 1)[0] in CLUSTER_SCHEMES


def plain_url(url: str) -> str:
    """``url`` with ``+cluster`` dropped from its scheme (what redis-py parses)."""
    scheme, _, rest = url.partition("://")
    return f"{scheme.removesuffix('+cluster')}://{rest}"


def redis_client(url: str) -> redis.Redis:
    """A client for the services that rides out a Redis restart: reconnect with capped,
    jittered backoff.

    8 retries, backoff doubling from 50 ms to 2 s; components add their own outer loop for
    longer outages. ``rediss://`` (TLS), user:password and ``?ssl_ca_certs=...`` come from the
    URL. (The recommendation clients bound every call by their timeout instead.)
    ``redis+cluster://host:port`` gives a ``redis.RedisCluster`` seeded by that node: every
    component works on either (``ledrec.keyspace``, ``ledrec.stream._cluster``).
    """
    retry = _ReconnectRetry(ExponentialWithJitterBackoff(cap=2.0, base=0.05), 8)
    if is_cluster_url(url):
        cluster = redis.RedisCluster.from_url(plain_url(url), health_check_interval=30, retry=retry)
        return cast(redis.Redis, cluster)  # the commands ledrec uses exist on both
    return redis.Redis.from_url(url, health_check_interval=30, retry=retry)


# -- Kafka -----------------------------------------------------------------------------------
def admin_client(bootstrap: str, kafka_config: Mapping[str, str] | None) -> AdminClient:
    """A Kafka admin client with the deployment's librdkafka settings (SASL/SSL...)."""
    return AdminClient({**(kafka_config or {}), "bootstrap.servers": bootstrap})


def kafka_answers(bootstrap: str, kafka_config: Mapping[str, str] | None, timeout: float) -> bool:
    try:
        admin_client(bootstrap, kafka_config).list_topics(timeout=timeout)
    except KafkaException:
        return False
    return True


def wait_for_kafka(
    bootstrap: str, timeout: float = 30.0, kafka_config: Mapping[str, str] | None = None
) -> None:
    """Block until an AdminClient can list the topics of ``bootstrap``."""
    deadline = time.monotonic() + timeout
    while not kafka_answers(bootstrap, kafka_config, timeout=2.0):
        if time.monotonic() > deadline:
            raise ConnectError(f"Kafka at {bootstrap} did not answer within {timeout:.0f}s")
        time.sleep(0.1)


def ensure_topics(
    bootstrap: str,
    topics: dict[str, int],
    kafka_config: dict[str, str] | None = None,
    *,
    replication_factor: int = 1,
    timeout: float = 30.0,
) -> None:
    """Create ``topics`` (name -> partitions) and wait until they exist; existing ones are kept.

    An existing topic is not altered (its partition count may differ from the one asked).
    """
    if not topics:
        return
    admin = admin_client(bootstrap, kafka_config)
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=n, replication_factor=replication_factor)
         for name, n in topics.items()],
        operation_timeout=timeout,
        request_timeout=timeout,
    )  # fmt: skip
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
        except TimeoutError:  # concurrent.futures' (the builtin since 3.11)
            raise ConnectError(
                f"Kafka at {bootstrap} did not answer within {timeout:.0f}s"
            ) from None
        except KafkaException as exc:
            error = exc.args[0]
            exists = (
                isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS
            )
            if not exists:
                raise ConnectError(f"cannot create topic {name!r} on {bootstrap}: {exc}") from exc
    # Creation acknowledged; wait until the metadata shows every partition (led).
    deadline = time.monotonic() + timeout
    while True:
        meta = admin.list_topics(timeout=timeout)
        missing = [
            name
            for name in topics
            if name not in meta.topics
            or meta.topics[name].error is not None
            or not meta.topics[name].partitions
            or any(p.leader < 0 for p in meta.topics[name].partitions.values())
        ]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise ConnectError(f"topics {missing} not visible on {bootstrap} after {timeout:.0f}s")
        time.sleep(0.1)


def ensure_event_topics(settings: Settings, bootstrap: str) -> None:
    """The events topic and its dead-letter topic exist (created with the settings'
    partitions and replication factors; existing topics are kept as they are)."""
    ensure_topics(
        bootstrap,
        {settings.events_topic: settings.events_partitions},
        settings.kafka_config,
        replication_factor=settings.events_replication,
    )
    ensure_topics(
        bootstrap,
        {settings.dead_letter_topic: settings.dead_letter_partitions},
        settings.kafka_config,
        replication_factor=settings.dead_letter_replication,
    )
