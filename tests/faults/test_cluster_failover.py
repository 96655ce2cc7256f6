"""A Redis Cluster primary dies during ingest and its replica takes over: with durable
commits (``redis_min_replicas=1``) every user's state equals a clean pass afterwards.

To make the dangerous window certain rather than a matter of luck, the victim's replica
is paused (SIGSTOP) and cut off while the consumer writes: the primary acknowledges writes
its replica does not have. Then the primary is SIGKILLed and the replica resumed, so it is promoted
without those writes. With ``min_replicas=1`` the consumer never counted them as settled
(``WAIT`` fell short), so it commits nothing and redoes them on the new primary once that
one has a replica again (the killed node, restarted, rejoins as its replica).
The second test runs the same with ``min_replicas=0`` (the default) and shows the loss.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ledrec.connect import redis_client
from ledrec.deploy.cluster import RedisClusterServers, cluster_health
from ledrec.deploy.stack import RedisServer
from ledrec.settings import Settings
from ledrec.stream.artifact import Model
from ledrec.stream.state import UserStateStore
from tests.helpers import (
    Events,
    assert_clean_pass,
    clean_pass,
    publish_model,
    publish_stream,
    random_model,
    running_consumer,
    wait_until,
)

pytestmark = pytest.mark.cluster


@pytest.fixture
def replicated_cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    with RedisClusterServers(
        tmp_path / "cluster",
        primaries=3,
        replicas=1,
        node_timeout_ms=1000,
        replica_validity_factor=0,  # the replica cut off on purpose may still take over
        die_with_parent=True,
    ) as cluster:
        yield cluster


def _role(node: RedisServer) -> str:
    c = node.client(socket_timeout=1.0)
    try:
        role = c.execute_command("ROLE")
    finally:
        c.close()
    return str(role[0].decode() if isinstance(role[0], bytes) else role[0])


def _failover_during_ingest(
    settings: Settings, cluster: RedisClusterServers, min_replicas: int
) -> tuple[redis.Redis, Events, Model]:
    """Ingest 6,000 events while the primary of ``u1`` is cut off from its replica, then
    killed and replaced by it; returns once the consumer has settled every event."""
    settings = settings.model_copy(
        update={"redis_url": cluster.url, "redis_min_replicas": min_replicas,
                "redis_wait_timeout_ms": 200, "timeline_max": 1000}
    )  # fmt: skip
    client = redis_client(settings.redis_url)
    model = publish_model(settings, client, random_model(n_items=300, dim=8))
    with running_consumer(settings, client) as updater:
        first, _ = publish_stream(settings, 3000, 300, 300, seed=1)
        wait_until(lambda: updater.totals.applied >= 3000, 60, "first events applied")
        time.sleep(0.5)  # replicated by now

        victim = cluster.primary_of(settings.keyspace_of(client).user("u1"))
        replica = cluster.replica_of(victim)
        replica_pid = replica.pid
        assert replica_pid is not None
        # The replica stops, and the primary drops its link (else the kernel would still
        # buffer the replication stream for it): what the primary acknowledges now is its own.
        os.kill(replica_pid, signal.SIGSTOP)
        try:
            primary = victim.client()
            primary.execute_command("CLIENT", "KILL", "TYPE", "replica")
            primary.close()
            second, _ = publish_stream(settings, 3000, 300, 300, seed=2)
            time.sleep(1.5)  # the consumer writes them
            victim.kill()
        finally:
            os.kill(replica_pid, signal.SIGCONT)
        # The replica is promoted; the killed node comes back (empty) as its replica, so
        # writes to that primary can reach one replica again.
        wait_until(lambda: _role(replica) == "master", 30, "the replica promoted", step=0.1)
        # every slot served again (the promoted primary has no replica yet)
        wait_until(lambda: cluster_health(cluster.ports) is None, 30, "failover", step=0.2)
        victim.start()
        # the killed node is the new primary's replica, in sync
        wait_until(lambda: cluster.health() is None, 60, "rejoin", step=0.2)
        events = first + second
        # Writes that landed on the healthy primaries while the victim's WAIT fell short are
        # redone too, and skipped there: every event is applied or skipped, once settled.
        done = updater.totals
        wait_until(lambda: done.applied + done.skipped >= len(events), 90, "every event", 0.2)
        wait_until(lambda: updater.writer.idle, 30, "writes settled", 0.1)
    return client, events, model


def test_primary_killed_mid_ingest_loses_nothing_with_durable_commits(
    settings: Settings, replicated_cluster: RedisClusterServers
) -> None:
    client, events, model = _failover_during_ingest(settings, replicated_cluster, 1)
    settings = settings.model_copy(update={"timeline_max": 1000})
    # none lost, none applied twice: each timeline holds every one of the user's events once
    assert assert_clean_pass(client, settings, events, model) == 300
    client.close()


def test_without_durable_commits_a_failover_loses_acknowledged_writes(
    settings: Settings, replicated_cluster: RedisClusterServers
) -> None:
    """What ``redis_min_replicas=0`` (the default) risks, shown: the offsets of writes the
    dead primary had not replicated were committed, so those events are gone for good."""
    client, events, model = _failover_during_ingest(settings, replicated_cluster, 0)
    expected = clean_pass(events, 1000, model)
    store = UserStateStore(client, settings.key_prefix, 1000, 60)
    states = store.read_many(sorted(expected), [model.version])
    wrong = sum(
        state is None or state.timeline != expected[user][0]
        for user, state in zip(sorted(expected), states, strict=True)
    )
    print(f"min_replicas=0: {wrong} of {len(expected)} users lost events in the failover")
    assert wrong > 0  # the victim primary's users
    client.close()
