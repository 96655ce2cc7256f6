"""A client nobody here wrote: kcat (librdkafka's CLI) publishes JSON events to the real
broker, and the consumer applies them exactly like the same events published from Python."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import redis

from ledrec.settings import Settings
from ledrec.stream.producer import EventPublisher
from ledrec.stream.state import UserStateStore
from tests.helpers import running_consumer, wait_until

pytestmark = pytest.mark.contract
KCAT = shutil.which("kcat") or shutil.which("kafkacat")
TIMELINES = {
    "alice": [("i1", "view"), ("i2", "click"), ("i3", "sale")],
    "bob": [("i2", "view"), ("i9", "view")],
    "ünïcode": [("ïtem-1", "click")],
}


def _kcat_env(tmp_path: Path) -> dict[str, str]:
    """kcat, linked against the librdkafka that confluent-kafka ships (same ABI, 2.x).

    Debian 12's kcat comes with librdkafka 2.0.2, which cannot parse the local broker's
    (Tansu's) ApiVersions reply ("Read underflow"); the kcat binary itself is unchanged.
    """
    import confluent_kafka

    libs = Path(confluent_kafka.__file__).resolve().parent.parent / "confluent_kafka.libs"
    bundled = sorted(libs.glob("librdkafka*.so*"))
    env = dict(os.environ)
    if bundled:
        (tmp_path / "librdkafka.so.1").symlink_to(bundled[0])
        env["LD_LIBRARY_PATH"] = f"{tmp_path}:{env.get('LD_LIBRARY_PATH', '')}"
    return env


@pytest.mark.skipif(KCAT is None, reason="kcat is not installed (Debian: apt-get install kcat)")
def test_json_events_from_kcat_are_applied_like_python_ones(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    assert KCAT is not None
    lines = []
    for user, events in TIMELINES.items():
        for n, (item, kind) in enumerate(events):
            event = {"user_id": f"kcat-{user}", "item_id": item, "type": kind, "ts": 1.7e9 + n}
            lines.append(f"kcat-{user}|{json.dumps(event, ensure_ascii=False)}")
    subprocess.run(
        [KCAT, "-P", "-b", settings.kafka_bootstrap, "-t", settings.events_topic, "-K", "|",
         "-X", "partitioner=murmur2_random"],
        input="\n".join(lines) + "\n", text=True, check=True, timeout=60,
        env=_kcat_env(tmp_path),
    )  # fmt: skip
    with EventPublisher(settings, settings.kafka_bootstrap) as publisher:
        for user, events in TIMELINES.items():
            for n, (item, kind) in enumerate(events):
                publisher.send(f"py-{user}", item, kind, ts=1.7e9 + n)
    store = UserStateStore(redis_client, settings.key_prefix, settings.timeline_max, 0)
    users = [f"{who}-{user}" for user in TIMELINES for who in ("kcat", "py")]
    with running_consumer(settings, redis_client):

        def applied() -> bool:
            states = store.read_many(users, [])
            return all(
                s is not None and s.size == len(TIMELINES[u.split("-", 1)[1]])
                for u, s in zip(users, states, strict=True)
            )

        wait_until(applied, 30, "the kcat and Python events applied", step=0.1)
    for user in TIMELINES:
        from_kcat, from_python = store.read(f"kcat-{user}", []), store.read(f"py-{user}", [])
        assert from_kcat is not None and from_python is not None
        assert from_kcat.timeline == from_python.timeline  # same items, same weights, in order
        assert from_kcat.offsets.keys() == from_python.offsets.keys()  # the same partition
