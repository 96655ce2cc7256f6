"""Ranking metrics of the Mult-VAE protocol: Recall@k and NDCG@k on held-out items.

Recall@k = hits in the top k / min(k, #held-out); NDCG@k uses binary relevance and is
normalised by the ideal DCG. Users with no held-out item are skipped (their metrics are
undefined). Callers of the metric functions set fold-in items to -inf themselves;
``evaluate_scores`` does it for them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

ScoreFn = Callable[[sp.csr_matrix], npt.NDArray[np.floating]]  # (n, I) inputs → (n, I) scores

METRICS = {"recall@20": ("recall", 20), "recall@50": ("recall", 50), "ndcg@100": ("ndcg", 100)}
SCORES_PER_BATCH = 1 << 24  # a batch of users holds at most this many scores (128 MB float64)


def _top_k(scores: npt.NDArray[np.floating], k: int) -> npt.NDArray[np.intp]:
    """(n, I) → (n, k) item indices, best first."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _hits(
    scores: npt.NDArray[np.floating], heldout: sp.csr_matrix, k: int
) -> npt.NDArray[np.bool_]:
    """(n, k) True where the rank-r recommendation is a held-out item."""
    top = _top_k(scores, k)
    rows = np.repeat(np.arange(top.shape[0]), top.shape[1])
    return np.asarray(heldout[rows, top.ravel()] > 0).reshape(top.shape)


def recall_per_user(
    scores: npt.NDArray[np.floating], heldout: sp.csr_matrix, k: int
) -> npt.NDArray[np.float64]:
    """(n,) Recall@k per user, NaN for users with nothing held out."""
    n_true = np.diff(heldout.tocsr().indptr)
    hits = _hits(scores, heldout.tocsr(), k).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_true > 0, hits / np.minimum(k, n_true), np.nan)


def ndcg_per_user(
    scores: npt.NDArray[np.floating], heldout: sp.csr_matrix, k: int
) -> npt.NDArray[np.float64]:
    """(n,) NDCG@k per user, NaN for users with nothing held out."""
    n_true = np.diff(heldout.tocsr().indptr)
    hits = _hits(scores, heldout.tocsr(), k)
    discount = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))  # (k,)
    dcg = hits @ discount
    ideal = np.concatenate([[0.0], np.cumsum(discount)])[np.minimum(n_true, hits.shape[1])]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_true > 0, dcg / ideal, np.nan)


def recall_at_k(scores: npt.NDArray[np.floating], heldout: sp.csr_matrix, k: int) -> float:
    """Mean Recall@k; ``scores`` (n, I) with fold-in items already set to -inf."""
    return float(np.nanmean(recall_per_user(scores, heldout, k)))


def ndcg_at_k(scores: npt.NDArray[np.floating], heldout: sp.csr_matrix, k: int) -> float:
    """Mean NDCG@k (binary relevance); ``scores`` (n, I) with fold-in items at -inf."""
    return float(np.nanmean(ndcg_per_user(scores, heldout, k)))


def evaluate_scores(
    score_fn: ScoreFn, inputs: sp.csr_matrix, heldout: sp.csr_matrix, batch_size: int = 1000
) -> dict[str, float]:
    """{"recall@20", "recall@50", "ndcg@100"} of ``score_fn`` on held-out users.

    ``inputs`` (n, I) are the fold-in items: fed to ``score_fn`` and excluded from the
    ranking. Users are scored in batches of at most ``batch_size`` and of at most
    ``SCORES_PER_BATCH`` scores, so memory stays bounded whatever the catalog size.
    """
    inputs, heldout = inputs.tocsr(), heldout.tocsr()
    batch_size = max(1, min(batch_size, SCORES_PER_BATCH // max(1, inputs.shape[1])))
    per_user: dict[str, list[npt.NDArray[np.float64]]] = {name: [] for name in METRICS}
    for start in range(0, inputs.shape[0], batch_size):
        batch_in = inputs[start : start + batch_size]
        batch_out = heldout[start : start + batch_size]
        scores = np.array(score_fn(batch_in), dtype=np.float64)  # (b, I), a private copy
        scores[batch_in.nonzero()] = -np.inf
        for name, (kind, k) in METRICS.items():
            fn = recall_per_user if kind == "recall" else ndcg_per_user
            per_user[name].append(fn(scores, batch_out, k))
    return {name: float(np.nanmean(np.concatenate(v))) for name, v in per_user.items()}


def led_score_fn(embeddings: npt.NDArray[np.floating], biases: npt.NDArray[np.floating]) -> ScoreFn:
    """LED's encoder-decoder: u = mean of the input items' embeddings; s = u · V^T + b."""
    v = np.asarray(embeddings, dtype=np.float32)  # (I, d)
    b = np.asarray(biases, dtype=np.float32)  # (I,)

    def score(inputs: sp.csr_matrix) -> npt.NDArray[np.float32]:
        counts = np.asarray(inputs.sum(axis=1), dtype=np.float32).ravel()  # (n,)
        weights = sp.diags(1.0 / np.maximum(counts, 1.0)) @ inputs  # row-normalised
        u = np.asarray(weights @ v, dtype=np.float32)  # (n, d); zero for empty timelines
        return u @ v.T + b  # (n, I)

    return score
