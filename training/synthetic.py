"""Seeded synthetic interaction data for the demo and the scale benchmarks.

Items have power-law popularity (the rank-r item is viewed ∝ r^-a) and belong to one
of a few latent taste clusters. Each user has a cluster: a view comes from it with
probability ``taste`` (sampled by popularity within the cluster), otherwise from the
whole catalog. Views then go down a funnel: a view becomes a click (more often inside
the user's taste), a click becomes a sale. Vectorised: 10^7 events in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ledrec.training.dataset import Interactions, from_arrays
from ledrec.training.formats import TimedEvents

EVENT_TYPES = ("view", "click", "sale")  # index = code in SyntheticEvents.kind


@dataclass(frozen=True)
class SyntheticConfig:
    n_users: int = 10_000
    n_items: int = 2_000
    n_events: int = 200_000  # target total of views + clicks + sales (approximate)
    n_clusters: int = 20
    zipf_exponent: float = 1.0  # popularity of the rank-r item ∝ r^-a
    taste: float = 0.8  # probability that a view comes from the user's cluster
    click_in_taste: float = 0.3  # P(click | view) inside the user's cluster
    click_off_taste: float = 0.05  # P(click | view) outside it
    sale_rate: float = 0.1  # P(sale | click)
    activity_sigma: float = 1.0  # log-normal spread of views per user
    start_ts: float = 1.7e9
    span_seconds: float = 30 * 86400.0
    seed: int = 0


@dataclass
class SyntheticEvents:
    user: npt.NDArray[np.int64]  # (E,) user row
    item: npt.NDArray[np.int64]  # (E,) item row
    kind: npt.NDArray[np.int8]  # (E,) index into EVENT_TYPES
    ts: npt.NDArray[np.float64]  # (E,) epoch seconds, non-decreasing
    user_cluster: npt.NDArray[np.int64]  # (U,) ground-truth taste of each user
    item_cluster: npt.NDArray[np.int64]  # (I,) cluster of each item

    def __len__(self) -> int:
        return int(self.user.shape[0])


def _views_per_user(config: SyntheticConfig, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """(U,) views per user, each >= 1, log-normal activity, summing to the view budget."""
    click_rate = config.taste * config.click_in_taste + (1 - config.taste) * config.click_off_taste
    n_views = max(
        config.n_users, round(config.n_events / (1 + click_rate * (1 + config.sale_rate)))
    )
    activity = rng.lognormal(0.0, config.activity_sigma, config.n_users)
    extra = rng.multinomial(n_views - config.n_users, activity / activity.sum())
    return (extra + 1).astype(np.int64)


def generate(config: SyntheticConfig) -> SyntheticEvents:
    """All events of the configured world, ordered by time (deterministic in ``seed``)."""
    rng = np.random.default_rng(config.seed)
    n_items, n_clusters = config.n_items, config.n_clusters
    popularity = (np.arange(1, n_items + 1, dtype=np.float64) ** -config.zipf_exponent)[
        rng.permutation(n_items)
    ]  # (I,)
    item_cluster = rng.integers(n_clusters, size=n_items)  # (I,)

    # cdf[k] of the k-th item in cluster order lies in (c, c + 1] for its cluster c, so
    # one searchsorted samples every view from its own cluster by popularity
    by_cluster = np.argsort(item_cluster, kind="stable")  # (I,)
    sorted_cluster = item_cluster[by_cluster]
    cluster_start = np.searchsorted(sorted_cluster, np.arange(n_clusters + 1))  # (C+1,)
    total = np.bincount(item_cluster, weights=popularity, minlength=n_clusters)  # (C,)
    before = (np.cumsum(total) - total)[sorted_cluster]  # popularity of earlier clusters
    cdf_in = sorted_cluster + (np.cumsum(popularity[by_cluster]) - before) / total[sorted_cluster]
    cdf_all = np.cumsum(popularity) / popularity.sum()

    counts = _views_per_user(config, rng)
    nonempty = np.flatnonzero(np.diff(cluster_start) > 0)
    user_cluster = rng.choice(nonempty, size=config.n_users)  # (U,)
    user = np.repeat(np.arange(config.n_users, dtype=np.int64), counts)  # (V,)
    n_views = len(user)
    in_taste = rng.random(n_views) < config.taste
    cluster = user_cluster[user]
    pos = np.searchsorted(cdf_in, cluster + rng.random(n_views), side="right")
    pos = np.clip(pos, cluster_start[cluster], cluster_start[cluster + 1] - 1)
    global_pick = np.minimum(
        np.searchsorted(cdf_all, rng.random(n_views), side="right"), n_items - 1
    )
    item = np.where(in_taste, by_cluster[pos], global_pick).astype(np.int64)
    ts = config.start_ts + rng.random(n_views) * config.span_seconds

    clicked = rng.random(n_views) < np.where(
        in_taste, config.click_in_taste, config.click_off_taste
    )
    sold = clicked & (rng.random(n_views) < config.sale_rate)
    click_ts = ts[clicked] + rng.exponential(60.0, int(clicked.sum()))
    sale_ts = ts[sold] + rng.exponential(600.0, int(sold.sum()))
    all_ts = np.concatenate([ts, click_ts, np.maximum(sale_ts, ts[sold])])
    order = np.argsort(all_ts, kind="stable")
    kind = np.concatenate(
        [
            np.zeros(n_views, np.int8),
            np.ones(len(click_ts), np.int8),
            np.full(len(sale_ts), 2, np.int8),
        ]
    )
    return SyntheticEvents(
        user=np.concatenate([user, user[clicked], user[sold]])[order],
        item=np.concatenate([item, item[clicked], item[sold]])[order],
        kind=kind[order],
        ts=all_ts[order],
        user_cluster=user_cluster.astype(np.int64),
        item_cluster=item_cluster.astype(np.int64),
    )


def user_id(row: npt.NDArray[np.int64]) -> npt.NDArray[np.str_]:
    return np.char.add("u", row.astype(str))


def item_id(row: npt.NDArray[np.int64]) -> npt.NDArray[np.str_]:
    return np.char.add("i", row.astype(str))


def iter_events(
    config: SyntheticConfig, chunk: int = 100_000
) -> Iterator[tuple[str, str, str, float]]:
    """(user_id, item_id, type, ts) events in time order."""
    events = generate(config)
    for start in range(0, len(events), chunk):
        sl = slice(start, start + chunk)
        users = user_id(events.user[sl]).tolist()
        items = item_id(events.item[sl]).tolist()
        kinds = [EVENT_TYPES[k] for k in events.kind[sl].tolist()]
        yield from zip(users, items, kinds, events.ts[sl].tolist(), strict=True)


def synthetic_interactions(config: SyntheticConfig) -> Interactions:
    """The configured world as Interactions, without going through strings per event.

    Same ids as ``iter_events`` (``u<row>``, ``i<row>``); a click or a sale is a click.
    """
    events = generate(config)
    data = from_arrays(events.user, events.item, events.kind == 0, events.kind >= 1)
    data.user_ids = user_id(data.user_ids.astype(np.int64))
    data.item_ids = item_id(data.item_ids.astype(np.int64))
    return data


def synthetic_timed_events(config: SyntheticConfig) -> TimedEvents:
    """The configured world's events with their times (ids as ``iter_events``); a click or
    a sale is a click."""
    events = generate(config)
    return TimedEvents(user_id(events.user), item_id(events.item), events.kind >= 1, events.ts)
