"""Item-kNN: cosine neighbours computed by blocks equal the hand-computed ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from ledrec.training import item_knn
from ledrec.training.item_knn import cosine_neighbours, knn_score_fn, tune_item_knn
from ledrec.training.split import fold_in_split


def _clicks() -> sp.csr_matrix:
    # u0: {0, 1}, u1: {0, 1}, u2: {1, 2}
    return sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 0], [0, 1, 1]], dtype=np.float32))


def test_cosine_top_1() -> None:
    n = cosine_neighbours(_clicks(), k=1)
    assert n.items[:, 0].tolist() == [1, 0, 1]
    assert n.similarities[:, 0] == pytest.approx([2 / np.sqrt(6), 2 / np.sqrt(6), 1 / np.sqrt(3)])
    scores = knn_score_fn(n.matrix(1))(sp.csr_matrix(np.array([[1, 0, 1]], dtype=np.float32)))
    assert scores[0] == pytest.approx([0.0, 2 / np.sqrt(6) + 1 / np.sqrt(3), 0.0])


def test_blocks_give_the_same_neighbours(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((200, 50)) < 0.1).astype(np.float32))
    whole = cosine_neighbours(x, k=5)
    monkeypatch.setattr(item_knn, "_BLOCK_CELLS", 7 * 50)  # 7 items per block
    blocks = cosine_neighbours(x, k=5)
    assert np.allclose(whole.similarities, blocks.similarities)
    assert (whole.matrix(5) != blocks.matrix(5)).nnz == 0


def test_tune_keeps_a_k_of_the_grid() -> None:
    rng = np.random.default_rng(1)
    x = sp.csr_matrix((rng.random((300, 40)) < 0.2).astype(np.float32))
    val_in, val_out = fold_in_split(x[250:], 0.8, rng)
    fit = tune_item_knn(x[:250], val_in, val_out, ks=(2, 5))
    assert fit.k in (2, 5) and set(fit.by_k) == {2, 5}
    assert fit.similarity.getnnz(axis=1).max() <= fit.k


def test_strong_table_has_popularity_and_item_knn(tmp_path: Path) -> None:
    from ledrec.training.jobs import PretrainConfig, run_evaluate
    from ledrec.training.synthetic import SyntheticConfig, synthetic_interactions

    data = synthetic_interactions(SyntheticConfig(n_users=600, n_items=100, seed=0))
    report = run_evaluate(
        data, tmp_path, [], [], pretrain=PretrainConfig(dim=8, min_count=1), n_heldout=50
    )
    assert [r["model"] for r in report["rows"][:3]] == ["Popularity", "EASE", "Item-kNN"]
    assert report["rows"][1]["recall@20 / EASE"] == 1.0
    assert "| Item-kNN |" in (tmp_path / "report.md").read_text()
