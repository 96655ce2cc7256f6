"""Time-aware evaluation: train on the past, predict each user's next clicks.

A streaming recommender is retrained on the event log up to now and then serves the
future, to users whose timelines it has seen grow. The **global time split**
(``time_split``, whose docstring is the exact definition) asks exactly that, with one
cutoff for everyone: a per-user leave-last-out split would train on other users' later
events, a future no retrainer has seen.

The split is a ``WeakSplit`` (every user trains; per-user targets), so the weak
protocol's runner scores it and its baselines (``run_weak_evaluate`` with
``time_metrics``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ledrec.training.dataset import binary_matrix
from ledrec.training.evaluate import METRICS, ScoreFn
from ledrec.training.formats import TimedEvents
from ledrec.training.weak_protocol import (
    WeakSplit,
    minus,
    ranked_hits,
    validation_users,
    weak_split,
)

DEFAULT_CUTOFF_QUANTILE = 0.8
VALIDATION_SHARE = 0.2


@dataclass
class TimeSplit:
    split: WeakSplit
    quantile: float
    cutoff: float  # the first time of the future
    cold_users: int  # users with a future click but no past click: not scored
    dropped_known: int  # future clicks on items the user met before the cutoff

    def counts(self) -> dict[str, Any]:
        return {
            "cutoff_quantile": self.quantile,
            "cutoff_ts": self.cutoff,
            "cutoff_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.cutoff)),
            "cold_users_not_scored": self.cold_users,
            "future_clicks_on_known_items_dropped": self.dropped_known,
        }

    def definition(self) -> str:
        """The protocol in one paragraph, with this split's figures (the reports' text)."""
        s = self.split
        outside = int(s.n_test.sum() - s.test.nnz)
        return (
            f"Global time split at the {self.quantile:.0%} quantile of event times "
            f"({self.counts()['cutoff_utc']} UTC): every model learns from the events before "
            f"it ({s.fit_clicks.nnz} clicks, {s.item_ids.shape[0]} items). "
            f"{int((s.n_test > 0).sum())} users with a click before it and a new click after "
            "it are scored: encoded from their clicks before the cutoff, ranking every item "
            f"but those they met before, against their {int(s.n_test.sum())} later clicks "
            f"({outside} on items first seen after the cutoff, counted as misses; "
            f"{self.dropped_known} later clicks on items met before, dropped). "
            f"{self.cold_users} users with later clicks but none before are cold start, not "
            "scored. Recall@k = hits / min(k, targets); NDCG@100 binary. Model selection: "
            f"{s.val_in.shape[0]} users lend their latest {VALIDATION_SHARE:.0%} of clicks "
            "before the cutoff."
        )


def _latest_share(
    rows: npt.NDArray[np.intp], cols: npt.NDArray[np.intp], ts: npt.NDArray[np.float64],
    n_items: int, share: float,
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:  # fmt: skip
    """The (row, col) pairs that are each row's latest ``share`` (at least one) of its
    distinct pairs, a pair dated by its first event."""
    key = rows.astype(np.int64) * n_items + cols
    order = np.lexsort((ts, key))
    first = np.ones(len(order), dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    pick = order[first]  # one event per pair: its earliest
    rows, cols, ts = rows[pick], cols[pick], ts[pick]
    order = np.lexsort((-ts, rows))  # each row's pairs, latest first
    rows, cols = rows[order], cols[order]
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    n_per_row = np.diff(np.r_[starts, len(rows)])
    rank = np.arange(len(rows)) - np.repeat(starts, n_per_row)
    n_out = np.maximum(np.floor(share * n_per_row + 1e-9).astype(np.int64), 1)
    lent = rank < np.repeat(n_out, n_per_row)
    return rows[lent], cols[lent]


def time_split(
    events: TimedEvents,
    quantile: float = DEFAULT_CUTOFF_QUANTILE,
    n_val: int | None = None,
    seed: int = 0,
    min_positives: int = 5,
) -> TimeSplit:
    """The global time split of ``events`` at the ``quantile`` of their times.

    - **Cutoff**: the ``quantile`` (default 0.8) of all event times; events strictly
      before it are the past, the others the future.
    - **Training**: every model learns from every user's past (views and clicks) only.
    - **Test users**: users with a click in the past and, in the future, a click on an
      item they had no past event for. Each is encoded from their past clicks (the
      fold-in timeline); every catalog item but those in their past is ranked; the
      targets are those future clicks. A target on an item with no past event (outside
      the training catalog) counts as a miss. Future clicks on items the user already
      met are dropped (never recommended, as online). Users without a past click are
      cold start (the popularity fallback online): counted, not scored.
    - **Metrics** (``time_metrics``): the strong protocol's, per test user, averaged:
      Recall@k = hits in the top k / min(k, targets), NDCG@100 with binary gains and the
      ideal DCG over min(100, targets) positions (targets outside the catalog included).
    - **Model selection** asks the same question just before the cutoff: ``n_val``
      seeded users (default: 600, or 10% of the users with >= ``min_positives`` past
      clicks) lend their latest 20% of past clicks (each dated by its first click; at
      least one) as validation targets; models fit on the rest of the past. At test time
      every user is encoded from all their past clicks.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"cutoff quantile {quantile:g}: must be strictly between 0 and 1")
    if len(events.ts) == 0:
        raise ValueError("no events to split")
    user_ids, rows = np.unique(events.users, return_inverse=True)
    item_ids, cols = np.unique(events.items, return_inverse=True)
    shape = (len(user_ids), len(item_ids))
    cutoff = float(np.quantile(events.ts, quantile))
    past = events.ts < cutoff
    past_click = past & events.is_click
    past_views = binary_matrix(rows[past], cols[past], shape)
    past_clicks = binary_matrix(rows[past_click], cols[past_click], shape)
    future = binary_matrix(rows[~past & events.is_click], cols[~past & events.is_click], shape)
    new = minus(future, past_views)  # an item the user already met is never ranked
    has_past = (np.diff(past_clicks.indptr) > 0).astype(np.float32)
    has_future = np.diff(new.indptr) > 0
    test = new.multiply(has_past[:, None]).tocsr()  # cold-start users are not scored

    chosen = validation_users(
        np.diff(past_clicks.indptr), min_positives, n_val, np.random.default_rng(seed),
        "clicks before the cutoff",
    )  # fmt: skip
    val_users = np.zeros(shape[0], dtype=bool)
    val_users[chosen] = True
    mine = past_click & val_users[rows]
    lent_rows, lent_cols = _latest_share(
        rows[mine], cols[mine], events.ts[mine], shape[1], VALIDATION_SHARE
    )
    lent = binary_matrix(lent_rows, lent_cols, shape)
    split = weak_split(
        user_ids.astype(str), item_ids.astype(str), minus(past_views, lent),
        minus(past_clicks, lent), test, valid=lent,
    )  # fmt: skip
    return TimeSplit(
        split=split,
        quantile=quantile,
        cutoff=cutoff,
        cold_users=int((has_future & (has_past == 0)).sum()),
        dropped_known=int(future.nnz - new.nnz),
    )


def time_metrics(score_fn: ScoreFn, split: WeakSplit) -> dict[str, float]:
    """{"recall@20", "recall@50", "ndcg@100"} over the users with a target (``time_split``)."""
    k_max = max(k for _, k in METRICS.values())
    discount = 1.0 / np.log2(np.arange(2, k_max + 2))  # (k_max,)
    ideal = np.concatenate([[0.0], np.cumsum(discount)])
    sums = dict.fromkeys(METRICS, 0.0)
    n = 0
    for hits, n_test in ranked_hits(score_fn, split, k_max):
        for name, (kind, k) in METRICS.items():
            top = hits[:, :k]
            if kind == "recall":
                sums[name] += float((top.sum(axis=1) / np.minimum(k, n_test)).sum())
            else:
                dcg = top @ discount[: top.shape[1]]
                sums[name] += float((dcg / ideal[np.minimum(n_test, k)]).sum())
        n += len(n_test)
    return {name: total / max(n, 1) for name, total in sums.items()}
