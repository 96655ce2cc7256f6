"""Model store hygiene: `ledrec models prune` removes the directories of staged and retired
versions beyond the newest N, never a live one, and keeps their registry entries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import redis

from ledrec.settings import Settings
from ledrec.stream.artifact import save_model
from ledrec.stream.registry import Registry
from tests.helpers import random_model, settings_env


def test_prune_keeps_live_versions_and_the_newest_staged_or_retired(
    settings: Settings, redis_client: redis.Redis
) -> None:
    registry = Registry(redis_client, settings.key_prefix)
    paths: dict[str, Path] = {}
    for n in range(7):
        model = random_model(version=f"v{n}")
        paths[model.version] = save_model(model, settings.model_store_path)  # sets model.path
        registry.register(model)
    registry.activate("v0")
    registry.activate("v1")  # v0 becomes retained (a rollback target): live
    registry.set_state("v2", "retired")
    # staged: v3..v6 (v6 newest); retired: v2; keep the newest 2 of those five
    run = subprocess.run(
        [sys.executable, "-m", "ledrec.cli", "models", "prune", "--keep", "2"],
        env=settings_env(settings), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "pruned 3 version directories" in run.stdout
    gone = {v for v, p in paths.items() if not p.exists()}
    assert gone == {"v2", "v3", "v4"}
    assert registry.info("v3")["pruned_at"] > 0 and registry.info("v1")["state"] == "active"
