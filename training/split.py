"""Strong-generalization split (Liang et al., Mult-VAE, WWW 2018).

Held-out users (validation and test) are never seen in training. Each held-out user's
clicks are split at random into a fold-in part (the encoder's input) and a part to
predict. Items without a training click are dropped from every matrix.

Encoder input for held-out users is their fold-in *clicks*: the protocol has no views for
them. LED's online timeline is views + clicks; evaluating on clicks keeps the numbers
comparable with the paper's Table 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from ledrec.training.dataset import Interactions, binary_matrix


@dataclass
class Split:
    item_ids: npt.NDArray[np.str_]  # (I,) items kept (present in training clicks)
    train_views: sp.csr_matrix  # (U_train, I)
    train_clicks: sp.csr_matrix  # (U_train, I)
    val_in: sp.csr_matrix  # (n_val, I) fold-in clicks
    val_out: sp.csr_matrix  # (n_val, I) held-out clicks to predict
    test_in: sp.csr_matrix  # (n_test, I)
    test_out: sp.csr_matrix  # (n_test, I)
    train_users: npt.NDArray[np.int64] | None = None  # rows of the source Interactions
    val_users: npt.NDArray[np.int64] | None = None
    test_users: npt.NDArray[np.int64] | None = None


def fold_in_split(
    clicks: sp.csr_matrix, fold_in: float, rng: np.random.Generator
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Split each row's items at random: ``floor((1 - fold_in) * n)`` (at least 1 when
    n >= 2) to predict, the rest as fold-in."""
    clicks = clicks.tocsr()
    clicks.sort_indices()
    n_per_row = np.diff(clicks.indptr)
    rows = np.repeat(np.arange(clicks.shape[0]), n_per_row)
    # rank of each entry within its row under a random order
    keys = rng.random(len(rows))
    order = np.lexsort((keys, rows))
    rank = np.empty(len(rows), dtype=np.int64)
    rank[order] = np.arange(len(rows)) - np.repeat(clicks.indptr[:-1], n_per_row)
    n_out = np.floor((1.0 - fold_in) * n_per_row + 1e-9).astype(np.int64)
    n_out = np.where(n_per_row >= 2, np.maximum(n_out, 1), 0)
    is_out = rank < np.repeat(n_out, n_per_row)
    cols = clicks.indices
    return (
        binary_matrix(rows[~is_out], cols[~is_out], clicks.shape),
        binary_matrix(rows[is_out], cols[is_out], clicks.shape),
    )


DEFAULT_N_HELDOUT = 600  # the Mult-VAE protocol's figure on MovieLens-1M


def eligible_users(data: Interactions, min_positives: int = 5) -> int:
    """How many users have enough clicks to be held out."""
    return int((np.diff(data.clicks.indptr) >= min_positives).sum())


def default_n_heldout(data: Interactions, min_positives: int = 5) -> int:
    """Validation (and test) users when none is asked for: the protocol's 600, or 10% of
    the eligible users on smaller data, so that at least 80% of the users still train."""
    return max(1, min(DEFAULT_N_HELDOUT, eligible_users(data, min_positives) // 10))


def strong_generalization_split(
    data: Interactions,
    n_heldout: int = 600,
    seed: int = 0,
    min_positives: int = 5,
    fold_in: float = 0.8,
) -> Split:
    """Split ``data`` by user: ``n_heldout`` validation and ``n_heldout`` test users.

    Held-out users are drawn with ``seed`` among users with at least ``min_positives``
    clicks (the protocol's filter); every other user is a training user, so the views of
    users with few clicks still feed the PMI (on MovieLens-1M this adds 6 users to the
    protocol's training set). Items with no training click are dropped everywhere.
    """
    n_clicks = np.diff(data.clicks.indptr)
    eligible = np.flatnonzero(n_clicks >= min_positives)
    if len(eligible) <= 2 * n_heldout:
        raise ValueError(
            f"{len(eligible)} users with >= {min_positives} clicks: too few to hold out "
            f"2 x {n_heldout}"
        )
    rng = np.random.default_rng(seed)
    users = rng.permutation(eligible)
    val_users = np.sort(users[:n_heldout])
    test_users = np.sort(users[n_heldout : 2 * n_heldout])
    heldout = np.zeros(data.n_users, dtype=bool)
    heldout[users[: 2 * n_heldout]] = True
    train_users = np.flatnonzero(~heldout)

    train_clicks = data.clicks[train_users]
    items = np.flatnonzero(np.asarray(train_clicks.sum(axis=0)).ravel() > 0)
    train_views = data.views[train_users][:, items]
    # a click is a view: make sure kept clicks are in the views even if the source forgot
    train_views = ((train_views + train_clicks[:, items]) > 0).astype(np.float32).tocsr()
    val_in, val_out = fold_in_split(data.clicks[val_users][:, items], fold_in, rng)
    test_in, test_out = fold_in_split(data.clicks[test_users][:, items], fold_in, rng)
    return Split(
        item_ids=data.item_ids[items],
        train_views=train_views,
        train_clicks=train_clicks[:, items].tocsr(),
        val_in=val_in,
        val_out=val_out,
        test_in=test_in,
        test_out=test_out,
        train_users=train_users.astype(np.int64),
        val_users=val_users.astype(np.int64),
        test_users=test_users.astype(np.int64),
    )
