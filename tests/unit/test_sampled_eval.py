"""Sampled validation: the full protocol restricted to a fixed sample of the catalog."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from ledrec.training.dataset import binary_matrix
from ledrec.training.evaluate import (
    METRICS,
    evaluate_scores,
    led_score_fn,
    ndcg_per_user,
    recall_per_user,
)
from ledrec.training.sampled_eval import ItemVectors, SampledValidation
from ledrec.training.split import fold_in_split

N_USERS, N_ITEMS, DIM = 150, 400, 6
World = tuple[np.ndarray, np.ndarray, sp.csr_matrix, sp.csr_matrix]  # v, b, fold-in, held-out


@pytest.fixture(scope="module")
def world() -> World:
    rng = np.random.default_rng(0)
    rows = np.repeat(np.arange(N_USERS), 12)
    clicks = binary_matrix(rows, rng.integers(0, N_ITEMS, len(rows)), (N_USERS, N_ITEMS))
    inputs, heldout = fold_in_split(clicks, 0.7, rng)
    embeddings = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    biases = rng.normal(size=N_ITEMS).astype(np.float32)
    return embeddings, biases, inputs, heldout


def _lookup(embeddings: np.ndarray, biases: np.ndarray) -> ItemVectors:
    return lambda items: (embeddings[items], biases[items])


def test_a_sample_covering_the_catalog_is_the_full_protocol(world: World) -> None:
    embeddings, biases, inputs, heldout = world
    sampled = SampledValidation(inputs, heldout, N_ITEMS, N_USERS, batch_size=64)
    full = evaluate_scores(led_score_fn(embeddings, biases), inputs, heldout)
    assert sampled(_lookup(embeddings, biases)) == pytest.approx(full, abs=1e-12)


def test_held_out_items_are_ranked_among_the_sample_only(world: World) -> None:
    embeddings, biases, inputs, heldout = world
    sampled = SampledValidation(inputs, heldout, 50, N_USERS, seed=3, batch_size=64)
    # the reference: full scores, every item that is neither in the sample nor one of the
    # user's held-out items removed (the sample is the one drawn with the same seed)
    sample = np.sort(np.random.default_rng(3).choice(N_ITEMS, 50, replace=False))
    scores = np.array(led_score_fn(embeddings, biases)(inputs), dtype=np.float64)
    competes = np.zeros(scores.shape, dtype=bool)
    competes[:, sample] = True
    competes[heldout.nonzero()] = True
    competes[inputs.nonzero()] = False
    scores[~competes] = -np.inf
    expected = {
        name: float(np.nanmean((recall_per_user if kind == "recall" else ndcg_per_user)(
            scores, heldout, k)))
        for name, (kind, k) in METRICS.items()
    }  # fmt: skip
    got = sampled(_lookup(embeddings, biases))
    assert got == pytest.approx(expected, abs=1e-12)
    full = evaluate_scores(led_score_fn(embeddings, biases), inputs, heldout)
    assert got["recall@20"] > full["recall@20"]  # fewer competitors
    assert sampled(_lookup(embeddings, biases)) == got  # the same sample at every call


def test_at_most_max_users_are_kept(world: World) -> None:
    _, _, inputs, heldout = world
    sampled = SampledValidation(inputs, heldout, 100, 40, batch_size=16)
    assert sampled.n_users == 40 and sampled.n_sampled == 100
    assert sum(chunk.inputs.shape[0] for chunk in sampled.chunks) == 40
