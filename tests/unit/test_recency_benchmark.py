"""The timeline weightings and targets of ``benchmarks/recency.py`` on hand-made users."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from benchmarks.recency import Group, Target, Weighting, per_user_metrics, target_last
from ledrec.training.evaluate import evaluate_scores, led_score_fn


def group(rows: list[list[tuple[int, float, float]]], n_items: int = 8) -> Group:
    """Users' (item, rating, order) events, already in order."""
    flat = [(u, i, r, t) for u, events in enumerate(rows) for i, r, t in events]
    u, i, r, t = (np.array(x) for x in zip(*flat, strict=True))
    return Group(u.astype(np.int64), i.astype(np.int64), r * 1.0, t * 1.0, len(rows), n_items)


def test_an_event_half_life_halves_the_weight_per_position_from_the_end() -> None:
    g = group([[(0, 5, 0), (1, 4, 0), (2, 5, 0)], [(3, 5, 0), (4, 5, 0)]])
    w = Weighting("h=1", half_life=1.0).weights(g, np.ones(5, dtype=bool))
    np.testing.assert_allclose(w, [0.25, 0.5, 1.0, 0.5, 1.0])


def test_a_time_half_life_counts_from_the_users_last_timeline_event() -> None:
    # the last event (t=40) is off the timeline: ages count from t=20
    g = group([[(0, 5, 0), (1, 3, 10), (2, 4, 20), (3, 5, 40)]])
    timeline = np.array([True, True, True, False])
    w = Weighting("h=10s", half_life=10.0, in_events=False, mid=0.5).weights(g, timeline)
    np.testing.assert_allclose(w, [0.25, 0.5 * 0.5, 1.0, 0.0])


def test_band_weights_drop_or_scale_ratings_below_four() -> None:
    g = group([[(0, 1, 0), (1, 2, 1), (2, 3, 2), (3, 4, 3)]])
    w = Weighting("bands", low=0.25, mid=0.0).weights(g, np.ones(4, dtype=bool))
    np.testing.assert_allclose(w, [0.25, 0.25, 0.0, 1.0])


def test_the_last_target_holds_out_the_last_fifth_of_clicks_and_cuts_the_timeline() -> None:
    # 10 clicks: the last 2 are held out; the rating-2 event after the first of them is
    # neither timeline nor target
    events = [(k, 5.0, float(k)) for k in range(8)]
    events += [(8, 4.0, 8.0), (9, 2.0, 9.0), (10, 5.0, 10.0)]
    g = group([events, [(0, 5, 0), (1, 5, 1)]], n_items=11)
    target = target_last(g)

    assert target.before.tolist() == [True] * 8 + [False] * 3 + [True, False]
    assert target.heldout[0].indices.tolist() == [8, 10]
    assert target.heldout[1].indices.tolist() == [1]  # 2 clicks: one to predict


def test_the_unweighted_mean_of_the_clicks_is_the_protocols_led_score() -> None:
    rng = np.random.default_rng(0)
    v = rng.standard_normal((30, 4)).astype(np.float32)
    b = rng.standard_normal(30).astype(np.float32)
    fold_in = sp.random(20, 30, density=0.3, random_state=1, format="csr", dtype=np.float32)
    fold_in.data[:] = 1.0
    heldout = sp.random(20, 30, density=0.1, random_state=2, format="csr", dtype=np.float32)
    heldout.data[:] = 1.0
    heldout = heldout - heldout.multiply(fold_in)
    heldout.eliminate_zeros()
    rows, cols = fold_in.nonzero()
    g = Group(rows.astype(np.int64), cols.astype(np.int64), np.full(len(rows), 5.0),
              np.zeros(len(rows)), 20, 30)  # fmt: skip
    target = Target(np.ones(len(rows), dtype=bool), heldout.tocsr())

    mine = per_user_metrics(g, target, Weighting("none"), v, b, seen_rated=False)
    expected = evaluate_scores(led_score_fn(v, b), fold_in, heldout)
    for name, value in expected.items():
        assert abs(float(np.nanmean(mine[name])) - value) < 1e-6
    decayed = per_user_metrics(g, target, Weighting("h=1", half_life=1.0), v, b)
    assert any(not np.allclose(decayed[k], mine[k], equal_nan=True) for k in mine)
