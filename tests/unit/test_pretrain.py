import numpy as np
import pytest
import scipy.sparse as sp

from ledrec.training.pretrain import pmi_matrix, popularity_biases, pretrain_embeddings

# users × items A, B, C, D: U1 {A, B, D}, U2 {A, B, C}, U3 {A, C}
VIEWS = sp.csr_matrix(np.array([[1, 1, 0, 1], [1, 1, 1, 0], [1, 0, 1, 0]], dtype=np.float32))


def _dense_pmi(views: np.ndarray, alpha: float) -> np.ndarray:
    c = views.T @ views
    np.fill_diagonal(c, 0)
    marginal = c.sum(axis=1)
    context = marginal**alpha
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(c * context.sum() / np.outer(marginal, context))
    return np.where(c > 0, np.maximum(pmi, 0), 0)


def test_pmi_hand_example_with_rare_item_cut() -> None:
    # D is seen by one user: with min_count=2 it is zeroed before the marginals, leaving
    # co-occurrences A-B 2, A-C 2, B-C 1 and marginals A 4, B 3, C 3
    pmi = pmi_matrix(VIEWS, min_count=2, smoothing=0.75).toarray()
    ctx = 4**0.75 + 2 * 3**0.75
    assert pmi[0, 1] == pytest.approx(np.log(2 * ctx / (4 * 3**0.75)), rel=1e-5)
    assert pmi[1, 0] == pytest.approx(np.log(2 * ctx / (3 * 4**0.75)), rel=1e-5)
    assert pmi[1, 2] == pytest.approx(max(0.0, np.log(1 * ctx / (3 * 3**0.75))), abs=1e-6)
    assert not pmi[3].any() and not pmi[:, 3].any()
    assert not np.diag(pmi).any()


def test_pmi_matches_dense_reference_and_is_positive() -> None:
    rng = np.random.default_rng(0)
    views = (rng.random((60, 25)) < 0.25).astype(np.float32)
    expected = _dense_pmi(views, 0.75)
    assert (expected == 0).sum() > 25  # some PMI values were negative and got clipped
    got = pmi_matrix(sp.csr_matrix(views), min_count=1)
    assert got.data.min() > 0
    np.testing.assert_allclose(got.toarray(), expected, rtol=1e-5, atol=1e-6)


def test_pretrain_embeddings_unit_rows_and_deterministic() -> None:
    rng = np.random.default_rng(0)
    views = sp.csr_matrix((rng.random((200, 40)) < 0.2).astype(np.float32))
    views.data[views.indices == 0] = 0  # item 0 never viewed, kept as explicit zeros
    a = pretrain_embeddings(views, dim=8, seed=1, min_count=1)
    b = pretrain_embeddings(views, dim=8, seed=1, min_count=1)
    assert a.shape == (40, 8) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    norms = np.linalg.norm(a, axis=1)
    assert norms[0] == 0
    np.testing.assert_allclose(norms[1:], 1.0, rtol=1e-5)
    assert pretrain_embeddings(views, dim=64, seed=1, min_count=1).shape == (40, 64)


def test_popularity_biases_order() -> None:
    clicks = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 0]], dtype=np.float32))
    b = popularity_biases(clicks)
    assert b.dtype == np.float32 and np.isfinite(b).all()
    assert b[0] > b[1] > b[2]
    np.testing.assert_allclose(np.exp(b).sum(), 1.0, rtol=1e-6)
