import numpy as np
import pytest

from ledrec.stream.artifact import Model
from ledrec.stream.loaded_model import LoadedModel, Query


@pytest.fixture
def model() -> Model:
    rng = np.random.default_rng(1)
    n, d = 500, 8
    return Model(
        item_ids=np.array([f"i{i}" for i in range(n)]),
        embeddings=rng.normal(size=(n, d)).astype(np.float32),
        biases=rng.normal(size=n).astype(np.float32),
        version="v1",
    )


def _brute(model: Model, u: np.ndarray, seen: set[str], k: int) -> list[str]:
    scores = model.embeddings @ u + model.biases
    order = [str(model.item_ids[i]) for i in np.argsort(-scores)]
    return [i for i in order if i not in seen][:k]


def test_exact_top_k_matches_brute_force_and_excludes_seen(model: Model) -> None:
    scorer = LoadedModel(model, exact_max_items=10_000, nprobe=8)
    assert scorer.exact
    timeline = [("i1", 1.0), ("i2", 2.0), ("unknown", 1.0)]
    u = scorer.encode_timeline(timeline)
    expected_u = (model.embeddings[1] + 2 * model.embeddings[2]) / 3
    np.testing.assert_allclose(u, expected_u, rtol=1e-6)
    seen = {"i1", "i2", "unknown"}
    got = scorer.top_k([Query(u, frozenset(seen), 10)])[0]
    assert [i for i, _ in got] == _brute(model, u, seen, 10)
    scores = [s for _, s in got]
    assert scores == sorted(scores, reverse=True)


def test_empty_user_gets_popularity_by_bias(model: Model) -> None:
    scorer = LoadedModel(model, exact_max_items=10_000, nprobe=8)
    got = scorer.top_k([Query(scorer.encode_sum(None, 0.0), frozenset(), 5)])[0]
    assert [i for i, _ in got] == [str(model.item_ids[i]) for i in np.argsort(-model.biases)[:5]]


def test_ivf_index_above_threshold_has_high_recall(model: Model) -> None:
    scorer = LoadedModel(model, exact_max_items=100, nprobe=64)
    assert not scorer.exact
    rng = np.random.default_rng(2)
    hits = 0
    for _ in range(20):
        rows = rng.choice(model.n_items, size=5, replace=False)
        u = model.embeddings[rows].mean(axis=0)
        got = {i for i, _ in scorer.top_k([Query(u, frozenset(), 10)])[0]}
        hits += len(got & set(_brute(model, u, set(), 10)))
    assert hits / 200 >= 0.9
