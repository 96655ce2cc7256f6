import numpy as np
import pytest
import scipy.sparse as sp

from ledrec.training.dataset import Interactions
from ledrec.training.split import (
    default_n_heldout,
    eligible_users,
    strong_generalization_split,
)


def _data(n_users: int = 300, n_items: int = 80, seed: int = 1) -> Interactions:
    rng = np.random.default_rng(seed)
    views = sp.csr_matrix((rng.random((n_users, n_items)) < 0.3).astype(np.float32))
    clicks = views.multiply(rng.random((n_users, n_items)) < 0.5).tocsr().astype(np.float32)
    clicks.eliminate_zeros()
    return Interactions(
        np.array([f"u{i}" for i in range(n_users)]),
        np.array([f"i{i}" for i in range(n_items)]),
        views,
        clicks,
    )


def test_heldout_users_never_in_training() -> None:
    data = _data()
    s = strong_generalization_split(data, n_heldout=50, seed=3)
    assert s.train_users is not None and s.val_users is not None and s.test_users is not None
    assert len(s.val_users) == len(s.test_users) == 50
    users = [set(s.train_users), set(s.val_users), set(s.test_users)]
    assert not (users[0] & users[1]) and not (users[0] & users[2]) and not (users[1] & users[2])
    assert len(s.train_users) == data.n_users - 100  # every other user trains
    n_clicks = np.diff(data.clicks.indptr)
    assert (n_clicks[np.concatenate([s.val_users, s.test_users])] >= 5).all()


def test_fold_in_and_out_partition_the_users_clicks() -> None:
    data = _data()
    s = strong_generalization_split(data, n_heldout=50, seed=3)
    assert s.val_users is not None
    row = {item: i for i, item in enumerate(data.item_ids.tolist())}
    kept = [row[item] for item in s.item_ids.tolist()]
    expected = data.clicks[s.val_users][:, kept].toarray()
    fold_in, out = s.val_in.toarray(), s.val_out.toarray()
    assert not (fold_in * out).any()
    np.testing.assert_array_equal(fold_in + out, expected)
    n = expected.sum(axis=1)
    np.testing.assert_array_equal(out.sum(axis=1), np.maximum(np.floor(0.2 * n + 1e-9), n >= 2))


def test_items_absent_from_training_are_dropped() -> None:
    data = _data()
    # item 0 is clicked only by one user with many clicks: whoever holds it out, drop or keep
    clicks = data.clicks.tolil()
    clicks[:, 0] = 0
    clicks[0, 0] = 1
    data.clicks = clicks.tocsr()
    s = strong_generalization_split(data, n_heldout=50, seed=0)
    assert np.asarray(s.train_clicks.sum(axis=0)).ravel().min() > 0
    assert s.train_users is not None
    assert ("i0" in s.item_ids.tolist()) == (0 in s.train_users.tolist())
    for m in (s.train_views, s.val_in, s.val_out, s.test_in, s.test_out):
        assert m.shape[1] == len(s.item_ids)


def test_seed_reproducible() -> None:
    data = _data()
    a = strong_generalization_split(data, n_heldout=40, seed=7)
    b = strong_generalization_split(data, n_heldout=40, seed=7)
    c = strong_generalization_split(data, n_heldout=40, seed=8)
    assert (a.val_in != b.val_in).nnz == 0 and (a.test_out != b.test_out).nnz == 0
    assert a.test_users is not None and c.test_users is not None
    assert a.test_users.tolist() != c.test_users.tolist()


def test_too_few_users() -> None:
    with pytest.raises(ValueError, match="too few"):
        strong_generalization_split(_data(n_users=50), n_heldout=30)


def test_default_n_heldout_is_600_or_a_tenth_of_the_eligible_users() -> None:
    small = _data(n_users=300)
    assert default_n_heldout(small) == eligible_users(small) // 10
    s = strong_generalization_split(small, n_heldout=default_n_heldout(small))
    assert s.train_clicks.shape[0] >= 0.8 * small.n_users
    assert default_n_heldout(_data(n_users=7000)) == 600
