"""Sampled validation: the protocol's metrics against a fixed sample of the catalog.

Scoring every item for every validation user costs O(users · I · d) per epoch. Instead,
each user's held-out items are ranked against a sample of ``n_negatives`` catalog items
drawn once, so every epoch is measured on the same candidates; the user's fold-in items
are excluded, as in the full protocol. At most ``max_users`` users are kept. A call costs
O(users · (S + held-out) · d), whatever the catalog size.

With fewer competitors the sampled metrics are higher than the full ones: they choose the
epoch (early stopping), they are not the figures to report. When the sample covers the
catalog, they are exactly ``evaluate_scores``'.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from ledrec.training.evaluate import METRICS, ndcg_per_user, recall_per_user

__all__ = ["ItemVectors", "SampledValidation"]

Array = npt.NDArray[np.floating]
ItemVectors = Callable[[npt.NDArray[np.intp]], tuple[Array, Array]]  # ids -> (v (n, d), b (n,))


@dataclass
class _Chunk:
    """Validation users of one chunk, over the R catalog items they need (local ids)."""

    items: npt.NDArray[np.intp]  # (R,) catalog ids: the sample, these users' fold-in, held-out
    inputs: sp.csr_matrix  # (b, R) row-normalised fold-in items: u = inputs @ V_R
    heldout: sp.csr_matrix  # (b, R) held-out items
    excluded: npt.NDArray[np.bool_]  # (b, R) not a candidate of that user (or a fold-in item)


class SampledValidation:
    """Recall@k / NDCG@k of ``METRICS`` on held-out users, ranking each user's held-out
    items among a fixed random sample of ``n_negatives`` catalog items (drawn with
    ``seed``), fold-in items excluded."""

    def __init__(
        self,
        inputs: sp.csr_matrix,
        heldout: sp.csr_matrix,
        n_negatives: int,
        max_users: int,
        seed: int = 0,
        batch_size: int = 1000,
    ) -> None:
        rng = np.random.default_rng(seed)
        n_users, n_items = inputs.shape
        users = np.arange(n_users)
        if n_users > max_users:
            users = np.sort(rng.choice(n_users, max_users, replace=False))
        if n_negatives >= n_items:
            sample = np.arange(n_items)
        else:
            sample = np.sort(rng.choice(n_items, n_negatives, replace=False))
        self.n_users, self.n_sampled = len(users), len(sample)
        inputs, heldout = inputs.tocsr()[users], heldout.tocsr()[users]
        self.chunks = [
            _chunk(inputs[s : s + batch_size], heldout[s : s + batch_size], sample)
            for s in range(0, len(users), batch_size)
        ]

    def __call__(self, item_vectors: ItemVectors) -> dict[str, float]:
        """The metrics of the model whose embeddings and biases ``item_vectors`` gives."""
        per_user: dict[str, list[npt.NDArray[np.float64]]] = {name: [] for name in METRICS}
        for chunk in self.chunks:
            vectors, biases = item_vectors(chunk.items)  # (R, d), (R,)
            users = np.asarray(chunk.inputs @ vectors, dtype=np.float32)  # (b, d)
            scores = np.array(users @ vectors.T + biases, dtype=np.float64)  # (b, R)
            scores[chunk.excluded] = -np.inf
            for name, (kind, k) in METRICS.items():
                fn = recall_per_user if kind == "recall" else ndcg_per_user
                per_user[name].append(fn(scores, chunk.heldout, k))
        return {name: float(np.nanmean(np.concatenate(v))) for name, v in per_user.items()}


def _chunk(inputs: sp.csr_matrix, heldout: sp.csr_matrix, sample: npt.NDArray[np.intp]) -> _Chunk:
    """The chunk's columns (sample ∪ its users' items) and which of them each user ranks."""
    items = np.unique(np.concatenate([sample, inputs.indices, heldout.indices]))
    local = np.searchsorted(items, sample)
    inputs, heldout = inputs[:, items], heldout[:, items]
    counts = np.asarray(inputs.sum(axis=1), dtype=np.float32).ravel()  # as led_score_fn
    weights = sp.csr_matrix(sp.diags(1.0 / np.maximum(counts, 1.0)) @ inputs)
    excluded = np.ones(heldout.shape, dtype=bool)
    excluded[:, local] = False
    excluded[heldout.nonzero()] = False  # a user's own held-out items always compete
    excluded[inputs.nonzero()] = True
    return _Chunk(items, weights, heldout.tocsr(), excluded)
