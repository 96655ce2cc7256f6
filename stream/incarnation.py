"""Incarnations of the events topic: per-user offsets that survive a topic reset.

A user's state remembers the last Kafka offset applied per partition, so redeliveries are
skipped. When the topic is deleted and created again, or the deployment moves to another
cluster, offsets start again at 0, and new events would be taken for redeliveries and
silently skipped. So every incarnation of the topic (its Kafka topic id) gets a number,
recorded in Redis, and the offsets of incarnation ``k`` are stored under the partition
*slot* ``p + (k - 1) · STRIDE``: the first incarnation a deployment saw keeps the plain
partition numbers (``o:<p>`` fields), a later one starts with no offsets at all.

The record also keeps, per consumer group, the topic id its offsets were committed for
(committed offsets of an earlier incarnation mean nothing in this one: the group reads the
new one from the beginning), and the last offset committed per partition: a broker whose
log ends below it has lost events (offsets going backwards on the same incarnation), which
is logged and counted, never skipped silently.
"""

from __future__ import annotations

import logging

import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from ledrec.keyspace import Keyspace

log = logging.getLogger(__name__)

STRIDE = 1 << 20  # more partitions than any topic has


def slot(partition: int, incarnation: int) -> int:
    """Where the offsets of ``partition`` in ``incarnation`` are stored in user states."""
    return partition + (incarnation - 1) * STRIDE


def topic_id(admin: AdminClient, topic: str, timeout_s: float = 10.0) -> str:
    """The topic's Kafka id ("" when the broker does not report one)."""
    from confluent_kafka import TopicCollection

    try:
        future = admin.describe_topics(TopicCollection([topic]))[topic]
        return str(future.result(timeout=timeout_s).topic_id or "")
    except (KafkaException, TimeoutError, ValueError) as e:
        log.warning("no topic id for the events topic", extra={"topic": topic, "error": str(e)})
        return ""


class TopicIncarnations:
    """The record of one topic's incarnations in Redis (``Keyspace.topic``)."""

    def __init__(self, client: redis.Redis, keys: Keyspace, topic: str) -> None:
        self.client, self.key = client, keys.topic(topic)

    def number(self, topic_id: str) -> int:
        """The incarnation number of ``topic_id``: 1 for the first one ever seen (and for a
        broker without topic ids), then 2, 3... in the order they are first seen."""
        if not topic_id:
            return 1
        field = f"id:{topic_id}"
        known = self.client.hget(self.key, field)
        if known is not None:
            return int(known)
        candidate = int(self.client.hincrby(self.key, "seen", 1))
        if self.client.hsetnx(self.key, field, candidate):
            return candidate
        return int(self.client.hget(self.key, field) or candidate)  # another process won

    def committed_topic(self, group: str) -> str | None:
        """The topic id ``group`` last committed offsets for (None: never recorded)."""
        raw = self.client.hget(self.key, f"group:{group}")
        return raw.decode() if isinstance(raw, bytes) else raw

    def last_committed(self, incarnation: int) -> dict[int, int]:
        """Partition -> the last offset committed (by any group) in ``incarnation``."""
        head = f"end:{incarnation}:"
        out: dict[int, int] = {}
        for field, value in self.client.hgetall(self.key).items():
            name = field.decode() if isinstance(field, bytes) else field
            if name.startswith(head):
                out[int(name[len(head) :])] = int(value)
        return out

    def record_commit(
        self, group: str, topic_id: str, incarnation: int, offsets: dict[int, int]
    ) -> None:
        """What a group committed: the topic id, and the last offset of each partition."""
        mapping: dict[str, str | int] = {f"group:{group}": topic_id}
        mapping.update({f"end:{incarnation}:{p}": o for p, o in offsets.items()})
        self.client.hset(self.key, mapping=mapping)  # type: ignore[arg-type]
