import numpy as np

from ledrec.training.synthetic import (
    EVENT_TYPES,
    SyntheticConfig,
    generate,
    iter_events,
    synthetic_interactions,
)

SMALL = SyntheticConfig(n_users=2_000, n_items=500, n_events=40_000, seed=5)


def test_deterministic_in_seed() -> None:
    a, b = generate(SMALL), generate(SMALL)
    for field in ("user", "item", "kind", "ts"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    c = generate(SyntheticConfig(n_users=2_000, n_items=500, n_events=40_000, seed=6))
    assert not np.array_equal(a.item[:100], c.item[:100])


def test_sizes_order_and_funnel() -> None:
    e = generate(SMALL)
    assert abs(len(e) - SMALL.n_events) < 0.05 * SMALL.n_events
    assert (np.diff(e.ts) >= 0).all()
    counts = np.bincount(e.kind, minlength=3)
    assert counts[0] > counts[1] > counts[2] > 0
    # every click and sale follows a view of the same (user, item)
    viewed = set(zip(e.user[e.kind == 0].tolist(), e.item[e.kind == 0].tolist(), strict=True))
    clicked = zip(e.user[e.kind >= 1].tolist(), e.item[e.kind >= 1].tolist(), strict=True)
    assert all(pair in viewed for pair in clicked)


def test_power_law_popularity() -> None:
    config = SyntheticConfig(n_users=20_000, n_items=5_000, n_events=400_000, zipf_exponent=1.0)
    e = generate(config)
    counts = np.sort(np.bincount(e.item[e.kind == 0], minlength=config.n_items))[::-1]
    ranks = np.arange(1, len(counts) + 1)
    sel = (ranks >= 5) & (ranks <= 500)
    slope = np.polyfit(np.log(ranks[sel]), np.log(counts[sel]), 1)[0]
    assert -1.25 < slope < -0.75


def test_views_follow_the_users_taste() -> None:
    e = generate(SMALL)
    views = e.kind == 0
    in_taste = e.item_cluster[e.item[views]] == e.user_cluster[e.user[views]]
    # taste share from the user's cluster, plus chance hits of the global draws
    assert SMALL.taste < in_taste.mean() < SMALL.taste + 0.1
    clicks = e.kind == 1
    click_in_taste = e.item_cluster[e.item[clicks]] == e.user_cluster[e.user[clicks]]
    assert click_in_taste.mean() > in_taste.mean()  # the funnel favours the user's taste


def test_interactions_ids_match_events() -> None:
    config = SyntheticConfig(n_users=50, n_items=30, n_events=500, seed=2)
    data = synthetic_interactions(config)
    events = list(iter_events(config, chunk=64))
    assert len(events) == len(generate(config))
    assert {u for u, _, _, _ in events} == set(data.user_ids.tolist())
    assert {t for _, _, t, _ in events} <= set(EVENT_TYPES)
    clicked = {(u, i) for u, i, t, _ in events if t != "view"}
    rows = {u: r for r, u in enumerate(data.user_ids.tolist())}
    cols = {i: c for c, i in enumerate(data.item_ids.tolist())}
    assert data.clicks.nnz == len(clicked)
    assert all(data.clicks[rows[u], cols[i]] == 1 for u, i in clicked)
