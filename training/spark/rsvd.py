"""Randomized SVD of a distributed sparse matrix (Halko, Martinsson & Tropp 2011,
Algorithms 4.4 and 5.1): the algorithm of Criteo's spark-rsvd on PySpark's own RDDs.

Two kinds of distributed matrices, both hash-partitioned by block number into the same
``partitions`` partitions:
- ``BlockMatrix``: a sparse (m, n) matrix as csr tiles of ``block`` × ``block`` (e.g.
  ``pmi.pmi_tiles``), kept
  keyed by column block (the blocks of X that ``A @ X`` needs) and, for Aᵀ, by row block;
- a tall dense (m, l) matrix (``Dense``): numpy row blocks keyed by block number; a block
  that is not there is zero.

``A @ X`` joins each tile with the block of X it multiplies - the two sides share their
partitioner, so the join moves nothing - and sums the partial products per row block
(the one shuffle of a product). Orthonormalisation is a tall-skinny QR (TSQR): a QR per
partition, then a QR of the stacked R factors on the driver. The driver holds
O(partitions · l²) numbers, never O(m · l); only ``randomized_svd``'s caller gets U.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from pyspark import RDD, SparkContext, StorageLevel
from pyspark.broadcast import Broadcast

Block = npt.NDArray[np.float64]
Dense = RDD[tuple[int, Block]]  # (block number, its (rows, l) values)
Tiles = RDD[tuple[int, tuple[int, sp.csr_matrix]]]  # (input block, (output block, tile))

DEFAULT_BLOCK = 4096
CACHE = StorageLevel.MEMORY_AND_DISK


@dataclass(frozen=True)
class BlockMatrix:
    """A (m, n) sparse matrix for products with A and Aᵀ, its tiles persisted."""

    by_column: Tiles  # (c, (r, A_rc)): A @ X needs X_c for row block r
    by_row: Tiles  # (r, (c, A_rcᵀ)): Aᵀ @ X needs X_r for row block c of Aᵀ
    shape: tuple[int, int]
    block: int
    partitions: int

    def unpersist(self) -> None:
        self.by_column.unpersist()
        self.by_row.unpersist()


def block_matrix(
    tiles: RDD[tuple[tuple[int, int], sp.csr_matrix]],
    shape: tuple[int, int],
    block: int,
    partitions: int | None = None,
) -> BlockMatrix:
    """((row block, column block), csr tile) as a BlockMatrix (float64 tiles) in
    ``partitions`` partitions (default: Spark's default parallelism, at most one per block:
    every task of a product is a fixed cost)."""
    n_blocks = -(-max(shape) // block)
    parts = partitions or min(tiles.context.defaultParallelism, n_blocks)
    exact = tiles.mapValues(lambda tile: tile.astype(np.float64))
    by_column = exact.map(lambda t: (t[0][1], (t[0][0], t[1]))).partitionBy(parts)
    by_row = exact.map(lambda t: (t[0][0], (t[0][1], t[1].T.tocsr()))).partitionBy(parts)
    return BlockMatrix(by_column.persist(CACHE), by_row.persist(CACHE), shape, block, parts)


def _size(index: int, length: int, block: int) -> int:
    """Rows (or columns) of block ``index`` of a ``length`` dimension cut into blocks."""
    return min(block, length - index * block)


def multiply(tiles: Tiles, x: Dense, partitions: int) -> Dense:
    """A @ X with ``tiles`` = ``a.by_column`` (or Aᵀ @ X with ``a.by_row``): partial
    products of each tile with the block of X it meets, summed per output block."""
    partials = tiles.join(x, partitions).map(lambda kv: (kv[1][0][0], kv[1][0][1] @ kv[1][1]))
    return partials.reduceByKey(np.add, partitions)


def gaussian(
    sc: SparkContext, n_rows: int, width: int, block: int, seed: int, partitions: int
) -> Dense:
    """An (n_rows, width) standard Gaussian matrix; block b drawn from the generator seeded
    (seed, b), so the same seed gives the same matrix however Spark partitions it."""
    n_blocks = -(-n_rows // block)
    blocks = sc.parallelize(range(n_blocks), partitions)
    return blocks.map(lambda b: (b, _gaussian_block(b, n_rows, width, block, seed))).partitionBy(
        partitions
    )


def _gaussian_block(b: int, n_rows: int, width: int, block: int, seed: int) -> Block:
    rng = np.random.default_rng([seed, b])
    return rng.standard_normal((_size(b, n_rows, block), width))


def _leaf_qr(partition: int, blocks: Iterable[tuple[int, Block]]) -> list[Any]:
    """One TSQR leaf: the partition's blocks stacked in block order (so that a recomputed
    partition gives the same factors), then their QR."""
    ordered = sorted(blocks, key=lambda kv: kv[0])
    if not ordered:
        return []
    q, r = np.linalg.qr(np.vstack([rows for _, rows in ordered]))
    return [(partition, [b for b, _ in ordered], [rows.shape[0] for _, rows in ordered], q, r)]


def _leaf_blocks(leaf: Any, mixing: Broadcast[dict[int, Block]]) -> list[tuple[int, Block]]:
    """The leaf's rows of the final Q: its own Q times its slice of the top-level Q."""
    partition, numbers, sizes, q, _ = leaf
    rows = q @ mixing.value[partition]
    bounds = np.cumsum([0, *sizes])
    return [(b, rows[bounds[k] : bounds[k + 1]]) for k, b in enumerate(numbers)]


