"""Model store hygiene: the directories of versions that can no longer serve go.

A version is prunable when it is ``retired``, or ``staged`` (registered, never activated:
e.g. a candidate the quality gate refused). The newest ``keep`` of them stay, for a look
or a forced activation; live versions (warming, active, retained) are never touched, and
neither are directories the registry does not know (a training may be writing one). The
registry keeps the entries of pruned versions (their metrics are history), marked pruned.
"""

from __future__ import annotations

import json
import logging
import time

from ledrec.stream.model_store import LocalStore, ModelStores
from ledrec.stream.registry import Registry

log = logging.getLogger(__name__)

PRUNABLE = ("retired", "staged")


def prunable(registry: Registry, keep: int) -> list[str]:
    """The versions whose directories ``prune`` would remove, oldest first."""
    candidates = [
        (info.get("registered_at", 0.0), version)
        for version, info in registry.versions().items()
        if info.get("state") in PRUNABLE and not info.get("pruned_at")
    ]
    candidates.sort()
    return [version for _, version in candidates[: max(0, len(candidates) - keep)]]


def prune(registry: Registry, keep: int, stores: ModelStores | None = None) -> list[str]:
    """Remove the artifacts of the prunable versions beyond the newest ``keep`` (their
    locations: directories, or ``s3://`` objects with ``stores``); returns the removed."""
    removed: list[str] = []
    live = set(registry.live())
    for version in prunable(registry, keep):
        if version in live:  # changed state meanwhile: never remove a live version
            continue
        info = registry.info(version)
        location = str(info["path"])
        gone = stores.remove(location) if stores else LocalStore.remove_dir(location)
        if gone:
            removed.append(location)
        info["pruned_at"] = time.time()
        registry.client.hset(registry.keys.models("info"), version, json.dumps(info))
        log.info("model version pruned", extra={"version": version, "path": location})
    return removed
