"""Item-kNN baseline: cosine item-item similarity, the top k neighbours of every item.

sim(i, j) = |users who clicked i and j| / sqrt(|clicked i| · |clicked j|); each item keeps
its k most similar items, and a user's score for j sums the similarities from the user's
items to j (``scores = X_in · S``). Similarities are computed a block of items at a time,
so memory is block × I plus I × k, never I² (it scales to catalogs EASE cannot hold).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from ledrec.training.evaluate import ScoreFn, evaluate_scores

KNN_KS = (10, 20, 50, 100, 200)
_BLOCK_CELLS = 20_000_000  # dense (block, I) float32 similarities at a time: 80 MB


@dataclass
class Neighbours:
    """Each item's most similar items, most similar first."""

    items: npt.NDArray[np.int64]  # (I, k_max)
    similarities: npt.NDArray[np.float32]  # (I, k_max), 0 where there are fewer neighbours

    def matrix(self, k: int) -> sp.csr_matrix:
        """(I, I) S with S[i, j] = sim(i, j) for the k nearest neighbours j of i."""
        n_items = self.items.shape[0]
        k = min(k, self.items.shape[1])
        rows = np.repeat(np.arange(n_items), k)
        s = sp.csr_matrix(
            (self.similarities[:, :k].ravel(), (rows, self.items[:, :k].ravel())),
            shape=(n_items, n_items),
            dtype=np.float32,
        )
        s.eliminate_zeros()
        return s


def cosine_neighbours(clicks: sp.csr_matrix, k: int) -> Neighbours:
    """The ``k`` most cosine-similar items of every item (itself excluded)."""
    x = (clicks > 0).astype(np.float32).tocsr()  # (U, I)
    xt = x.T.tocsr()  # (I, U)
    n_items = x.shape[1]
    k = max(1, min(k, n_items - 1))
    norms = np.sqrt(np.asarray(x.sum(axis=0), dtype=np.float64).ravel()).astype(np.float32)
    inv = np.where(norms > 0, 1.0 / np.maximum(norms, 1e-12), 0.0).astype(np.float32)
    items = np.zeros((n_items, k), dtype=np.int64)
    sims = np.zeros((n_items, k), dtype=np.float32)
    block = max(1, _BLOCK_CELLS // max(n_items, 1))
    for start in range(0, n_items, block):
        rows = np.arange(start, min(start + block, n_items))
        co = np.asarray((xt[rows] @ x).toarray(), dtype=np.float32)  # (b, I) co-clicks
        co *= inv[rows][:, None] * inv[None, :]
        co[np.arange(len(rows)), rows] = 0.0  # not its own neighbour
        top = np.argpartition(-co, k - 1, axis=1)[:, :k]
        top_sims = np.take_along_axis(co, top, axis=1)
        order = np.argsort(-top_sims, axis=1, kind="stable")
        items[rows] = np.take_along_axis(top, order, axis=1)
        sims[rows] = np.take_along_axis(top_sims, order, axis=1)
    return Neighbours(items, sims)


def knn_score_fn(similarity: sp.csr_matrix) -> ScoreFn:
    def score(inputs: sp.csr_matrix) -> npt.NDArray[np.float32]:
        return np.asarray((inputs.astype(np.float32) @ similarity).toarray())  # (n, I)

    return score


@dataclass
class KnnFit:
    k: int
    similarity: sp.csr_matrix  # (I, I), k non-zeros per row at most
    val_metrics: dict[str, float]
    by_k: dict[int, dict[str, float]]  # validation metrics for every k tried

    @property
    def score_fn(self) -> ScoreFn:
        return knn_score_fn(self.similarity)


def tune_item_knn(
    train_clicks: sp.csr_matrix,
    val_in: sp.csr_matrix,
    val_out: sp.csr_matrix,
    ks: Sequence[int] = KNN_KS,
) -> KnnFit:
    """Neighbours once for the largest k; keep the k with the best validation NDCG@100."""
    neighbours = cosine_neighbours(train_clicks, max(ks))
    best: KnnFit | None = None
    by_k: dict[int, dict[str, float]] = {}
    for k in sorted(ks):
        similarity = neighbours.matrix(k)
        metrics = evaluate_scores(knn_score_fn(similarity), val_in, val_out)
        by_k[k] = metrics
        if best is None or metrics["ndcg@100"] > best.val_metrics["ndcg@100"]:
            best = KnnFit(k, similarity, metrics, by_k)
    if best is None:
        raise ValueError("no k to try")
    return best