def _leaf_factors(leaves: RDD[Any]) -> list[tuple[int, Block]]:
    """The leaves' R factors in partition order: partitions × (l, l) numbers."""
    factors = sorted(leaves.map(lambda leaf: (leaf[0], leaf[4])).collect(), key=lambda f: f[0])
    if not factors:
        raise ValueError("TSQR of an empty matrix")
    return factors


class Orthonormaliser:
    """TSQR over Dense matrices, one Q after the other: a Q stays persisted until the QR
    of the product that reads it has run; broadcasts live until ``close``."""

    def __init__(self, sc: SparkContext) -> None:
        self.sc = sc
        self.broadcasts: list[Broadcast[Any]] = []
        self.previous: list[RDD[Any]] = []

    def qr(self, y: Dense) -> tuple[Dense, Block]:
        """Y = Q R: Q with orthonormal columns as row blocks (persisted, computed with the
        next product that reads it), R on the driver."""
        leaves = y.mapPartitionsWithIndex(_leaf_qr, preservesPartitioning=True).persist(CACHE)
        factors = _leaf_factors(leaves)  # runs the product, reading the previous Q
        self._release()
        q_top, r = np.linalg.qr(np.vstack([factor for _, factor in factors]))
        bounds = np.cumsum([0, *(factor.shape[0] for _, factor in factors)])
        shared = self.sc.broadcast(
            {p: q_top[bounds[k] : bounds[k + 1]] for k, (p, _) in enumerate(factors)}
        )
        self.broadcasts.append(shared)
        # blocks stay in the partition their number hashes to: the partitioner holds
        q = leaves.flatMap(lambda leaf: _leaf_blocks(leaf, shared), preservesPartitioning=True)
        self.previous = [leaves, q.persist(CACHE)]
        return q, r

    def r_factor(self, y: Dense) -> Block:
        """The R of Y = Q R, without Q."""
        factors = _leaf_factors(y.mapPartitionsWithIndex(_leaf_qr))
        _, r = np.linalg.qr(np.vstack([factor for _, factor in factors]))
        return r

    def _release(self) -> None:
        for rdd in self.previous:
            rdd.unpersist()
        self.previous = []

    def close(self) -> None:
        self._release()
        for shared in self.broadcasts:
            shared.destroy()
        self.broadcasts.clear()


def randomized_svd(
    a: BlockMatrix, k: int, n_oversamples: int = 10, n_iter: int = 5, seed: int = 0
) -> tuple[dict[int, Block], npt.NDArray[np.float64]]:
    """The top ``k`` left singular vectors of A, as row blocks collected to the driver
    ({block: (rows, k)}; absent blocks are zero rows), and the singular values.

    Randomized subspace iteration with a QR after every product (the numpy engine's
    scikit-learn normalises with LU in between; both span the same subspace to the
    precision of the method): Y = AΩ with Gaussian Ω (n, k + ``n_oversamples``), then
    ``n_iter`` rounds of Q ← qr(A·qr(AᵀQ)); B = QᵀA's SVD comes from the R of the TSQR
    of Bᵀ = AᵀQ. The collected U is the one O(m · k) object on the driver: the embedding
    table.
    """
    m, n = a.shape
    width = min(k + n_oversamples, m, n)
    sc = a.by_column.context
    ortho = Orthonormaliser(sc)
    try:
        omega = gaussian(sc, n, width, a.block, seed, a.partitions)
        q, _ = ortho.qr(multiply(a.by_column, omega, a.partitions))
        for _ in range(n_iter):
            z, _ = ortho.qr(multiply(a.by_row, q, a.partitions))
            q, _ = ortho.qr(multiply(a.by_column, z, a.partitions))
        # B = QᵀA = Rᵀ Q_bᵀ with AᵀQ = Q_b R: B's left singular vectors are R's right ones
        r = ortho.r_factor(multiply(a.by_row, q, a.partitions))
        _, s, vt = np.linalg.svd(r, full_matrices=False)
        rotation = sc.broadcast(vt.T[:, :k])
        ortho.broadcasts.append(rotation)
        u = dict(q.mapValues(lambda rows: rows @ rotation.value).collect())
    finally:
        ortho.close()
    return u, s[:k]
