"""top_k's short first search falls back to k + |seen| exactly when seen items crowd it."""

from __future__ import annotations

import numpy as np

from ledrec.stream.index import augmented
from ledrec.stream.loaded_model import SEEN_MARGIN, LoadedModel, Query
from tests.helpers import random_model


def test_many_seen_items_at_the_top_still_give_the_exact_unseen_top_k() -> None:
    model = random_model(n_items=500, dim=8, seed=3)
    scorer = LoadedModel(model, exact_max_items=10_000, nprobe=1)
    rng = np.random.default_rng(0)
    queries = []
    for n_seen in (0, 3, SEEN_MARGIN, SEEN_MARGIN + 1, 4 * SEEN_MARGIN):
        u = rng.normal(size=8).astype(np.float32)
        order = np.argsort(-(augmented(model) @ np.append(u, 1.0)))
        seen = frozenset(str(model.item_ids[r]) for r in order[:n_seen])  # the very top
        queries.append((Query(u, seen, 10), order))
    got = scorer.top_k([q for q, _ in queries])  # one batch: some need the second search
    for (query, order), result in zip(queries, got, strict=True):
        expected = [
            str(model.item_ids[r]) for r in order if str(model.item_ids[r]) not in query.seen
        ]
        assert [item for item, _ in result] == expected[:10]
