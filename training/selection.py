"""Model selection: of the models one training run produced (SVD-only with a tuned scale,
fine-tuned variants), publish the one with the best validation NDCG@100.

Fine-tuning does not always beat its own starting point: with a few hundred training users
an epoch is one optimizer step, and the SVD-only model can validate (and test) better. The
choice uses validation users only; test figures are recorded beside it, never consulted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from ledrec.training.finetune import FinetuneConfig

Array = npt.NDArray[np.float32]

SELECTION_METRIC = "ndcg@100"


@dataclass
class Candidate:
    """One trained model, scored on the validation users."""

    name: str  # "svd_only" or "<loss>/<variant>/<init>" for a fine-tuned one
    embeddings: Array
    biases: Array
    val_metrics: dict[str, float]
    detail: dict[str, Any] = field(default_factory=dict)  # e.g. the SVD scale, epochs run


def choose(candidates: Sequence[Candidate], metric: str = SELECTION_METRIC) -> Candidate:
    """The best ``metric`` on validation; a tie keeps the earlier (simpler) candidate."""
    if not candidates:
        raise ValueError("no candidate to choose from")
    best = candidates[0]
    for candidate in candidates[1:]:
        if candidate.val_metrics[metric] > best.val_metrics[metric]:
            best = candidate
    return best


def reason(chosen: Candidate, candidates: Sequence[Candidate], metric: str) -> str:
    """One line: the chosen candidate's figure against every other's."""
    others = [c for c in candidates if c is not chosen]
    if not others:
        return f"the only candidate (validation {metric} {chosen.val_metrics[metric]:.4f})"
    against = ", ".join(f"{c.name} {c.val_metrics[metric]:.4f}" for c in others)
    return f"best validation {metric}: {chosen.val_metrics[metric]:.4f} vs {against}"


def selection_record(
    chosen: Candidate,
    candidates: Sequence[Candidate],
    test: dict[str, dict[str, float]],
    metric: str = SELECTION_METRIC,
) -> dict[str, Any]:
    """The manifest's ``provenance["selection"]``: what was chosen, on what, and why; each
    candidate's validation figures (``test``: reported only, not used to choose)."""
    return {
        "metric": metric,
        "on": "validation users",
        "chosen": chosen.name,
        "reason": reason(chosen, candidates, metric),
        "candidates": {
            c.name: {
                "validation": {k: float(v) for k, v in c.val_metrics.items()},
                "test": {k: float(v) for k, v in test.get(c.name, {}).items()},
                **c.detail,
            }
            for c in candidates
        },
    }


# ML-1M's default schedule in optimizer steps: ~4,840 training users / batch 512 = 10 steps
# an epoch, 40 epochs. Below that, an epoch of a small dataset is one step.
DEFAULT_MIN_STEPS = 400


def step_floor(config: FinetuneConfig, n_train_users: int, min_steps: int) -> FinetuneConfig:
    """``config`` with epochs and patience scaled by one factor so that training may take at
    least ``min_steps`` optimizer steps (and stops after as many stale steps as it would at
    that size); unchanged when it already does."""
    steps_per_epoch = max(1, math.ceil(n_train_users / config.batch_size))
    factor = math.ceil(min_steps / (config.epochs * steps_per_epoch))
    if factor <= 1:
        return config
    return replace(config, epochs=config.epochs * factor, patience=config.patience * factor)
