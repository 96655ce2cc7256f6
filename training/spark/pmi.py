"""Item co-occurrence and PMI with Spark shuffles: ``pretrain.pmi_matrix`` distributed, as
block tiles ready for the randomized SVD (``rsvd.BlockMatrix``).

1. The rare-item cut (a count per item) and a shuffle of the views by user, so that each
   partition holds whole timelines.
2. Per partition, the partial co-occurrence C_p = X_pᵀ X_p of its users' (users × items)
   views - the numpy engine's sparse product on a slice of the users - cut into
   ``block`` × ``block`` tiles; a second shuffle sums the tiles: C = Σ_p C_p.
3. The marginals c (row sums, per row block), Σ_k c_k^α (one scalar on the driver), and
   the PMI of every tile, its marginal blocks brought to it by joins.

A task holds its users' views and its C_p: at most min(I², Σ_u n_u²) entries over its
users, so more partitions bound the memory; the second shuffle moves Σ_p nnz(C_p).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from pyspark import RDD, StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

Tile = tuple[tuple[int, int], sp.csr_matrix]  # ((row block, column block), tile)
Vector = npt.NDArray[np.float64]
CACHE = StorageLevel.MEMORY_AND_DISK


def frequent_views(views: DataFrame, min_count: int) -> DataFrame:
    """The views of items viewed by at least ``min_count`` users (the rare-item cut,
    applied before the pairs as ``keep @ C @ keep`` does)."""
    frequent = views.groupBy("item").count().where(F.col("count") >= min_count).select("item")
    return views.join(frequent, "item", "left_semi")


def cooccurrence_tiles(
    views: DataFrame, n_items: int, block: int, min_count: int = 10, partitions: int | None = None
) -> RDD[Tile]:
    """C as tiles: the number of users who viewed both items i != j (float64 counts), among
    the items kept by the rare-item cut; only tiles with a non-zero."""
    parts = partitions or views.sparkSession.sparkContext.defaultParallelism
    kept = frequent_views(views, min_count).select("user_id", "item")
    timelines = kept.repartition(parts, "user_id")
    partial = timelines.rdd.mapPartitions(lambda rows: _partial_tiles(rows, n_items, block))
    return partial.reduceByKey(lambda a, b: a + b)


def _partial_tiles(rows: Iterable[Any], n_items: int, block: int) -> Iterator[Tile]:
    """C_p = X_pᵀ X_p of one partition's whole timelines, zero diagonal, as tiles."""
    users: list[str] = []
    items: list[int] = []
    for row in rows:
        users.append(row[0])
        items.append(row[1])
    if not users:
        return
    _, user_rows = np.unique(np.array(users), return_inverse=True)
    ones = np.ones(len(items), dtype=np.float64)
    x = sp.csr_matrix((ones, (user_rows, np.array(items))), shape=(user_rows.max() + 1, n_items))
    counts = (x.T @ x).tocoo()
    off_diagonal = counts.row != counts.col
    yield from _tiles(counts.row[off_diagonal], counts.col[off_diagonal],
                      counts.data[off_diagonal], (n_items, n_items), block)  # fmt: skip


def _tiles(
    i: npt.NDArray[np.integer],
    j: npt.NDArray[np.integer],
    values: npt.NDArray[np.floating],
    shape: tuple[int, int],
    block: int,
) -> Iterator[Tile]:
    """(i, j, value) entries of a ``shape`` matrix as its non-empty csr tiles."""
    rb, cb = i // block, j // block
    order = np.lexsort((cb, rb))
    rb, cb, i, j, values = rb[order], cb[order], i[order], j[order], values[order]
    starts = np.flatnonzero(np.r_[True, (rb[1:] != rb[:-1]) | (cb[1:] != cb[:-1])])
    for start, end in zip(starts, np.r_[starts[1:], len(rb)], strict=True):
        r, c = int(rb[start]), int(cb[start])
        size = (min(block, shape[0] - r * block), min(block, shape[1] - c * block))
        local = (i[start:end] - r * block, j[start:end] - c * block)
        yield (r, c), sp.csr_matrix((values[start:end], local), shape=size)


def pmi_tiles(
    views: DataFrame,
    n_items: int,
    block: int,
    min_count: int = 10,
    smoothing: float = 0.75,
    partitions: int | None = None,
) -> RDD[Tile]:
    """The positive PMI matrix as tiles (float32 values, zeros and negatives dropped),
    persisted (the caller unpersists it): ``PMI(i, j) = log(C_ij · Σ_k c_k^α /
    (c_i · c_j^α))`` with c the co-occurrence marginals and α = ``smoothing`` -
    ``pretrain.pmi_matrix``'s formula, entry for entry."""
    counts = cooccurrence_tiles(views, n_items, block, min_count, partitions).persist(CACHE)
    try:
        # c is C's row sums; C is symmetric, so row block b's marginals serve column block b
        marginal = counts.map(lambda t: (t[0][0], _row_sums(t[1]))).reduceByKey(np.add)
        marginal = marginal.persist(CACHE)
        context_sum = float(marginal.map(lambda kv: float(np.sum(kv[1] ** smoothing))).sum())
        by_row = counts.map(lambda t: (t[0][0], (t[0][1], t[1]))).join(marginal)
        by_column = by_row.map(lambda kv: (kv[1][0][0], (kv[0], kv[1][0][1], kv[1][1])))
        pmi = by_column.join(marginal).flatMap(
            lambda kv: _pmi_tile(kv[1][0][0], kv[0], kv[1][0][1], kv[1][0][2], kv[1][1],
                                 context_sum, smoothing)
        )  # fmt: skip
        pmi = pmi.persist(CACHE)
        pmi.count()  # materialised before its sources are dropped
        marginal.unpersist()
    finally:
        counts.unpersist()
    return pmi


def _row_sums(tile: sp.csr_matrix) -> Vector:
    sums: Vector = np.asarray(tile.sum(axis=1), dtype=np.float64).ravel()
    return sums


def _pmi_tile(
    r: int,
    c: int,
    counts: sp.csr_matrix,
    row_marginal: Vector,
    column_marginal: Vector,
    context_sum: float,
    smoothing: float,
) -> list[Tile]:
    """Tile (r, c) of the positive PMI from its counts and the marginals of its rows and
    columns; no tile if every value is clipped."""
    entries = counts.tocoo()
    context = column_marginal[entries.col] ** smoothing
    with np.errstate(divide="ignore"):
        pmi = np.log(entries.data * context_sum / (row_marginal[entries.row] * context))
    values = np.maximum(pmi, 0.0).astype(np.float32)
    keep = values > 0  # after the float32 cast, as numpy's eliminate_zeros
    if not keep.any():
        return []
    tile = sp.csr_matrix((values[keep], (entries.row[keep], entries.col[keep])), shape=counts.shape)
    return [((r, c), tile)]
