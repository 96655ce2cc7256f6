import numpy as np
import pytest
import scipy.sparse as sp

from ledrec.training.evaluate import evaluate_scores, led_score_fn, ndcg_at_k, recall_at_k


def test_recall_hand_example() -> None:
    scores = np.array([[0.9, 0.8, 0.1, 0.5], [0.1, 0.2, 0.3, 0.4]])
    heldout = sp.csr_matrix(np.array([[1, 0, 1, 0], [1, 1, 1, 0]], dtype=np.float32))
    # user 0: top2 = {0, 1} → 1 hit / min(2, 2); user 1: top2 = {3, 2} → 1 / 2
    assert recall_at_k(scores, heldout, 2) == pytest.approx(0.5)
    # top1: user 0 hits item 0 (1/1), user 1 misses (0/1)
    assert recall_at_k(scores, heldout, 1) == pytest.approx(0.5)


def test_ndcg_hand_example() -> None:
    scores = np.array([[0.9, 0.8, 0.1, 0.5]])  # ranking 0, 1, 3, 2
    heldout = sp.csr_matrix(np.array([[0, 1, 1, 0]], dtype=np.float32))  # hits at ranks 2, 4
    dcg = 1 / np.log2(3) + 1 / np.log2(5)
    idcg = 1 + 1 / np.log2(3)
    assert ndcg_at_k(scores, heldout, 4) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(scores, heldout, 2) == pytest.approx((1 / np.log2(3)) / idcg)


def test_users_without_heldout_are_skipped() -> None:
    scores = np.array([[1.0, 0.0], [1.0, 0.0]])
    heldout = sp.csr_matrix(np.array([[1, 0], [0, 0]], dtype=np.float32))
    assert recall_at_k(scores, heldout, 1) == 1.0


def test_evaluate_scores_masks_fold_in_and_batches() -> None:
    inputs = sp.csr_matrix(np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]], dtype=np.float32))
    heldout = sp.csr_matrix(np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=np.float32))

    def fold_in_first(x: sp.csr_matrix) -> np.ndarray:
        # ranks the fold-in item first, then 1 > 0 > 2: only masking makes users 0, 1 hit
        return np.asarray(x.toarray() * 10 + np.array([2.0, 3.0, 1.0]))

    m = evaluate_scores(fold_in_first, inputs, heldout, batch_size=2)
    # top1 after masking: u0 → 1 (hit), u1 → 0 (hit), u2 → 1 (miss)
    assert set(m) == {"recall@20", "recall@50", "ndcg@100"}
    assert m["recall@20"] == pytest.approx(1.0)  # k >= #items: everything is found
    assert recall_at_k(
        np.where(inputs.toarray() > 0, -np.inf, fold_in_first(inputs)), heldout, 1
    ) == pytest.approx(2 / 3)


def test_led_score_fn_is_mean_embedding_dot_plus_bias() -> None:
    v = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=np.float32)
    b = np.array([0.1, 0.2, 0.3], dtype=np.float32)
    inputs = sp.csr_matrix(np.array([[1, 1, 0], [0, 0, 0]], dtype=np.float32))
    scores = led_score_fn(v, b)(inputs)
    u = (v[0] + v[1]) / 2
    np.testing.assert_allclose(scores[0], v @ u + b, rtol=1e-6)
    np.testing.assert_allclose(scores[1], b)  # empty timeline: bias only
