"""A like-for-like quality gate: the candidate and the active version are scored on the
same validation users (the candidate's), so a candidate identical to the active model
passes whatever data it came with, and a worse one on the same users is refused."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import redis

from ledrec.settings import Settings
from ledrec.stream.artifact import Model, load_model, save_model
from ledrec.stream.registry import Registry, RegistryError
from ledrec.training.dataset import Interactions, from_events
from ledrec.training.jobs import PretrainConfig, TrainConfig, baseline_metrics, run_train
from ledrec.training.split import strong_generalization_split
from ledrec.training.synthetic import SyntheticConfig, iter_events

pytestmark = pytest.mark.contract
CONFIG = TrainConfig(pretrain=PretrainConfig(dim=16, min_count=2), finetune=None, n_heldout=150)


def _data(seed: int, click_in_taste: float) -> Interactions:
    world = SyntheticConfig(1500, 200, 40_000, click_in_taste=click_in_taste, seed=seed)
    return from_events((u, i, k) for u, i, k, _ in iter_events(world))


def _candidate(
    store: Path, like: Model, gate_data: Interactions, embeddings: np.ndarray | None = None
) -> Model:
    """A version with ``like``'s arrays (or ``embeddings``), gated on ``gate_data``."""
    model = replace(like, version="", path=None, parent=like.version)
    if embeddings is not None:
        model = replace(model, embeddings=embeddings)
    split = strong_generalization_split(gate_data, n_heldout=CONFIG.n_heldout, seed=1)
    mine = baseline_metrics(model, split)
    model.metrics = dict(mine)
    model.provenance = {
        "gate": {"active_version": like.version, "active": baseline_metrics(like, split),
                 "candidate": mine}
    }  # fmt: skip
    save_model(model, store)
    return model


def test_identical_passes_and_worse_on_the_same_users_is_refused(
    settings: Settings, redis_client: redis.Redis
) -> None:
    store = settings.model_store_path
    active = load_model(run_train(_data(1, 0.8), store, CONFIG))  # easy data: high metrics
    registry = Registry(redis_client, settings.key_prefix)
    registry.register(active)
    registry.activate(active.version)
    harder = _data(2, 0.4)  # other users, noisier clicks: every model scores lower there
    gates = ["ndcg@100", "recall@20"]

    same = _candidate(store, active, harder)
    registry.register(same)
    assert same.metrics["ndcg@100"] < active.metrics["ndcg@100"]  # the unlike comparison
    registry.check_gate(same.version, gates)  # like for like: equal, so it passes

    rng = np.random.default_rng(0)
    shuffled = active.embeddings[rng.permutation(active.n_items)]
    worse = _candidate(store, active, harder, embeddings=shuffled)
    registry.register(worse)
    with pytest.raises(RegistryError, match="quality gate"):
        registry.check_gate(worse.version, gates)


def test_the_trainer_gates_against_the_active_version_on_its_own_users(
    settings: Settings, redis_client: redis.Redis
) -> None:
    store = settings.model_store_path
    active = load_model(run_train(_data(1, 0.8), store, CONFIG))
    candidate = load_model(run_train(_data(2, 0.4), store, CONFIG, baseline=active))
    gate = candidate.provenance["gate"]
    assert gate["active_version"] == active.version
    assert gate["candidate"] == {k: candidate.metrics[k] for k in gate["candidate"]}
    assert set(gate["active"]) == set(gate["candidate"])
