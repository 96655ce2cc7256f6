"""One loaded model version: a user's sum → ``u = sum / weight`` → top-k of ``<u, v_i> + b_i``.

Seen items are excluded by asking faiss for ``k + |seen|`` and filtering. An unknown or
empty user has ``u = 0``, so the ranking is by bias alone: the popularity fallback.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np
import numpy.typing as npt

from ledrec.stream.artifact import INDEX_FILE, Model
from ledrec.stream.encoder import user_vector, window_sum
from ledrec.stream.index import HeadTailIndex, build_index, deserialize, set_nprobe

SEEN_MARGIN = 16  # first search: k + at most this many, for seen items to drop


@dataclass(frozen=True)
class Query:
    """One request, encoded: the user vector and what to leave out."""

    user_vector: npt.NDArray[np.float32]  # (d,), zeros for the popularity fallback
    seen: frozenset[str]
    k: int


class LoadedModel:
    """One model version loaded for serving: its embeddings, biases and faiss index.

    (A *scorer* is the process that serves requests; it holds one or more of these.)
    """

    def __init__(
        self,
        model: Model,
        exact_max_items: int,
        nprobe: int,
        index: faiss.Index | HeadTailIndex | None = None,
    ) -> None:
        """``index``: one already built for ``model`` (else read from its artifact or built)."""
        self.model = model
        index_path = model.path / INDEX_FILE if model.path is not None else None
        if index is not None:
            self.index = index
        elif index_path is not None and index_path.exists():
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
        return user_vector(total, weight, self.model.dim)

    def timeline_sum(
        self, timeline: Sequence[tuple[str, float]]
    ) -> tuple[npt.NDArray[np.float64], float]:
        """``(Σ w·v, Σ w)`` over the (item id, weight) pairs this version knows."""
        return window_sum(self.model, timeline)

    def encode_timeline(self, timeline: Sequence[tuple[str, float]]) -> npt.NDArray[np.float32]:
        return self.encode_sum(*self.timeline_sum(timeline))

    def unknown_items(self, items: Sequence[str]) -> int:
        """How many of ``items`` this version does not know (they count toward nothing)."""
        row_of = self.model.row_of
        return sum(1 for item in items if item not in row_of)

    def top_k(self, queries: Sequence[Query]) -> list[list[tuple[str, float]]]:
        """Top-k (item id, score) per query, best first, seen items excluded.

        A first search fetches ``k`` plus at most ``SEEN_MARGIN`` more; only the queries
        with more seen items than that among their results are searched again with
        ``k + |seen|`` (the exact answer either way, at a fraction of the heap work).
        """
        if not queries:
            return []
        n_items = self.model.n_items
        x = np.empty((len(queries), self.model.dim + 1), dtype=np.float32)
        for j, q in enumerate(queries):
            x[j, :-1] = q.user_vector
        x[:, -1] = 1.0
        fetch = min(n_items, max(q.k + min(len(q.seen), SEEN_MARGIN) for q in queries))
        out = self._filter(queries, *self.index.search(x, fetch))
        again = [
            j
            for j, q in enumerate(queries)
            if len(out[j]) < q.k and min(n_items, q.k + len(q.seen)) > fetch
        ]
        if again:
            retry = [queries[j] for j in again]
            full = min(n_items, max(q.k + len(q.seen) for q in retry))
            results = self._filter(retry, *self.index.search(x[again], full))
            for j, result in zip(again, results, strict=True):
                out[j] = result
        return out

    def _filter(
        self,
        queries: Sequence[Query],
        scores: npt.NDArray[np.float32],
        rows: npt.NDArray[np.int64],
    ) -> list[list[tuple[str, float]]]:
        ids = self._ids
        out: list[list[tuple[str, float]]] = []
        for j, q in enumerate(queries):
            result: list[tuple[str, float]] = []
            for score, row in zip(scores[j].tolist(), rows[j].tolist(), strict=True):
                if row < 0:
                    break
                item = ids[row]
                if item in q.seen:
                    continue
                result.append((item, score))
                if len(result) == q.k:
                    break
            out.append(result)
        return out

    @functools.cached_property
    def _ids(self) -> list[str]:
        """Item ids as Python strings (indexing a numpy unicode array costs more per row)."""
        return [str(i) for i in self.model.item_ids.tolist()]
