"""Item titles in Redis (``ledrec.stream.titles``): written once, read by id, replaced whole,
under the deployment's prefix, on one Redis and on a Redis Cluster."""

from __future__ import annotations

import pytest
import redis

from ledrec.keyspace import Keyspace
from ledrec.settings import Settings
from ledrec.stream import titles as titles_module
from ledrec.stream.titles import save_titles, titles_of

pytestmark = pytest.mark.both_redis


def test_titles_are_read_back_by_id_and_replaced_whole(
    settings: Settings, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(titles_module, "BATCH", 2)  # several HSETs in the one transaction
    prefix = settings.key_prefix
    catalog = {"1": "Toy Story (1995)", "73": "Misérables, Les (1995)", "2": "Jumanji (1995)"}
    assert save_titles(redis_client, prefix, catalog) == 3
    assert titles_of(redis_client, prefix, ["73", "404", "1"]) == [
        "Misérables, Les (1995)",
        None,
        "Toy Story (1995)",
    ]
    assert titles_of(redis_client, prefix, []) == []
    key = Keyspace.of(redis_client, prefix).titles
    assert key.startswith(f"{prefix}:") and redis_client.hlen(key) == 3

    save_titles(redis_client, prefix, {"2": "Jumanji"})  # a new catalog replaces the old one
    assert titles_of(redis_client, prefix, ["1", "2"]) == [None, "Jumanji"]
    assert titles_of(redis_client, "other-deployment", ["2"]) == [None]
