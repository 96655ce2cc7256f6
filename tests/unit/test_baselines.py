import numpy as np
import scipy.sparse as sp

from ledrec.training.baselines import (
    ease_score_fn,
    ease_weights,
    gram,
    popularity_score_fn,
    tune_ease,
)


def _clicks(seed: int = 0, shape: tuple[int, int] = (50, 12)) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    return sp.csr_matrix((rng.random(shape) < 0.3).astype(np.float32))


def test_ease_matches_per_column_ridge_reference() -> None:
    # EASE's closed form equals ridge regression of each item on all the others
    x = _clicks().toarray().astype(np.float64)
    lam = 3.0
    b = ease_weights(gram(sp.csr_matrix(x)), lam)
    n = x.shape[1]
    for j in range(n):
        others = [k for k in range(n) if k != j]
        xo = x[:, others]
        ridge = np.linalg.solve(xo.T @ xo + lam * np.eye(n - 1), xo.T @ x[:, j])
        np.testing.assert_allclose(b[others, j], ridge, rtol=1e-4, atol=1e-5)
        assert b[j, j] == 0


def test_ease_scores_and_tuning() -> None:
    train = _clicks(0)
    val_in, val_out = _clicks(1, (20, 12)), _clicks(2, (20, 12))
    fit = tune_ease(train, val_in, val_out, lambdas=(1.0, 10.0, 100.0))
    assert fit.lam in (1.0, 10.0, 100.0)
    assert fit.val_metrics == max(fit.by_lambda.values(), key=lambda m: m["ndcg@100"])
    scores = ease_score_fn(fit.weights)(val_in)
    np.testing.assert_allclose(scores, val_in.toarray() @ fit.weights, rtol=1e-5)


def test_popularity_scores() -> None:
    train = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 0]], dtype=np.float32))
    scores = popularity_score_fn(train)(sp.csr_matrix((4, 3), dtype=np.float32))
    assert scores.shape == (4, 3)
    assert (np.argsort(-scores, axis=1) == [0, 1, 2]).all()
