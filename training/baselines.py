"""Baselines behind the same score-function interface as LED: popularity and EASE.

EASE (Steck, WWW 2019): B = I - P / diag(P) with P = (X^T X + λI)^-1, diag(B) = 0;
scores = X_in · B. Dense I × I: a quality reference, not a model for large catalogs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.linalg
import scipy.sparse as sp

from ledrec.training.evaluate import ScoreFn, evaluate_scores

EASE_LAMBDAS = (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)


def popularity_score_fn(train_clicks: sp.csr_matrix) -> ScoreFn:
    """Everyone gets the items with the most training clicks."""
    counts = np.asarray(train_clicks.sum(axis=0), dtype=np.float32)  # (1, I)

    def score(inputs: sp.csr_matrix) -> npt.NDArray[np.float32]:
        return np.repeat(counts, inputs.shape[0], axis=0)  # (n, I)

    return score


def gram(train_clicks: sp.csr_matrix) -> npt.NDArray[np.float64]:
    """(I, I) dense X^T X."""
    return np.asarray((train_clicks.T @ train_clicks).toarray(), dtype=np.float64)


def ease_weights(gram_matrix: npt.NDArray[np.float64], lam: float) -> npt.NDArray[np.float32]:
    """(I, I) EASE item-item weights from the Gram matrix X^T X.

    Inverted in float32: 2.7x less CPU than float64 on ML-1M's 3,491 items, weights within
    3e-6 and the same validation metrics at every λ of the grid (NOTES.md, #16); the
    λ >= 50 ridge keeps the system well conditioned."""
    g = gram_matrix.astype(np.float32)  # a copy: the caller's matrix serves every λ
    g[np.diag_indices_from(g)] += lam
    p = scipy.linalg.inv(g, overwrite_a=True, check_finite=False)  # (I, I)
    weights: npt.NDArray[np.float32] = p / (-np.diag(p))  # column j divided by -P_jj
    weights[np.diag_indices_from(weights)] = 0.0
    return weights


def ease_score_fn(weights: npt.NDArray[np.float32]) -> ScoreFn:
    def score(inputs: sp.csr_matrix) -> npt.NDArray[np.float32]:
        return np.asarray(inputs.astype(np.float32) @ weights)  # (n, I)

    return score


@dataclass
class EaseFit:
    lam: float
    weights: npt.NDArray[np.float32]  # (I, I)
    val_metrics: dict[str, float]  # at the chosen λ
    by_lambda: dict[float, dict[str, float]]  # validation metrics for every λ tried


def tune_ease(
    train_clicks: sp.csr_matrix,
    val_in: sp.csr_matrix,
    val_out: sp.csr_matrix,
    lambdas: Sequence[float] = EASE_LAMBDAS,
) -> EaseFit:
    """Fit EASE for each λ and keep the one with the best validation NDCG@100."""
    g = gram(train_clicks)
    best: EaseFit | None = None
    by_lambda: dict[float, dict[str, float]] = {}
    for lam in lambdas:
        weights = ease_weights(g, lam)
        metrics = evaluate_scores(ease_score_fn(weights), val_in, val_out)
        by_lambda[lam] = metrics
        if best is None or metrics["ndcg@100"] > best.val_metrics["ndcg@100"]:
            best = EaseFit(lam, weights, metrics, by_lambda)
    if best is None:
        raise ValueError("no λ to try")
    return best
