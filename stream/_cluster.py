"""Raw RESP round trips on a Redis Cluster: per-node pipelines routed by slot.

redis-py's ``ClusterPipeline`` refuses ``EVALSHA`` of registered scripts
(redis/redis-py#2914) and costs several times the per-node grouping done here
(``benchmarks/results/NOTES.md``, "Cluster"). So the hot paths pack their commands as on
one Redis (``stream._resp``), and this module sends each to the primary that owns its
key's slot, one write per node, then reads every node's replies and puts them back in the
order sent. Redirections are followed here: ``MOVED`` refreshes the slot map and resends
to the new owner, ``ASK`` resends to the importing node behind ``ASKING``, ``TRYAGAIN`` /
``CLUSTERDOWN`` (a failover in progress) back off and resend. Every command sent through
here is a read or a compare-and-set write, so resending one is safe.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from ledrec.keyspace import is_cluster
from ledrec.stream._resp import RawConnection, _read_replies, resp_command

__all__ = [
    "ClusterRawConnection",
    "command_key",
    "execute_routed",
    "raw_connection",
    "scan_step",
    "wait_replicated",
]

_KEY_AFTER = {b"EVALSHA": 3, b"EVAL": 3, b"FCALL": 3, b"FCALL_RO": 3}  # bulk index of the key
_REDIRECT_ATTEMPTS = 8
_ASKING = resp_command(b"ASKING")


def command_key(command: bytes) -> bytes:
    """The key a RESP-packed command acts on: its first argument, or for ``EVALSHA`` /
    ``FCALL`` its first key (after the script and the key count)."""
    pos = command.index(b"\r\n") + 2  # past *N
    name, pos = _bulk_at(command, pos)
    skip = _KEY_AFTER.get(name.upper(), 1) - 1
    for _ in range(skip):
        _, pos = _bulk_at(command, pos)
    key, _ = _bulk_at(command, pos)
    return key


def _bulk_at(command: bytes, pos: int) -> tuple[bytes, int]:
    """The bulk string at ``pos`` (its ``$``) and the position after it."""
    end = command.index(b"\r\n", pos)
    length = int(command[pos + 1 : end])
    start = end + 2
    return command[start : start + length], start + length + 2


def _node_of(client: RedisCluster, command: bytes) -> ClusterNode:
    return client.nodes_manager.get_node_from_slot(key_slot(command_key(command)))


def _connection_of(client: RedisCluster, node: ClusterNode) -> Any:
    return client.get_redis_connection(node).connection_pool.get_connection()


def _release(client: RedisCluster, node: ClusterNode, conn: Any) -> None:
    client.get_redis_connection(node).connection_pool.release(conn)


def _send_grouped(client: RedisCluster, commands: Sequence[bytes]) -> list[Any]:
    """One round trip per node, all nodes written before any is read; replies in order."""
    by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
    for j, command in enumerate(commands):
        node = _node_of(client, command)
        by_node.setdefault(node.name, (node, []))[1].append(j)
    held: list[tuple[ClusterNode, Any, list[int]]] = []
    replies: list[Any] = [None] * len(commands)
    try:
        for node, indices in by_node.values():
            conn = _connection_of(client, node)
            held.append((node, conn, indices))
            conn.send_packed_command([b"".join(commands[j] for j in indices)])
        for _, conn, indices in held:
            for j, reply in zip(indices, _read_replies(conn, len(indices)), strict=True):
                replies[j] = reply
    except BaseException:
        for _, conn, _ in held:
            conn.disconnect()  # never pool a half-read one
        raise
    finally:
        for node, conn, _ in held:
            _release(client, node, conn)
    return replies


def execute_routed(client: RedisCluster, commands: Sequence[bytes]) -> list[Any]:
    """``_resp.execute_raw`` on a cluster: each command to its slot's primary, one write per
    node, replies undecoded and in order; error replies returned as exceptions, not raised
    (redirections and failovers are followed first)."""
    replies = _attempt(client, commands)
    return _follow_redirects(client, commands, replies)


def _attempt(client: RedisCluster, commands: Sequence[bytes]) -> list[Any]:
    """``_send_grouped``, once more on a refreshed slot map after a lost connection (a
    failover moves slots to the promoted replica)."""
    try:
        return _send_grouped(client, commands)
    except (redis.ConnectionError, redis.TimeoutError):
        _refresh(client)
        return _send_grouped(client, commands)


def _refresh(client: RedisCluster) -> None:
    """Re-read the slot map from the cluster (any node that answers)."""
    client.nodes_manager.initialize()


def _follow_redirects(
    client: RedisCluster, commands: Sequence[bytes], replies: list[Any]
) -> list[Any]:
    """Resend the commands whose reply was a redirection until they get a real answer."""
    for attempt in range(_REDIRECT_ATTEMPTS):
        moved = [j for j, r in enumerate(replies) if isinstance(r, redis.exceptions.MovedError)]
        asked = [
            j
            for j, r in enumerate(replies)
            if isinstance(r, redis.exceptions.AskError)
            and not isinstance(r, redis.exceptions.MovedError)
        ]
        busy = [
            j
            for j, r in enumerate(replies)
            if isinstance(r, redis.exceptions.TryAgainError | redis.exceptions.ClusterDownError)
        ]
        if not (moved or asked or busy):
            return replies
        if busy:
            time.sleep(min(0.05 * 2**attempt, 1.0))
        if moved or busy:
            _refresh(client)
            again = [*moved, *busy]
            for j, reply in zip(again, _attempt(client, [commands[j] for j in again]), strict=True):
                replies[j] = reply
        for j in asked:
            error = replies[j]
            node = client.nodes_manager.get_node(error.host, error.port)
            if node is None:  # a node not in the slot map yet: map it, then ask it
                _refresh(client)
                node = client.nodes_manager.get_node(error.host, error.port)
                if node is None:
                    continue  # still unknown: resent on the next round
            conn = _connection_of(client, node)
            try:
                conn.send_packed_command([_ASKING + commands[j]])
                replies[j] = _read_replies(conn, 2)[1]
            except BaseException:
                conn.disconnect()
                raise
            finally:
                _release(client, node, conn)
    return replies


class ClusterRawConnection:
    """``_resp.RawConnection`` on a cluster: a held connection per primary; ``send`` writes
    each node its share of the commands, ``receive`` reads the replies due and returns them
    in the order sent (redirections followed synchronously, on other connections, so the
    replies still due are not disturbed). A connection error drops every connection (the
    replies due are lost: callers redo them, as after a lost connection on one Redis)."""

    def __init__(self, client: RedisCluster, spin_s: float = 0.0) -> None:
        self._client = client
        self._conns: dict[str, tuple[ClusterNode, Any]] = {}
        # per command sent and not yet received: (its node's name, the command)
        self._due: deque[tuple[str, bytes]] = deque()
        self.spin_s = spin_s
        self.polled_s = 0.0

    def _conn(self, node: ClusterNode) -> Any:
        held = self._conns.get(node.name)
        if held is None:
            held = (node, _connection_of(self._client, node))
            self._conns[node.name] = held
        return held[1]

    def send(self, commands: Sequence[bytes]) -> None:
        by_node: dict[str, tuple[ClusterNode, list[bytes]]] = {}
        try:
            for command in commands:
                node = _node_of(self._client, command)
                by_node.setdefault(node.name, (node, []))[1].append(command)
                self._due.append((node.name, command))
            for node, packed in by_node.values():
                self._conn(node).send_packed_command([b"".join(packed)])
        except BaseException:
            self.close()
            raise

    def receive(self, count: int | None = None) -> list[Any]:
        """The next ``count`` replies (default: every reply still due), in order sent."""
        count = len(self._due) if count is None else count
        if count > len(self._due):
            raise RuntimeError(f"{count} replies asked, {len(self._due)} due")
        taken = [self._due.popleft() for _ in range(count)]
        wanted: dict[str, int] = {}
        for name, _ in taken:
            wanted[name] = wanted.get(name, 0) + 1
        try:
            got = {
                name: deque(_read_replies(self._conns[name][1], n, self.spin_s))
                for name, n in wanted.items()
            }
        except BaseException:
            self.close()
            raise
        replies = [got[name].popleft() for name, _ in taken]
        return _follow_redirects(self._client, [c for _, c in taken], replies)

    def close(self) -> None:
        """Drop every connection (replies not read are lost)."""
        for node, conn in self._conns.values():
            conn.disconnect()
            _release(self._client, node, conn)
        self._conns = {}
        self._due.clear()


def raw_connection(client: Any, spin_s: float = 0.0) -> RawConnection | ClusterRawConnection:
    """A held connection to send packed commands now and read their replies later: one
    connection on one Redis, one per primary on a cluster."""
    if is_cluster(client):
        return ClusterRawConnection(client, spin_s)
    return RawConnection(client, spin_s)


_NODE_CURSOR = 2**64  # a cluster SCAN cursor: primary ordinal * 2^64 + that node's cursor


def scan_step(client: Any, cursor: int, match: str, count: int) -> tuple[int, list[bytes]]:
    """One ``SCAN`` step over every primary, resumable from one integer (0: start, and
    returned when done). On one Redis it is Redis's cursor; on a cluster it names the
    primary (in the order of the slots they own, which a failover keeps) and its cursor,
    and the primaries are scanned one after another."""
    if not is_cluster(client):
        next_cursor, keys = client.scan(cursor=cursor, match=match, count=count)
        return int(next_cursor), list(keys)
    primaries = _primaries_in_slot_order(client)
    ordinal, node_cursor = divmod(cursor, _NODE_CURSOR)
    if ordinal >= len(primaries):
        return 0, []  # fewer primaries than when this scan began: it is done
    node = client.get_redis_connection(primaries[ordinal])
    next_cursor, keys = node.scan(cursor=node_cursor, match=match, count=count)
    if int(next_cursor) != 0:
        return ordinal * _NODE_CURSOR + int(next_cursor), list(keys)
    if ordinal + 1 < len(primaries):
        return (ordinal + 1) * _NODE_CURSOR, list(keys)
    return 0, list(keys)


def _primaries_in_slot_order(client: RedisCluster) -> list[ClusterNode]:
    """The primaries, by the lowest slot each serves."""
    first: dict[str, tuple[int, ClusterNode]] = {}
    for slot, nodes in sorted(client.nodes_manager.slots_cache.items()):
        if nodes and nodes[0].name not in first:
            first[nodes[0].name] = (slot, nodes[0])
    return [node for _, node in sorted(first.values(), key=lambda pair: pair[0])]


def _slot_part(key: bytes) -> bytes:
    """The part of ``key`` its slot is computed from (its hash tag, if it has one)."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def wait_replicated(
    client: Any, marker_stem: bytes, written: Sequence[bytes], replicas: int, timeout_ms: int
) -> int:
    """Wait until the writes to the keys ``written`` reached ``replicas`` replicas (``WAIT``);
    returns the fewest replicas any of their primaries reached (``replicas`` or more: durable).

    ``WAIT`` counts the writes of the connection it is sent on, and the writes it must cover
    were sent on other connections (and may have been redone on new ones after a
    failover). So on each primary that holds some of ``written`` it first writes a marker
    key (``marker_stem`` + the hash tag of one written key: the same slot, an expiring key)
    on the connection it then waits on: a replica that has the marker has every write the
    primary acknowledged before it.
    """
    if not written:
        return replicas
    commands: list[bytes] = []
    wait = resp_command(b"WAIT", b"%d" % replicas, b"%d" % timeout_ms)
    if is_cluster(client):
        one_per_node: dict[str, bytes] = {}
        for key in written:
            node = client.nodes_manager.get_node_from_slot(key_slot(key))
            one_per_node.setdefault(node.name, key)
        samples = list(one_per_node.values())
    else:
        samples = [written[0]]
    for key in samples:
        marker = marker_stem + b"{" + _slot_part(key) + b"}"
        commands.append(resp_command(b"SET", marker, b"1", b"PX", b"60000") + wait)
    fewest = replicas
    for command in commands:  # SET + WAIT on one connection: routed by the SET's key
        replies = _execute_pair(client, command)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        fewest = min(fewest, int(replies[1]))
    return fewest


def _execute_pair(client: Any, pair: bytes) -> list[Any]:
    """A packed SET + WAIT on one connection of the node that owns the SET's key."""
    if is_cluster(client):
        pool = client.get_redis_connection(_node_of(client, pair)).connection_pool
    else:
        pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([pair])
        return _read_replies(conn, 2)
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)
