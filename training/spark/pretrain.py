"""The Spark engine's pre-training: training views → PMI → randomized SVD → embeddings,
scaled and normalised exactly as the numpy engine's (``pretrain.embeddings_from_svd``).

What reaches the driver: the catalog (O(items) ids), the held-out users (O(n_heldout)),
Σ_k c_k^α, the rows with PMI signal (O(items)), the TSQR factors (O(partitions · (k +
p)²)) and, at the end, the (items, k) embedding table that the numpy zero-shot,
fine-tuning and artifact code take anyway. Never the views, the co-occurrences or the
PMI matrix.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from pyspark.sql import DataFrame, SparkSession

from ledrec.training.dataset import Interactions
from ledrec.training.jobs import PretrainConfig
from ledrec.training.pretrain import embeddings_from_svd, svd_rank
from ledrec.training.spark.events import training_views, views_from_matrix
from ledrec.training.spark.pmi import pmi_tiles
from ledrec.training.spark.rsvd import DEFAULT_BLOCK, block_matrix, randomized_svd
from ledrec.training.spark.session import spark_session
from ledrec.training.split import Split

Array = npt.NDArray[np.float32]


def spark_pretrain_embeddings(
    views: DataFrame,
    n_items: int,
    dim: int,
    seed: int = 0,
    min_count: int = 10,
    smoothing: float = 0.75,
    n_iter: int = 5,
    scale_by_singular_values: bool = False,
    block: int = DEFAULT_BLOCK,
    seconds: dict[str, float] | None = None,
) -> Array:
    """(I, dim) pre-trained item embeddings from a views DataFrame (``user_id``, ``item``
    in [0, n_items)): ``pretrain.pretrain_embeddings`` on Spark. ``seconds``, if given,
    receives the seconds of its two stages, "pmi" and "svd"."""
    clock = seconds if seconds is not None else {}
    start = time.perf_counter()
    tiles = pmi_tiles(views, n_items, block, min_count, smoothing)
    try:
        has_signal = np.zeros(n_items, dtype=bool)
        has_signal[tiles.flatMap(lambda t: _nonempty_rows(t[0][0], t[1], block)).collect()] = True
        clock["pmi"] = time.perf_counter() - start
        if not has_signal.any():  # nothing co-viewed: no direction for any item
            return np.zeros((n_items, dim), dtype=np.float32)
        start = time.perf_counter()
        matrix = block_matrix(tiles, (n_items, n_items), block)
        try:
            blocks, s = randomized_svd(matrix, svd_rank(n_items, dim), n_iter=n_iter, seed=seed)
        finally:
            matrix.unpersist()
        clock["svd"] = time.perf_counter() - start
    finally:
        tiles.unpersist()
    u = np.zeros((n_items, s.shape[0]), dtype=np.float64)
    for b, values in blocks.items():
        u[b * block : b * block + values.shape[0]] = values
    return embeddings_from_svd(u, s, has_signal, dim, scale_by_singular_values)


def _nonempty_rows(r: int, tile: sp.csr_matrix, block: int) -> list[int]:
    """The catalog rows of tile r's rows that hold a PMI value."""
    rows: list[int] = (r * block + np.flatnonzero(np.diff(tile.indptr))).tolist()
    return rows


@dataclass
class SparkPretrainer:
    """The pre-trainer of ``run_train`` / ``run_evaluate`` on Spark.

    ``events`` (a DataFrame of ``user_id, item_id, type``, e.g. ``events.read_events``)
    must hold the events ``data`` was built from; the split's training views are taken
    from it. Without events (synthetic data), the split's views matrix is shipped from the
    driver instead.
    """

    spark: SparkSession
    events: DataFrame | None = None
    block: int = DEFAULT_BLOCK
    engine: str = "spark"
    seconds: dict[str, float] = field(default_factory=dict)  # the last call's stages

    def __call__(
        self, data: Interactions, split: Split, config: PretrainConfig, seed: int
    ) -> Array:
        if self.events is None:
            views = views_from_matrix(self.spark, split.train_views)
        else:
            if split.val_users is None or split.test_users is None:
                raise ValueError("the split does not say which users it held out")
            heldout = data.user_ids[np.concatenate([split.val_users, split.test_users])]
            views = training_views(self.events, split.item_ids.tolist(), heldout.tolist())
        return spark_pretrain_embeddings(
            views, len(split.item_ids), config.dim, seed, config.min_count, config.smoothing,
            config.n_iter, block=self.block, seconds=self.seconds,
        )  # fmt: skip


@contextmanager
def spark_engine(
    master: str, read_events: Callable[[SparkSession], DataFrame | None]
) -> Iterator[SparkPretrainer]:
    """A SparkPretrainer on a session on ``master`` over the events ``read_events`` gives
    (None: the split's views matrix). The session is stopped at the end if this started
    it; a caller's active session is the caller's to stop."""
    ours = SparkSession.getActiveSession() is None
    spark = spark_session(master)
    try:
        yield SparkPretrainer(spark, read_events(spark))
    finally:
        if ours:
            spark.stop()
