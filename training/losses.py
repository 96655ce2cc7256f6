"""LED fine-tuning losses: each one a value and its gradient with respect to the scores.

Every loss sees the same batch layout:

- ``pos``   (P,)   score ``s(u, i)`` of each positive pair (user, target item);
- ``neg``   (B, N) score of each of the N negatives of each of the B users in the batch
  (shared by all the targets of a user);
- ``owner`` (P,)   row of ``neg`` (the user) each positive pair belongs to;
- ``valid`` (B, N) False where a negative must not count (e.g. it is one of the user's
  input items); every row has at least one valid negative.

The loss is the mean over positive pairs, so every pair weighs the same whatever the
length of its user's timeline. Only ``Mult`` expects ``neg`` to cover the whole catalog;
the sampled ones cost O(P·N) or O(P + B·N), independent of the catalog size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy import sparse

__all__ = ["BPR", "Loss", "Mult", "MultCSS", "NegativeSampling", "make_loss"]

Array = np.ndarray


class Loss(Protocol):
    """Mean loss over positive pairs, with dL/dpos (P,) and dL/dneg (B, N)."""

    def __call__(
        self, pos: Array, neg: Array, owner: Array, valid: Array
    ) -> tuple[float, Array, Array]: ...


def _softplus(x: Array) -> Array:
    """log(1 + e^x), stable for large |x|."""
    out: Array = np.logaddexp(0.0, x)
    return out


def _sigmoid(x: Array) -> Array:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _log_mean_exp(neg: Array, valid: Array) -> tuple[Array, Array]:
    """log((1/n_b) Σ_valid e^{s_n}) per user (B,), and its gradient: the masked softmax (B, N)."""
    shifted = np.where(valid, neg, -np.inf)
    top = shifted.max(axis=1, keepdims=True)  # (B, 1)
    weights = np.exp(shifted - top)  # (B, N), 0 where invalid
    total = weights.sum(axis=1, keepdims=True)
    n_valid = valid.sum(axis=1, keepdims=True)
    return (top + np.log(total / n_valid))[:, 0], weights / total


def _sum_per_user(owner: Array, values: Array, n_users: int) -> Array:
    """Σ over each user's pairs of ``values`` (P,) or (P, N) -> (B,) or (B, N)."""
    if values.ndim == 1:
        return np.bincount(owner, weights=values, minlength=n_users)
    rows = sparse.csr_matrix(
        (np.ones(len(owner)), (owner, np.arange(len(owner)))), shape=(n_users, len(owner))
    )
    return np.asarray(rows @ values)


@dataclass(frozen=True)
class BPR:
    """BPR: mean over pairs and valid negatives of -log σ(s_p - s_n). Cost O(P·N)."""

    def __call__(
        self, pos: Array, neg: Array, owner: Array, valid: Array
    ) -> tuple[float, Array, Array]:
        n_pairs = len(pos)
        weight = (valid / valid.sum(axis=1, keepdims=True)).astype(neg.dtype)  # (B, N): 1/n_b
        margin = pos[:, None] - neg[owner]  # (P, N)
        value = float(np.sum(_softplus(-margin) * weight[owner]) / n_pairs)
        dmargin = -_sigmoid(-margin) * weight[owner] / n_pairs  # (P, N)
        return value, dmargin.sum(axis=1), _sum_per_user(owner, -dmargin, len(neg))


@dataclass(frozen=True)
class NegativeSampling:
    """NS: -log σ(s_p) - mean_n log σ(-s_n), the negative term counted once per pair."""

    def __call__(
        self, pos: Array, neg: Array, owner: Array, valid: Array
    ) -> tuple[float, Array, Array]:
        n_pairs = len(pos)
        weight = valid / valid.sum(axis=1, keepdims=True)  # (B, N)
        weight = weight * np.bincount(owner, minlength=len(neg))[:, None] / n_pairs
        value = float(_softplus(-pos).sum() / n_pairs + np.sum(_softplus(neg) * weight))
        return value, -_sigmoid(-pos) / n_pairs, _sigmoid(neg) * weight


@dataclass(frozen=True)
class MultCSS:
    """Mult-CSS: -log softmax with the partition estimated from the negatives,

    Z = e^{s_p} + (I - 1)·mean_n e^{s_n},
    so loss = log(Z) - s_p = softplus(log(I - 1) + log mean_n e^{s_n} - s_p).
    """

    n_items: int

    def __call__(
        self, pos: Array, neg: Array, owner: Array, valid: Array
    ) -> tuple[float, Array, Array]:
        n_pairs = len(pos)
        log_mean, softmax = _log_mean_exp(neg, valid)  # (B,), (B, N)
        logit = np.log(self.n_items - 1) + log_mean[owner] - pos  # (P,)
        value = float(_softplus(logit).sum() / n_pairs)
        dlogit = _sigmoid(logit) / n_pairs  # (P,)
        per_user = _sum_per_user(owner, dlogit, len(neg))  # (B,)
        return value, -dlogit, per_user[:, None] * softmax


@dataclass(frozen=True)
class Mult:
    """Mult (full softmax): -s_p + log Σ_j e^{s_j}, ``neg`` holding every item (linear in I)."""

    def __call__(
        self, pos: Array, neg: Array, owner: Array, valid: Array
    ) -> tuple[float, Array, Array]:
        n_pairs = len(pos)
        log_mean, softmax = _log_mean_exp(neg, valid)
        log_partition = log_mean + np.log(valid.sum(axis=1))  # (B,)
        value = float((log_partition[owner] - pos).sum() / n_pairs)
        per_user = np.bincount(owner, minlength=len(neg)) / n_pairs  # (B,)
        return value, np.full(n_pairs, -1.0 / n_pairs), per_user[:, None] * softmax


def make_loss(name: str, n_items: int) -> Loss:
    """The loss called ``name`` ("bpr" | "ns" | "css" | "mult") for a catalog of ``n_items``."""
    losses: dict[str, Loss] = {
        "bpr": BPR(),
        "ns": NegativeSampling(),
        "css": MultCSS(n_items),
        "mult": Mult(),
    }
    if name not in losses:
        raise ValueError(f"unknown loss {name!r}, expected one of {sorted(losses)}")
    return losses[name]
