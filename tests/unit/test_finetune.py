"""LED fine-tuning: the chain gradient, learning on a tiny problem, clean interruption,
and a step whose cost follows the batch, not the catalog."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp

from ledrec.training.dataset import binary_matrix
from ledrec.training.evaluate import evaluate_scores, led_score_fn
from ledrec.training.finetune import (
    Batch,
    FinetuneConfig,
    _gradients,
    _initial_params,
    _negative_sampler,
    _sample_batch,
    finetune,
)
from ledrec.training.losses import make_loss
from ledrec.training.pretrain import pretrain_embeddings
from ledrec.training.split import Split, fold_in_split

N_ITEMS, N_CLUSTERS = 40, 4


def _clustered_clicks(n_users: int, rng: np.random.Generator) -> sp.csr_matrix:
    """Each user clicks 6 items of one taste cluster and one item at random."""
    size = N_ITEMS // N_CLUSTERS
    cluster = rng.integers(0, N_CLUSTERS, n_users)
    rows, cols = [], []
    for user, c in enumerate(cluster):
        items = [*(c * size + rng.choice(size, 6, replace=False)), rng.integers(N_ITEMS)]
        rows += [user] * len(items)
        cols += items
    return binary_matrix(np.array(rows), np.array(cols), (n_users, N_ITEMS))


@pytest.fixture(scope="module")
def split() -> Split:
    rng = np.random.default_rng(0)
    train = _clustered_clicks(300, rng)
    val_in, val_out = fold_in_split(_clustered_clicks(60, rng), 0.6, rng)
    return Split(np.arange(N_ITEMS).astype(str), train, train, val_in, val_out, val_in, val_out)


def _full_gradient(
    params: dict[str, np.ndarray], grads: dict[str, np.ndarray], items: np.ndarray
) -> dict[str, np.ndarray]:
    """Row gradients (on the batch's items) scattered back to full parameter shapes."""
    full = {}
    for name, grad in grads.items():
        full[name] = np.zeros_like(params[name])
        if name == "projection":
            full[name] += grad
        else:
            full[name][items] += grad
    return full


def _batch(
    clicks: sp.csr_matrix, config: FinetuneConfig, rng: np.random.Generator, pool: int
) -> Batch:
    sampler = _negative_sampler(replace(config, negative_pool=pool), clicks, rng)
    return _sample_batch(clicks, 0.5, sampler, rng)


@pytest.mark.parametrize("pool", [12, 4096], ids=["pool<catalog", "catalog<=pool"])
@pytest.mark.parametrize("loss_name", ["bpr", "ns", "css", "mult"])
@pytest.mark.parametrize("variant", ["train", "proj"])
def test_chain_gradient_matches_finite_differences(
    split: Split, loss_name: str, variant: str, pool: int
) -> None:
    rng = np.random.default_rng(1)
    dim = 5
    config = FinetuneConfig(loss=loss_name, n_negatives=7, dim=dim)
    batch = _batch(split.train_clicks[:6], config, rng, pool)
    base = rng.normal(0.0, 0.5, (N_ITEMS, dim))
    params = {"biases": rng.normal(0.0, 0.5, N_ITEMS)}
    if variant == "proj":
        params["projection"] = np.eye(dim) + rng.normal(0.0, 0.3, (dim, dim))
    else:
        params["embeddings"] = base.copy()
    loss = make_loss(loss_name, N_ITEMS)
    _, grads = _gradients(params, base, batch, loss)
    full = _full_gradient(params, grads, batch.items)
    eps = 1e-6
    for name, value in params.items():
        numerical = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            saved = value[index]
            value[index] = saved + eps
            up = _gradients(params, base, batch, loss)[0]
            value[index] = saved - eps
            down = _gradients(params, base, batch, loss)[0]
            value[index] = saved
            numerical[index] = (up - down) / (2 * eps)
        np.testing.assert_allclose(full[name], numerical, rtol=1e-5, atol=1e-8, err_msg=name)


def test_negatives_never_include_an_input_item(split: Split) -> None:
    rng = np.random.default_rng(2)
    batch = _batch(split.train_clicks[:50], FinetuneConfig(n_negatives=20), rng, 30)
    negatives = batch.candidates[batch.negatives]  # local ids
    is_input = np.take_along_axis(batch.inputs.toarray() > 0, negatives, axis=1)
    assert not np.any(is_input & batch.valid)
    assert batch.valid.mean() > 0.5
    # every user has at least one input and one target, disjoint
    assert np.all(np.diff(batch.inputs.indptr) >= 1)
    assert set(batch.owner) == set(range(50))
    targets = sp.csr_matrix((np.ones(len(batch.owner)), (batch.owner, batch.targets)))
    assert batch.inputs.multiply(targets).nnz == 0


def _tiny_config(**overrides: object) -> FinetuneConfig:
    settings: dict[str, object] = dict(
        init="random", dim=8, epochs=15, lr=0.03, batch_size=32, n_negatives=10, patience=15
    )
    return FinetuneConfig(**{**settings, **overrides})  # type: ignore[arg-type]


@pytest.mark.parametrize("loss_name", ["bpr", "ns", "css", "mult"])
@pytest.mark.parametrize("variant", ["train", "proj"])
def test_finetune_improves_validation_ndcg(split: Split, loss_name: str, variant: str) -> None:
    # "train" from random embeddings; "proj" of PMI-SVD embeddings (a random base is hopeless)
    init = pretrain_embeddings(split.train_views, 8, min_count=1)
    config = _tiny_config(
        loss=loss_name, variant=variant, init="random" if variant == "train" else "svd"
    )
    lines: list[str] = []
    result = finetune(split, config, init, lines.append)
    initial = result.history[0]["ndcg@100"]
    assert result.val_metrics["ndcg@100"] > initial + 0.05
    assert result.embeddings.shape == (N_ITEMS, 8) and result.embeddings.dtype == np.float32
    assert result.biases.shape == (N_ITEMS,) and result.biases.dtype == np.float32
    assert len(lines) == len(result.history) + 1 and lines[1].startswith("epoch   1")
    assert lines[-1].startswith("kept epoch ")
    # the returned model is the one whose validation metrics are reported
    scored = evaluate_scores(
        led_score_fn(result.embeddings, result.biases), split.val_in, split.val_out
    )
    assert scored == pytest.approx(result.val_metrics)


def test_keyboard_interrupt_returns_the_best_epoch_so_far(split: Split) -> None:
    def progress(line: str) -> None:
        if line.startswith("epoch   3"):
            raise KeyboardInterrupt

    result = finetune(split, _tiny_config(), None, progress)
    assert [h["epoch"] for h in result.history] == [0.0, 1.0, 2.0, 3.0]
    scored = evaluate_scores(
        led_score_fn(result.embeddings, result.biases), split.val_in, split.val_out
    )
    assert scored == pytest.approx(result.val_metrics)
    assert result.val_metrics["ndcg@100"] == max(h["ndcg@100"] for h in result.history[:3])


def test_proj_needs_pretrained_embeddings(split: Split) -> None:
    with pytest.raises(ValueError, match="init"):
        finetune(split, _tiny_config(variant="proj"), None)


def test_a_batch_follows_the_pool_not_the_catalog() -> None:
    # The catalog is 10^6 items; what a batch touches, scores and updates is bounded by its
    # clicks and its pool (#16: a step's cost must not grow with the catalog).
    rng = np.random.default_rng(3)
    n_users, n_items = 64, 1_000_000
    rows = np.repeat(np.arange(n_users), 5)
    clicks = binary_matrix(rows, rng.integers(0, n_items, len(rows)), (n_users, n_items))
    batch = _batch(clicks, FinetuneConfig(n_negatives=50), rng, 200)
    assert len(batch.candidates) <= 200 and len(batch.items) <= 200 + clicks.nnz
    assert batch.negatives.shape == (n_users, 50) and batch.negatives.max() < 200
    params = {"embeddings": rng.normal(size=(n_items, 4)), "biases": np.zeros(n_items)}
    _, grads = _gradients(params, None, batch, make_loss("css", n_items))
    assert grads["embeddings"].shape == (len(batch.items), 4)


def test_initial_biases_are_log_popularity_relative_to_uniform(split: Split) -> None:
    # Regression: biases at log p_i (about -8 on ML-1M) made NS diverge from random init.
    params = _initial_params(_tiny_config(), split, None, np.random.default_rng(0))
    assert np.exp(params["biases"]).mean() == pytest.approx(1.0, rel=1e-5)
    clicks = np.asarray(split.train_clicks.sum(axis=0)).ravel()
    assert np.argmax(params["biases"]) == np.argmax(clicks)


@pytest.mark.parametrize("pool", [16, 4096], ids=["pool<catalog", "catalog<=pool"])
def test_popularity_negatives_follow_click_counts(split: Split, pool: int) -> None:
    # with a pool, each user's negatives come from its entries (with their multiplicities),
    # so that they keep the sampler's distribution
    rng = np.random.default_rng(5)
    config = FinetuneConfig(negatives="popularity", n_negatives=500, negative_pool=pool)
    sampler = _negative_sampler(config, split.train_clicks, rng)
    drawn = np.zeros(N_ITEMS)
    for _ in range(400):
        batch = _sample_batch(split.train_clicks[:5], 0.5, sampler, rng)
        negatives = batch.items[batch.candidates[batch.negatives]]
        drawn += np.bincount(negatives.ravel(), minlength=N_ITEMS) / negatives.size / 400
    clicks = np.asarray(split.train_clicks.sum(axis=0)).ravel() + 1.0
    np.testing.assert_allclose(drawn, clicks / clicks.sum(), atol=0.005)


def test_a_small_catalog_is_every_batchs_pool(split: Split) -> None:
    # at most negative_pool items: every user draws from the whole catalog, independently
    batch = _batch(
        split.train_clicks[:50], FinetuneConfig(n_negatives=20), np.random.default_rng(6), 40
    )
    assert np.array_equal(batch.items[batch.candidates], np.arange(N_ITEMS))


def test_a_uniform_pool_is_stratified() -> None:
    # a pool smaller than the catalog holds pool-size distinct items (systematic sampling),
    # not a Poisson number of copies of each
    rng = np.random.default_rng(7)
    sampler = _negative_sampler(
        FinetuneConfig(n_negatives=100, negative_pool=300), sp.csr_matrix((1, 10_000)), rng
    )
    assert sampler is not None
    candidates, negatives = sampler(8)
    assert len(candidates) == 300 and negatives.shape == (8, 100)
