"""Model selection: of the models one training run produced (SVD-only with a tuned scale,
fine-tuned variants), publish the one with the best validation NDCG@100.

Fine-tuning does not always beat its own starting point: with a few hundred training users
an epoch is one optimizer step, and the SVD-only model can validate (and test) better. The
choice uses validation users only; test figures are recorded beside it, never consulted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

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
