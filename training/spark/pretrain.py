"""The Spark engine's pre-training: training views → PMI → randomized SVD → embeddings,
scaled and normalised exactly as the numpy engine's (``pretrain.embeddings_from_svd``).

What reaches the driver: the catalog (O(items) ids), the held-out users (O(n_heldout)),
the rows with PMI signal (O(items)), the TSQR factors (O(partitions · (k + p)²)) and, at
the end, the (items, k) embedding table that the numpy zero-shot, fine-tuning and
artifact code take anyway. Never the views, the co-occurrences or the PMI matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pyspark.sql import DataFrame, SparkSession

from ledrec.training.dataset import Interactions
from ledrec.training.jobs import PretrainConfig
from ledrec.training.pretrain import embeddings_from_svd, svd_rank
from ledrec.training.spark.events import training_views, views_from_matrix
from ledrec.training.spark.pmi import pmi_entries
from ledrec.training.spark.rsvd import DEFAULT_BLOCK, block_matrix, randomized_svd
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
) -> Array:
    """(I, dim) pre-trained item embeddings from a views DataFrame (``user_id``, ``item``
    in [0, n_items)): ``pretrain.pretrain_embeddings`` on Spark."""
    entries = pmi_entries(views, min_count, smoothing)
    try:
        has_signal = np.zeros(n_items, dtype=bool)
        rows = [row[0] for row in entries.select("i").distinct().collect()]
        if not rows:  # nothing co-viewed: no direction for any item
            return np.zeros((n_items, dim), dtype=np.float32)
        has_signal[rows] = True
        matrix = block_matrix(entries, (n_items, n_items), block)
        try:
            k = svd_rank(n_items, dim)
            blocks, s = randomized_svd(matrix, k, n_iter=n_iter, seed=seed)
        finally:
            matrix.unpersist()
    finally:
        entries.unpersist()
    u = np.zeros((n_items, s.shape[0]), dtype=np.float64)
    for b, values in blocks.items():
        u[b * block : b * block + values.shape[0]] = values
    return embeddings_from_svd(u, s, has_signal, dim, scale_by_singular_values)


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
            config.n_iter, block=self.block,
        )  # fmt: skip
