"""The weak-generalization protocol: LightGCN's Recall@k / NDCG@k on hand-made data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from ledrec.cli import main
from ledrec.training.dataset import from_arrays
from ledrec.training.formats import Ratings
from ledrec.training.weak_protocol import (
    WeakSplit,
    split_from_files,
    split_one_source,
    weak_metrics,
    weak_split,
)


def _ratings(pairs: list[tuple[str, str]]) -> Ratings:
    return Ratings(np.array([u for u, _ in pairs]), np.array([i for _, i in pairs]))


def _hand_split() -> WeakSplit:
    train = _ratings([("u0", "a"), ("u1", "b"), ("u2", "a"), ("u2", "c"), ("u2", "d"),
                      ("u2", "e")])  # fmt: skip
    test = _ratings([("u0", "b"), ("u0", "x"), ("u1", "c"), ("u1", "d"), ("u1", "e")])
    valid = _ratings([("u2", "b")])
    return split_from_files(train, test, valid)


def test_metrics_are_lightgcns() -> None:
    split = _hand_split()
    assert split.item_ids.tolist() == ["a", "b", "c", "d", "e"]  # x: only in test
    assert split.n_test.tolist() == [2, 3, 0]

    def constant(inputs: sp.csr_matrix) -> np.ndarray:
        return np.tile(np.array([5.0, 4.0, 3.0, 2.0, 1.0]), (inputs.shape[0], 1))

    # u0: a is known, top 2 = b (hit), c; test {b, x}: recall 1/2, NDCG 1 / (1 + 1/log2 3)
    # u1: b is known, top 2 = a, c (hit); test {c, d, e}: recall 1/3 (not 1/min(2, 3)),
    #     NDCG (1/log2 3) / (1 + 1/log2 3); u2 has no test item and is not averaged
    m = weak_metrics(constant, split, k=2)
    d2 = 1.0 / math.log2(3)
    assert m["recall@2"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert m["ndcg@2"] == pytest.approx((1 / (1 + d2) + d2 / (1 + d2)) / 2)
    # the validation file: its users are scored on it, and its items are known at test time
    assert split.val_out.shape[0] == 1 and split.known[2, 1] == 1


def test_one_source_split_is_per_user_and_disjoint() -> None:
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(100), 20)
    items = rng.integers(0, 60, len(users))
    clicks = rng.random(len(users)) < 0.7
    data = from_arrays(users, items, np.ones(len(users), bool), clicks)
    s = split_one_source(data, seed=3, n_val=10)
    n_clicks = np.diff(data.clicks.indptr)
    assert (s.n_test == np.where(n_clicks >= 2, np.maximum(n_clicks // 5, 1), 0)).all()
    assert s.inputs.multiply(s.test).nnz == 0 and s.known.multiply(s.test).nnz == 0
    assert s.inputs.nnz + s.n_test.sum() == data.clicks.nnz
    # validation clicks are lent by the fit data, not lost to the encoder at test time
    assert s.val_in.shape[0] == 10
    assert s.fit_clicks.nnz + s.val_out.nnz == s.inputs.nnz
    again = split_one_source(data, seed=3, n_val=10)
    assert (again.test != s.test).nnz == 0 and (again.val_out != s.val_out).nnz == 0


def test_too_few_validation_users() -> None:
    x = sp.csr_matrix(np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError, match="validation users"):
        weak_split(np.array(["a", "b", "c"]), np.array(["i", "j", "k"]), x, x, x)


def test_cli_weak_protocol_writes_a_report(tmp_path: Path) -> None:
    out = tmp_path / "weak"
    argv = ["evaluate", "--protocol", "weak", "--svd-only", "--dim", "8", "--out", str(out)]
    assert main([*argv, "--synthetic-users", "600", "--synthetic-items", "100"]) == 0
    report = (out / "report.md").read_text()
    for model in ("Popularity", "EASE", "Item-kNN", "LED"):
        assert f"| {model} |" in report


def test_cli_weak_files_need_both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = tmp_path / "train.txt"
    train.write_text("0 1 2\n")
    assert main(["evaluate", "--protocol", "weak", "--train", str(train)]) == 1
    assert "--test" in capsys.readouterr().err
    assert main(["evaluate", "--train", str(train), "--test", str(train)]) == 1
    assert "--protocol weak" in capsys.readouterr().err


def test_cli_weak_protocol_on_lightgcn_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    lines = [(u, rng.permutation(30)[:12]) for u in range(40)]
    train.write_text("".join(f"{u} {' '.join(map(str, i[:9]))}\n" for u, i in lines))
    test.write_text("".join(f"{u} {' '.join(map(str, i[9:]))}\n" for u, i in lines))
    out = tmp_path / "weak"
    argv = ["evaluate", "--protocol", "weak", "--train", str(train), "--test", str(test)]
    argv += ["--svd-only", "--dim", "4", "--n-heldout", "5", "--out", str(out)]
    assert main(argv) == 0
    report = (out / "report.md").read_text()
    assert "40 test users with 120 test items" in report and "5 validation users" in report
