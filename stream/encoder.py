"""The LED encoder: a user is the weighted average of the embeddings of their timeline.

    u = Σ_t w_t · v_{i_t} / Σ_t w_t        over the timeline items the model knows

Nothing is learned per user, so ``(Σ w·v, Σ w)`` — the *window sum* and its weight — is all
the state a user needs, and it can be kept up to date incrementally: add what enters the
window, subtract what falls off (``segment_sums``). Sums are float64 so that an
incremental sum stays the exact window sum up to rounding; the query is float32.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from ledrec.stream.artifact import Model

Vector = npt.NDArray[np.float64]


def window_sum(model: Model, timeline: Iterable[tuple[str, float]]) -> tuple[Vector, float]:
    """``(Σ w·v, Σ w)`` over the timeline's (item id, weight) pairs the model knows."""
    row_of = model.row_of
    rows: list[int] = []
    weights: list[float] = []
    for item, weight in timeline:
        row = row_of.get(item)
        if row is not None:
            rows.append(row)
            weights.append(weight)
    if not rows:
        return np.zeros(model.dim, dtype=np.float64), 0.0
    w = np.asarray(weights, dtype=np.float64)
    return w @ model.embeddings[rows].astype(np.float64), float(w.sum())


def user_vector(total: Vector | None, weight: float, dim: int) -> npt.NDArray[np.float32]:
    """``u = sum / weight`` (d,); zeros for a user with no known item (popularity fallback)."""
    if total is None or weight <= 0:
        return np.zeros(dim, dtype=np.float32)
    return (total / weight).astype(np.float32)


def segment_sums(
    model: Model,
    n: int,
    base: Sequence[int],
    base_sums: bytes,
    base_weights: Sequence[float],
    items: Sequence[str],
    signed_weights: Sequence[float],
    owner: Sequence[int],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """``n`` users' new ``(sum, weight)``, (n, d) and (n,), computed at once.

    User ``base[k]`` starts from a stored sum (row ``k`` of ``base_sums``, float64 bytes)
    and weight ``base_weights[k]``; the others from zero. Then every ``items[t]`` the model
    knows adds ``signed_weights[t] · v`` to user ``owner[t]`` (negative: fell off the
    window). ``owner`` is non-decreasing. One gather and one segmented sum; weights are
    clipped at 0 against rounding.
    """
    totals = np.zeros((n, model.dim), dtype=np.float64)
    weights = np.zeros(n, dtype=np.float64)
    if base:
        # one copy of the stored sums' bytes (np.stack costs µs per array)
        totals[base] = np.frombuffer(base_sums, dtype=np.float64).reshape(len(base), model.dim)
        weights[base] = base_weights
    if items:
        row_get = model.row_of.get
        rows = np.fromiter((row_get(i, -1) for i in items), dtype=np.int64, count=len(items))
        known = rows >= 0
        rows, w_all = rows[known], np.asarray(signed_weights, dtype=np.float64)[known]
        who = np.asarray(owner, dtype=np.int64)[known]
        if rows.size:
            terms = model.embeddings[rows].astype(np.float64)
            terms *= w_all[:, None]
            starts = np.flatnonzero(np.r_[True, who[1:] != who[:-1]])
            totals[who[starts]] += np.add.reduceat(terms, starts, axis=0)
            weights[who[starts]] += np.add.reduceat(w_all, starts)
    return totals, np.maximum(weights, 0.0)
