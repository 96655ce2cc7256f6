"""The raw per-node pipelines follow a slot that moves (``stream/_cluster.py``): during a
migration a key the old owner no longer has gets ``ASK`` (resent to the importing node
behind ``ASKING``), and after it a client with the old slot map gets ``MOVED`` (the map is
re-read and the command resent). Real redirections from a real 3-primary cluster, whose
slot is moved by hand with ``CLUSTER SETSLOT`` / ``MIGRATE`` as ``redis-cli --cluster
reshard`` does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot

from ledrec.deploy.cluster import RedisClusterServers
from ledrec.deploy.stack import RedisServer
from ledrec.stream._cluster import ClusterRawConnection, execute_routed
from ledrec.stream._resp import resp_command

pytestmark = pytest.mark.cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    with RedisClusterServers(tmp_path / "cluster", die_with_parent=True) as servers:
        yield servers


def _node_id(node: RedisServer) -> str:
    c = node.client()
    try:
        raw = c.execute_command("CLUSTER", "MYID")  # type: ignore[no-untyped-call]
    finally:
        c.close()
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _run(node: RedisServer, *args: Any) -> Any:
    c = node.client()
    try:
        return c.execute_command(*args)  # type: ignore[no-untyped-call]
    finally:
        c.close()


def test_ask_during_a_migration_and_moved_after_it_are_followed(
    cluster: RedisClusterServers,
) -> None:
    old_key, new_key = b"t:{moving}:u:old", b"t:{moving}:u:new"
    slot = key_slot(old_key)
    assert key_slot(new_key) == slot
    client = cluster.client()  # its slot map is read now and goes stale below
    write = [resp_command(b"HSET", old_key, b"f", b"1")]
    assert execute_routed(client, write) == [1]
    source = cluster.primary_of(old_key)
    target = next(n for n in cluster.nodes if n is not source)
    source_id, target_id = _node_id(source), _node_id(target)

    # Migrating: the source keeps the keys it has; one it does not have is ASKed elsewhere.
    _run(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    _run(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    assert execute_routed(client, [resp_command(b"HSET", new_key, b"f", b"2")]) == [1]
    assert _run(source, "CLUSTER", "COUNTKEYSINSLOT", slot) == 1  # the new one went across
    assert _run(target, "CLUSTER", "COUNTKEYSINSLOT", slot) == 1

    # Migrated: every key on the target, the slot assigned to it everywhere.
    _run(source, "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", old_key)
    for node in cluster.nodes:
        _run(node, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
    reads = [resp_command(b"HGET", old_key, b"f"), resp_command(b"HGET", new_key, b"f")]
    assert execute_routed(client, reads) == [b"1", b"2"]  # MOVED, map re-read, resent

    # The held per-node connections of the pipelined writer follow a move the same way.
    assert cluster.primary_of(old_key) is target
    stale = cluster.client()
    raw = ClusterRawConnection(stale)
    raw.send([resp_command(b"HINCRBY", old_key, b"f", b"1")])
    # move the slot back to the source behind this client's back
    _run(source, "CLUSTER", "SETSLOT", slot, "IMPORTING", target_id)
    _run(target, "CLUSTER", "SETSLOT", slot, "MIGRATING", source_id)
    _run(target, "MIGRATE", "127.0.0.1", source.port, "", 0, 5000, "KEYS", old_key, new_key)
    for node in cluster.nodes:
        _run(node, "CLUSTER", "SETSLOT", slot, "NODE", source_id)
    assert raw.receive() == [2]  # sent before the move: it ran on the target
    raw.send([resp_command(b"HINCRBY", old_key, b"f", b"1")])
    assert raw.receive() == [3]  # after it: MOVED from the target, resent to the source
    assert _run(source, "HGET", old_key, "f") == b"3"
    raw.close()
    for c in (client, stale):
        c.close()
