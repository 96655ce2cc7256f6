"""LED fine-tuning: the chain gradient, learning on a tiny problem, clean interruption."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import ledrec.training.finetune as finetune_module
from ledrec.training.dataset import binary_matrix
from ledrec.training.evaluate import evaluate_scores, led_score_fn
from ledrec.training.finetune import (
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


@pytest.mark.parametrize("dense_ratio", [0, 10**9], ids=["gathered", "dense"])
@pytest.mark.parametrize("loss_name", ["bpr", "ns", "css", "mult"])
@pytest.mark.parametrize("variant", ["train", "proj"])
def test_chain_gradient_matches_finite_differences(
    split: Split, loss_name: str, variant: str, dense_ratio: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(finetune_module, "_DENSE_RATIO", dense_ratio)
    rng = np.random.default_rng(1)
    dim = 5
    config = FinetuneConfig(loss=loss_name, n_negatives=7, dim=dim)
    clicks = split.train_clicks[:6]
    batch = _sample_batch(clicks, 0.5, _negative_sampler(config, clicks, rng), rng)
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
    clicks = split.train_clicks[:50]
    sampler = _negative_sampler(FinetuneConfig(n_negatives=20), clicks, rng)
    batch = _sample_batch(clicks, 0.5, sampler, rng)
    is_input = np.take_along_axis(batch.inputs.toarray() > 0, batch.negatives, axis=1)
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
    assert len(lines) == len(result.history) and lines[1].startswith("epoch   1")
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


def test_dense_and_gathered_scoring_agree(split: Split, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    clicks = split.train_clicks[:64]
    batch = _sample_batch(
        clicks, 0.5, _negative_sampler(FinetuneConfig(n_negatives=9), clicks, rng), rng
    )
    params = {"embeddings": rng.normal(size=(N_ITEMS, 6)), "biases": rng.normal(size=N_ITEMS)}
    monkeypatch.setattr(finetune_module, "_GATHER_FLOATS", 100)  # gathers in several chunks
    results = []
    for dense_ratio in (0, 10**9):
        monkeypatch.setattr(finetune_module, "_DENSE_RATIO", dense_ratio)
        results.append(_gradients(params, None, batch, make_loss("css", N_ITEMS)))
    (gathered, gathered_grads), (dense, dense_grads) = results
    assert gathered == pytest.approx(dense)
    for name in gathered_grads:
        np.testing.assert_allclose(gathered_grads[name], dense_grads[name], atol=1e-12)


def test_initial_biases_are_log_popularity_relative_to_uniform(split: Split) -> None:
    # Regression: biases at log p_i (about -8 on ML-1M) made NS diverge from random init.
    params = _initial_params(_tiny_config(), split, None, np.random.default_rng(0))
    assert np.exp(params["biases"]).mean() == pytest.approx(1.0, rel=1e-5)
    clicks = np.asarray(split.train_clicks.sum(axis=0)).ravel()
    assert np.argmax(params["biases"]) == np.argmax(clicks)


def test_popularity_negatives_follow_click_counts(split: Split) -> None:
    sampler = _negative_sampler(
        FinetuneConfig(negatives="popularity", n_negatives=500),
        split.train_clicks,
        np.random.default_rng(5),
    )
    assert sampler is not None
    drawn = np.bincount(sampler(200).ravel(), minlength=N_ITEMS) / 100_000
    clicks = np.asarray(split.train_clicks.sum(axis=0)).ravel() + 1.0
    np.testing.assert_allclose(drawn, clicks / clicks.sum(), atol=0.005)
