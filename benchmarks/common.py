"""Shared benchmark plumbing: the machine, a private stack, synthetic models, results.

Every benchmark starts its own ``redis-server`` (and Tansu broker when it needs Kafka)
on free ports in a temporary directory, measures its floor in the same run and writes
``benchmarks/results/<name>.json`` with the machine it ran on.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

RESULTS = Path(__file__).resolve().parent / "results"
LIBRARIES = (
    "numpy", "faiss-cpu", "redis", "hiredis", "msgpack", "confluent-kafka", "pydantic",
)  # fmt: skip


def machine() -> dict[str, Any]:
    """CPU model, cores, load, Python and library versions: what a figure was measured on."""
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    from ledrec.deploy.stack import find_redis_server

    try:
        out = subprocess.run([find_redis_server(), "--version"], capture_output=True, text=True)
        versions["redis-server"] = out.stdout.split()[2].removeprefix("v=")
    except (OSError, IndexError):
        versions["redis-server"] = "?"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": versions,
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", ""),
    }


def percentiles(samples_s: Sequence[float] | npt.NDArray[np.float64]) -> dict[str, float]:
    """p50 / p99 / p99.9 / mean in microseconds."""
    a = np.asarray(samples_s, dtype=np.float64) * 1e6
    if a.size == 0:
        return {"n": 0}
    p50, p99, p999 = np.percentile(a, [50, 99, 99.9])
    return {
        "n": int(a.size),
        "p50_us": round(float(p50), 1),
        "p99_us": round(float(p99), 1),
        "p999_us": round(float(p999), 1),
        "mean_us": round(float(a.mean()), 1),
    }


def write_result(name: str, result: dict[str, Any], out_dir: Path = RESULTS) -> Path:
    """Write ``<out_dir>/<name>.json`` with the machine and the end-of-run load."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, "machine": machine(), **result}
    result["machine"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


@dataclass
class Stack:
    """A private redis-server or Redis Cluster (and Tansu broker) for one benchmark."""

    redis_url: str
    kafka_bootstrap: str
    home: Path
    redis_pid: int = 0
    kafka_pid: int = 0
    redis_pids: tuple[int, ...] = ()  # every redis-server (one, or a cluster's nodes)
    cluster_primaries: int = 0  # 0: one redis-server

    @property
    def kind(self) -> str:
        return f"cluster-{self.cluster_primaries}" if self.cluster_primaries else "single"


@contextlib.contextmanager
def private_stack(
    kafka: bool = True, redis_cluster: int = 0, redis_replicas: int = 0
) -> Iterator[Stack]:
    """Start redis-server (or, with ``redis_cluster`` = N >= 3, a Redis Cluster of N
    primaries with ``redis_replicas`` replicas each) + Tansu when ``kafka``, on free
    loopback ports; stop them afterwards."""
    from ledrec.deploy.cluster import RedisClusterServers
    from ledrec.deploy.stack import KafkaBroker, RedisServer

    with tempfile.TemporaryDirectory(prefix="ledrec-bench-") as tmp, contextlib.ExitStack() as es:
        home = Path(tmp)
        if redis_cluster:
            cluster = es.enter_context(
                RedisClusterServers(
                    home / "redis",
                    primaries=redis_cluster,
                    replicas=redis_replicas,
                    die_with_parent=True,
                )
            )
            url, pids = cluster.url, tuple(p or 0 for p in cluster.pids)
        else:
            server = es.enter_context(RedisServer(home / "redis", die_with_parent=True))
            url, pids = server.url, (server.pid or 0,)
        bootstrap, kafka_pid = "", 0
        if kafka:
            broker = es.enter_context(KafkaBroker(home / "kafka", die_with_parent=True))
            bootstrap, kafka_pid = broker.bootstrap, broker.pid or 0
        yield Stack(url, bootstrap, home, pids[0], kafka_pid, pids, redis_cluster)


def connect(url: str) -> Any:
    """A plain client for ``url``: ``redis.Redis``, or ``redis.RedisCluster`` for a
    ``redis+cluster://`` URL (as ``ledrec.connect.redis_client`` chooses)."""
    from ledrec.connect import redis_client

    return redis_client(url)


def is_cluster_client(client: Any) -> bool:
    import redis

    return isinstance(client, redis.RedisCluster)


def _node_clients(client: Any) -> list[Any]:
    """One ``redis.Redis`` per server: the client itself, or each cluster primary's."""
    if not is_cluster_client(client):
        return [client]
    return [client.get_redis_connection(node) for node in client.get_primaries()]


def reset_stats(client: Any) -> None:
    """``CONFIG RESETSTAT`` on every server."""
    for node in _node_clients(client):
        node.config_resetstat()


def commandstats(client: Any) -> dict[str, dict[str, float]]:
    """``INFO commandstats`` summed over every server (``usec_per_call`` recomputed)."""
    total: dict[str, dict[str, float]] = {}
    for node in _node_clients(client):
        for name, stat in node.info("commandstats").items():
            t = total.setdefault(name, {"calls": 0.0, "usec": 0.0})
            t["calls"] += float(stat["calls"])
            t["usec"] += float(stat["usec"])
    for t in total.values():
        t["usec_per_call"] = round(t["usec"] / t["calls"], 2) if t["calls"] else 0.0
    return total


def bench_settings(stack: Stack, **overrides: Any) -> Any:
    """Settings pointing at ``stack`` with a model store inside it."""
    from ledrec.settings import Settings

    return Settings(
        kafka_bootstrap=stack.kafka_bootstrap,
        redis_url=stack.redis_url,
        home=stack.home,
        **overrides,
    )


def synthetic_world(n_items: int, n_users: int, n_events: int, seed: int = 0) -> tuple[Any, Any]:
    """(SyntheticConfig, SyntheticEvents) with 100 taste clusters (one per ~10^4 items)."""
    from ledrec.training.synthetic import SyntheticConfig, generate

    config = SyntheticConfig(
        n_users=n_users,
        n_items=n_items,
        n_events=n_events,
        n_clusters=max(2, min(1000, n_items // 1000)),
        seed=seed,
    )
    return config, generate(config)


def clustered_model(
    events: Any, n_items: int, dim: int = 64, seed: int = 0, version: str = ""
) -> Any:
    """An LED-like model on the world's clusters: ``v_i`` = cluster centre + sub-cluster
    offset + noise (so items of one taste are near each other, as trained embeddings are),
    ``b_i`` = log popularity (the paper's bias initialisation)."""
    from ledrec.stream.artifact import Model

    rng = np.random.default_rng(seed + 1)
    n_clusters = int(events.item_cluster.max()) + 1
    centres = rng.normal(size=(n_clusters, dim)) / math.sqrt(dim)
    n_sub = 16
    sub = rng.normal(size=(n_clusters, n_sub, dim)) / math.sqrt(dim)
    item_sub = rng.integers(n_sub, size=n_items)
    noise = rng.normal(size=(n_items, dim)) / math.sqrt(dim)
    emb = 1.0 * centres[events.item_cluster] + 0.5 * sub[events.item_cluster, item_sub]
    emb += 0.5 * noise
    counts = np.bincount(events.item, minlength=n_items).astype(np.float64)
    biases = np.log1p(counts) - np.log1p(counts).mean()
    return Model(
        item_ids=np.char.add("i", np.arange(n_items).astype(str)),
        embeddings=emb.astype(np.float32),
        biases=(0.1 * biases).astype(np.float32),
        version=version,
        provenance={"source": "benchmarks.common.clustered_model", "seed": seed},
    )


def timeline_queries(
    events: Any, model: Any, n_queries: int, timeline_max: int = 100, seed: int = 0
) -> tuple[npt.NDArray[np.float32], list[list[str]]]:
    """Real LED queries: ``u`` = mean of the item vectors of users' last ``timeline_max``
    views and clicks in the synthetic world; returns (queries (n, d), timelines)."""
    rng = np.random.default_rng(seed)
    order = np.argsort(events.user, kind="stable")
    users_sorted = events.user[order]
    starts = np.searchsorted(users_sorted, np.arange(int(events.user.max()) + 2))
    active = np.flatnonzero(np.diff(starts) >= 5)
    picked = rng.choice(active, size=min(n_queries, active.size), replace=False)
    queries = np.empty((picked.size, model.dim), dtype=np.float32)
    timelines: list[list[str]] = []
    for j, u in enumerate(picked.tolist()):
        rows = events.item[order[starts[u] : starts[u + 1]]][-timeline_max:]
        queries[j] = model.embeddings[rows].mean(axis=0)
        timelines.append([f"i{r}" for r in rows.tolist()])
    return queries, timelines


def raw_pipeline(client: Any, commands: Sequence[bytes]) -> list[Any]:
    """Send RESP-packed ``commands`` in one write, read every reply (the floors' client);
    on a cluster, one write per primary (grouped by slot, as the consumer's writes are)."""
    if is_cluster_client(client):
        from ledrec.stream._cluster import execute_routed

        return execute_routed(client, commands)
    conn = client.connection_pool.get_connection()
    try:
        conn.send_packed_command([b"".join(commands)])
        return [conn.read_response(disable_decoding=True) for _ in commands]
    finally:
        client.connection_pool.release(conn)


def fmt_us(value: float) -> str:
    return f"{value:,.0f} µs" if value < 10_000 else f"{value / 1000:,.1f} ms"


def redis_cpu_s(client: Any) -> float:
    """redis-server's CPU seconds so far (user + sys, from ``INFO cpu``), summed over a
    cluster's primaries."""
    total = 0.0
    for node in _node_clients(client):
        cpu = node.info("cpu")
        total += float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    return total


def set_pinning(roles: dict[str, str], names: Sequence[str]) -> None:
    """Give each of ``names`` its CPUs from ``roles`` ("1", "0,1"; absent: no pinning), for
    :func:`pin` in this process and in the children it spawns (they inherit the
    environment)."""
    for role in names:
        os.environ[f"LEDREC_BENCH_CPUS_{role.upper()}"] = roles.get(role, "")


def pin(role: str, pid: int | Sequence[int] = 0) -> None:
    """Pin ``pid`` (0: the calling thread, and the threads it starts later; a sequence:
    each of them) to ``role``'s CPUs as :func:`set_pinning` gave them; no-op when it gave
    none."""
    cpus = os.environ.get(f"LEDREC_BENCH_CPUS_{role.upper()}", "")
    if cpus:
        for one in [pid] if isinstance(pid, int) else pid:
            os.sched_setaffinity(one, {int(c) for c in cpus.split(",")})
