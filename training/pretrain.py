"""Pre-training (paper Algorithm 1, steps 1-2): item-item PMI from views, randomized SVD.

Everything is sparse: the co-occurrence matrix V^T V holds only item pairs that share a
viewer, so cost scales with its non-zeros, never with I^2.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from sklearn.utils.extmath import randomized_svd


def cooccurrence(views: sp.csr_matrix) -> sp.csr_matrix:
    """(I, I) number of users who viewed both items, zero diagonal."""
    x = (views > 0).astype(np.float32).tocsr()  # explicit zeros are not views
    counts = (x.T @ x).tocsr()  # (I, I)
    counts.setdiag(0)
    counts.eliminate_zeros()
    return counts


def pmi_matrix(views: sp.csr_matrix, min_count: int = 10, smoothing: float = 0.75) -> sp.csr_matrix:
    """(I, I) positive PMI of item co-occurrence in the users' views.

    ``PMI(i, j) = log(C_ij · Σ_k c_k^α / (c_i · c_j^α))`` with c the co-occurrence
    marginals and α = ``smoothing`` (context-distribution smoothing, Levy et al. 2015);
    negative values are dropped. Items viewed by fewer than ``min_count`` users get an
    all-zero row and column.
    """
    n_viewers = np.asarray((views > 0).sum(axis=0)).ravel()  # (I,) users per item
    keep = sp.diags((n_viewers >= min_count).astype(np.float32))
    counts = (keep @ cooccurrence(views) @ keep).tocsr()  # (I, I)
    counts.eliminate_zeros()
    marginal = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()  # (I,) c_i
    context = marginal**smoothing  # (I,) c_j^α
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    cols = counts.indices
    with np.errstate(divide="ignore"):
        pmi = np.log(counts.data * context.sum() / (marginal[rows] * context[cols]))
    out = sp.csr_matrix(
        (np.maximum(pmi, 0.0).astype(np.float32), cols, counts.indptr.copy()), shape=counts.shape
    )
    out.eliminate_zeros()
    return out


def svd_embeddings(
    pmi: sp.csr_matrix,
    dim: int,
    seed: int = 0,
    n_iter: int = 5,
    scale_by_singular_values: bool = False,
) -> npt.NDArray[np.float32]:
    """(I, dim) randomized SVD of a PMI matrix, rows L2-normalised.

    The embedding is the left singular vectors U (``scale_by_singular_values=False``, the
    default: it evaluated better on MovieLens-1M) or U·sqrt(S). Items with an empty PMI
    row (cut by ``min_count``, or never co-viewed) get a zero row; when I <= dim the extra
    columns are zero.
    """
    k = svd_rank(pmi.shape[0], dim)
    u, s, _ = randomized_svd(pmi, n_components=k, n_iter=n_iter, random_state=seed)
    return embeddings_from_svd(u, s, np.diff(pmi.indptr) > 0, dim, scale_by_singular_values)


def svd_rank(n_items: int, dim: int) -> int:
    """The number of singular vectors computed for ``dim``-dimensional embeddings."""
    return max(1, min(dim, n_items - 1))


def embeddings_from_svd(
    u: npt.NDArray[np.floating],
    s: npt.NDArray[np.floating],
    has_signal: npt.NDArray[np.bool_],
    dim: int,
    scale_by_singular_values: bool = False,
) -> npt.NDArray[np.float32]:
    """(I, dim) embeddings from the (I, k) left singular vectors ``u`` and the (k,) singular
    values ``s``: U or U·sqrt(S), zero-padded to ``dim``, zero where ``has_signal`` is
    False (an empty PMI row), rows L2-normalised. Shared by the numpy and Spark engines."""
    if scale_by_singular_values:
        u = u * np.sqrt(s)
    emb = np.zeros((u.shape[0], dim), dtype=np.float32)
    emb[:, : u.shape[1]] = u
    emb[~has_signal] = 0.0  # no PMI signal: no direction
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    normalised: npt.NDArray[np.float32] = emb / np.maximum(norms, 1e-12)
    return normalised


def pretrain_embeddings(
    views: sp.csr_matrix,
    dim: int,
    seed: int = 0,
    min_count: int = 10,
    smoothing: float = 0.75,
    n_iter: int = 5,
    scale_by_singular_values: bool = False,
) -> npt.NDArray[np.float32]:
    """(I, dim) pre-trained item embeddings: ``svd_embeddings(pmi_matrix(views))``."""
    pmi = pmi_matrix(views, min_count=min_count, smoothing=smoothing)
    return svd_embeddings(pmi, dim, seed, n_iter, scale_by_singular_values)


def popularity_biases(clicks: sp.csr_matrix) -> npt.NDArray[np.float32]:
    """(I,) log popularity: log of the add-one smoothed click share of each item."""
    counts = np.asarray(clicks.sum(axis=0), dtype=np.float64).ravel()  # (I,)
    biases: npt.NDArray[np.float32] = np.log((counts + 1.0) / (counts.sum() + len(counts)))
    return biases.astype(np.float32)
