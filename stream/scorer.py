"""Scoring: a user's running sum → ``u = sum / weight`` → faiss top-k of ``<u, v_i> + b_i``.

Seen items are excluded by asking faiss for ``k + |seen|`` and filtering. An unknown or
empty user has ``u = 0``, so the ranking is by bias alone: the popularity fallback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np
import numpy.typing as npt

from stream.artifact import INDEX_FILE, Model
from stream.index import build_index, deserialize, set_nprobe
from stream.state import window_sum


@dataclass(frozen=True)
class Query:
    """One request, encoded: the user vector and what to leave out."""

    user_vector: npt.NDArray[np.float32]  # (d,), zeros for the popularity fallback
    seen: frozenset[str]
    k: int


class Scorer:
    """One loaded model version and its index."""

    def __init__(self, model: Model, exact_max_items: int, nprobe: int) -> None:
        self.model = model
        index_path = model.path / INDEX_FILE if model.path is not None else None
        if index_path is not None and index_path.exists():
            self.index = deserialize(index_path.read_bytes())  # checksummed with the model
        else:
            self.index = build_index(model, exact_max_items)
        set_nprobe(self.index, nprobe)
        self.exact = isinstance(self.index, faiss.IndexFlat)

    @property
    def version(self) -> str:
        return self.model.version

    def encode_sum(
        self, total: npt.NDArray[np.float64] | None, weight: float
    ) -> npt.NDArray[np.float32]:
        """``u = sum / weight``; zeros when the user has no known item."""
        if total is None or weight <= 0:
            return np.zeros(self.model.dim, dtype=np.float32)
        return (total / weight).astype(np.float32)

    def encode_timeline(self, timeline: Sequence[tuple[str, float]]) -> npt.NDArray[np.float32]:
        total, weight = window_sum(self.model, timeline)
        return self.encode_sum(total, weight)

    def top_k(self, queries: Sequence[Query]) -> list[list[tuple[str, float]]]:
        """Top-k (item id, score) per query, best first, seen items excluded."""
        if not queries:
            return []
        n_items = self.model.n_items
        fetch = min(n_items, max(q.k + len(q.seen) for q in queries))
        x = np.empty((len(queries), self.model.dim + 1), dtype=np.float32)
        for j, q in enumerate(queries):
            x[j, :-1] = q.user_vector
        x[:, -1] = 1.0
        scores, rows = self.index.search(x, fetch)
        ids = self.model.item_ids
        out: list[list[tuple[str, float]]] = []
        for j, q in enumerate(queries):
            result: list[tuple[str, float]] = []
            for score, row in zip(scores[j].tolist(), rows[j].tolist(), strict=True):
                if row < 0:
                    break
                item = str(ids[row])
                if item in q.seen:
                    continue
                result.append((item, score))
                if len(result) == q.k:
                    break
            out.append(result)
        return out
