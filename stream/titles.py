"""Item titles in Redis, for people: what the demo prints and the gateway can show.

One hash per deployment (``Keyspace.titles``: ``<prefix>:catalog:titles``, tagged with the
control keys on a Redis Cluster), item id -> title, UTF-8. Recommendations carry item ids;
a reader looks the titles of the ids it shows up with one ``HMGET``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import redis

from ledrec.keyspace import Keyspace

BATCH = 1000  # fields per HSET


def save_titles(client: redis.Redis, prefix: str, titles: Mapping[str, str]) -> int:
    """Replace the deployment's titles with ``titles`` in one transaction (readers see the
    old set or the new one, never a mix); returns how many were written."""
    key = Keyspace.of(client, prefix).titles
    items = list(titles.items())
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        for first in range(0, len(items), BATCH):
            pipe.hset(key, mapping=dict(items[first : first + BATCH]))
        pipe.execute()
    return len(items)


def titles_of(client: redis.Redis, prefix: str, item_ids: Sequence[str]) -> list[str | None]:
    """The titles of ``item_ids``, in order (None where an item has no title)."""
    if not item_ids:
        return []
    key = Keyspace.of(client, prefix).titles
    values = client.hmget(key, list(item_ids))
    return [None if v is None else v.decode() if isinstance(v, bytes) else str(v) for v in values]
