"""The global time split: train on the past, predict each user's later clicks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from ledrec.cli import main
from ledrec.training.evaluate import evaluate_scores, led_score_fn
from ledrec.training.formats import TimedEvents, read_timed_events
from ledrec.training.time_protocol import time_metrics, time_split


def _events(rows: list[tuple[str, str, bool, float]]) -> TimedEvents:
    users, items, clicks, ts = zip(*rows, strict=True)
    return TimedEvents(np.array(users), np.array(items), np.array(clicks), np.array(ts, float))


def test_hand_split_and_metrics() -> None:
    # ten events at t = 0..9: the median cutoff is 4.5
    events = _events([
        ("u0", "a", True, 0), ("u0", "b", False, 1), ("u1", "a", True, 2), ("u3", "c", True, 3),
        ("u3", "a", True, 4), ("u3", "b", True, 5), ("u0", "b", True, 6), ("u0", "c", True, 7),
        ("u1", "d", True, 8), ("u2", "e", True, 9),
    ])  # fmt: skip
    t = time_split(events, 0.5, n_val=1, min_positives=2)
    s = t.split
    assert t.cutoff == 4.5 and s.item_ids.tolist() == ["a", "b", "c"]  # d, e: only later
    assert s.user_ids.tolist() == ["u0", "u1", "u2", "u3"]
    # u0: b was viewed before (dropped), c is new; u1: d is outside the catalog (a miss);
    # u2 has no past: cold start, not scored; u3: b
    assert s.n_test.tolist() == [1, 1, 0, 1] and s.test.toarray().tolist() == [
        [0, 0, 1], [0, 0, 0], [0, 0, 0], [0, 1, 0]]  # fmt: skip
    assert (t.cold_users, t.dropped_known) == (1, 1)
    # validation: u3 (the one user with 2 past clicks) lends its latest, a at t = 4
    assert s.val_in.toarray().tolist() == [[0, 0, 1]] and s.val_out.toarray().tolist() == [
        [1, 0, 0]
    ]
    assert s.fit_clicks.toarray().tolist() == [[1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 1]]
    assert s.inputs[3].toarray().tolist() == [[1, 0, 1]]  # at test time: every past click
    assert s.known[0].toarray().tolist() == [[1, 1, 0]]  # u0's viewed b is never ranked

    def a_then_b_then_c(inputs: sp.csr_matrix) -> np.ndarray:
        return np.tile(np.array([3.0, 2.0, 1.0]), (inputs.shape[0], 1))

    # u0 ranks only c (hit), u1 misses d, u3 ranks only b (hit)
    m = time_metrics(a_then_b_then_c, s)
    assert m == pytest.approx({"recall@20": 2 / 3, "recall@50": 2 / 3, "ndcg@100": 2 / 3})


def test_metrics_are_the_strong_protocols_and_nothing_leaks() -> None:
    rng = np.random.default_rng(0)
    n = 8000  # 160 events per user over 300 items: more than 20 later clicks each
    events = TimedEvents(
        np.char.add("u", rng.integers(0, 50, n).astype(str)),
        np.char.add("i", rng.integers(0, 300, n).astype(str)),
        np.ones(n, dtype=bool),
        rng.random(n) * 1e6,
    )
    t = time_split(events, 0.5, n_val=5, seed=1)
    s = t.split
    past = {(u, i) for u, i, ts in zip(events.users, events.items, events.ts, strict=True)
            if ts < t.cutoff}  # fmt: skip
    fit = s.fit_clicks.tocoo()
    assert {(s.user_ids[u], s.item_ids[i]) for u, i in zip(fit.row, fit.col, strict=True)} <= past
    assert s.n_test.sum() == s.test.nnz > 0  # every later click on a known item: no misses
    users = np.flatnonzero(s.n_test > 0)
    rng_v = np.random.default_rng(2)
    n_items = s.item_ids.shape[0]
    led = led_score_fn(rng_v.standard_normal((n_items, 4)), rng_v.standard_normal(n_items))
    assert np.median(s.n_test[users]) > 20  # Recall@20's min(k, targets) matters
    # all events are clicks, so the items never ranked are the fold-in: evaluate_scores's
    assert time_metrics(led, s) == pytest.approx(
        evaluate_scores(led, s.inputs[users], s.test[users])
    )


def test_timed_events_from_files(tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,type,ts\nu,a,view,1\nu,a,click,2\nu,b,unknown,3\n")
    got = read_timed_events(events)
    assert got.items.tolist() == ["a", "a"] and got.is_click.tolist() == [False, True]
    assert got.ts.tolist() == [1.0, 2.0]
    dat = tmp_path / "ratings.dat"
    dat.write_text("1::10::5::100\n1::11::2::200\n")
    got = read_timed_events(dat)
    assert got.is_click.tolist() == [True, False] and got.ts.tolist() == [100.0, 200.0]


def test_cli_time_protocol(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "time"
    argv = ["evaluate", "--protocol", "time", "--svd-only", "--dim", "8", "--out", str(out)]
    assert main([*argv, "--synthetic-users", "600", "--synthetic-items", "100"]) == 0
    report = (out / "report.md").read_text()
    assert "Global time split at the 80% quantile" in report
    for model in ("Popularity", "EASE", "Item-kNN", "LED"):
        assert f"| {model} |" in report
    capsys.readouterr()
    no_ts = tmp_path / "ratings.csv"
    no_ts.write_text("user,movie,rating\n1,2,5\n")
    assert main(["evaluate", "--protocol", "time", "--data", str(no_ts)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no timestamp column" in err
    assert main(["evaluate", "--cutoff", "0.5"]) == 1
    assert "--protocol time" in capsys.readouterr().err
    assert main(["evaluate", "--protocol", "time", "--cutoff", "1.5"]) == 1
    assert "strictly between 0 and 1" in capsys.readouterr().err
