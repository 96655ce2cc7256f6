"""One contract for both indexes a loaded version may hold: the exact one and the head +
IVF one (probing every list, so its answers must be exact too): the same encoder, the same
seen filter, the same popularity fallback, the brute-force top-k."""

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


# (exact_max_items, nprobe): 500 items fit the exact index; above 100 a head + IVF one,
# every list probed
INDEXES = {"exact": (10_000, 8), "head+ivf": (100, 10_000)}


@pytest.fixture(params=list(INDEXES), ids=list(INDEXES))
def loaded(request: pytest.FixtureRequest, model: Model) -> LoadedModel:
    exact_max_items, nprobe = INDEXES[request.param]
    loaded = LoadedModel(model, exact_max_items, nprobe)
    assert loaded.exact == (request.param == "exact")
    return loaded


def _brute(model: Model, u: np.ndarray, seen: set[str], k: int) -> list[str]:
    scores = model.embeddings @ u + model.biases
    order = [str(model.item_ids[i]) for i in np.argsort(-scores)]
    return [i for i in order if i not in seen][:k]


@pytest.mark.contract
def test_top_k_matches_brute_force_and_excludes_seen(model: Model, loaded: LoadedModel) -> None:
    scorer = loaded
    timeline = [("i1", 1.0), ("i2", 2.0), ("unknown", 1.0)]
    u = scorer.encode_timeline(timeline)
    expected_u = (model.embeddings[1] + 2 * model.embeddings[2]) / 3
    np.testing.assert_allclose(u, expected_u, rtol=1e-6)
    seen = {"i1", "i2", "unknown"}
    got = scorer.top_k([Query(u, frozenset(seen), 10)])[0]
    assert [i for i, _ in got] == _brute(model, u, seen, 10)
    scores = [s for _, s in got]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.contract
def test_empty_user_gets_popularity_by_bias(model: Model, loaded: LoadedModel) -> None:
    scorer = loaded
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
