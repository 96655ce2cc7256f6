"""Cross-language partitioning: the publisher puts each user on the partition Kafka's Java
client would (murmur2 of the UTF-8 user id, positive, modulo the partitions)."""

from __future__ import annotations

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from ledrec.settings import Settings
from ledrec.stream.producer import EventPublisher

pytestmark = pytest.mark.contract


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2`` (the Java client's partitioner), as a signed 32-bit int."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail, rem = length & ~3, length % 4
    if rem == 3:
        h ^= data[tail + 2] << 16
    if rem >= 2:
        h ^= data[tail + 1] << 8
    if rem >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h >= 1 << 31 else h


def java_partition(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def test_the_reference_is_kafkas_murmur2() -> None:
    # the vectors of Kafka's own UtilsTest.testMurmur2
    vectors = {
        "21": -973932308, "foobar": -790332482, "a-little-bit-long-string": -985981536,
        "a-little-bit-longer-string": -1486304829, "abc": 479470107,
        "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    }  # fmt: skip
    assert {s: murmur2(s.encode()) for s in vectors} == vectors


def test_users_land_where_a_java_producer_would_put_them(settings: Settings) -> None:
    users = [f"user-{i}" for i in range(60)] + ["é", "ünïcødé-user", "x" * 200]
    with EventPublisher(settings, settings.kafka_bootstrap) as publisher:
        for user in users:
            publisher.send(user, "item-1", "view")
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": "partitions-check"}
    )
    n = settings.events_partitions
    consumer.assign([TopicPartition(settings.events_topic, p, OFFSET_BEGINNING) for p in range(n)])
    seen: dict[bytes, int] = {}
    try:
        while len(seen) < len(users):
            msg = consumer.poll(10)
            assert msg is not None, f"only {len(seen)} of {len(users)} events read back"
            key, partition = msg.key(), msg.partition()
            assert key is not None and partition is not None
            seen[key] = partition
    finally:
        consumer.close()
    expected = {u.encode(): java_partition(u.encode(), n) for u in users}
    assert seen == expected
    assert len(set(seen.values())) == n  # the users do spread over every partition
