"""One contract for every fine-tuning loss: its gradient is the finite-difference one."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from ledrec.training.losses import BPR, Loss, Mult, MultCSS, NegativeSampling, make_loss

LOSSES = [BPR(), NegativeSampling(), MultCSS(n_items=50), Mult()]


def _batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_users, n_pairs, n_negatives = 3, 8, 6
    owner = np.sort(rng.integers(0, n_users, n_pairs))
    valid = rng.random((n_users, n_negatives)) < 0.7
    valid[:, 0] = True  # every user keeps at least one negative
    pos = rng.normal(0.0, 2.0, n_pairs)
    neg = rng.normal(0.0, 2.0, (n_users, n_negatives))
    return pos, neg, owner, valid


def _numerical_gradient(f: Callable[[], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        saved = x[index]
        x[index] = saved + eps
        up = f()
        x[index] = saved - eps
        down = f()
        x[index] = saved
        grad[index] = (up - down) / (2 * eps)
    return grad


@pytest.mark.parametrize("loss", LOSSES, ids=lambda loss: type(loss).__name__)
def test_gradient_matches_finite_differences(loss: Loss) -> None:
    pos, neg, owner, valid = _batch()
    value, dpos, dneg = loss(pos, neg, owner, valid)

    def f() -> float:
        return loss(pos, neg, owner, valid)[0]

    assert np.isfinite(value)
    np.testing.assert_allclose(dpos, _numerical_gradient(f, pos), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(dneg, _numerical_gradient(f, neg), rtol=1e-5, atol=1e-8)
    assert np.all(dneg[~valid] == 0.0)  # masked negatives get no gradient


@pytest.mark.parametrize("loss", LOSSES, ids=lambda loss: type(loss).__name__)
def test_extreme_scores_stay_finite(loss: Loss) -> None:
    pos, neg, owner, valid = _batch()
    value, dpos, dneg = loss(pos * 500.0, neg * 500.0, owner, valid)
    assert np.isfinite(value) and np.isfinite(dpos).all() and np.isfinite(dneg).all()


def test_mult_is_the_log_softmax_over_the_valid_items() -> None:
    pos, neg, owner, valid = _batch()
    neg[owner, 0] = pos  # the full softmax scores every item, the positive too
    value, _, _ = Mult()(pos, neg, owner, valid)
    log_partition = np.log(np.where(valid, np.exp(neg), 0.0).sum(axis=1))
    assert value == pytest.approx(np.mean(log_partition[owner] - pos))


def test_css_with_every_other_item_as_negative_is_the_full_softmax() -> None:
    # n_items - 1 negatives that are exactly the other items: the estimate is exact.
    pos = np.array([1.5])
    others = np.array([[0.3, -1.0, 2.0]])
    value, _, _ = MultCSS(n_items=4)(pos, others, np.array([0]), np.ones((1, 3), bool))
    full = np.concatenate([pos, others[0]])
    assert value == pytest.approx(np.log(np.exp(full).sum()) - pos[0])


def test_make_loss_rejects_unknown_names() -> None:
    assert isinstance(make_loss("css", 10), MultCSS)
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("softmax", 10)
