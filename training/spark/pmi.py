"""Item co-occurrence and PMI with Spark shuffles: ``pretrain.pmi_matrix`` distributed.

The co-occurrence is a self-join of the views on the user (each user's timeline pairs up
with itself: Σ_u n_u² / 2 rows, the numpy engine's ``V^T V`` cost) followed by a count per
item pair; the marginals are one more aggregation. Nothing but one scalar (Σ_k c_k^α)
reaches the driver.
"""

from __future__ import annotations

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def cooccurrence(views: DataFrame, min_count: int = 10) -> DataFrame:
    """(i, j, count): the number of users who viewed both items i != j, among the items
    viewed by at least ``min_count`` users (the rare-item cut, applied before the pairs as
    ``keep @ C @ keep`` does)."""
    frequent = views.groupBy("item").count().where(F.col("count") >= min_count).select("item")
    kept = views.join(frequent, "item", "left_semi")
    left = kept.select("user_id", F.col("item").alias("i"))
    right = kept.select("user_id", F.col("item").alias("j"))
    # C is symmetric: count each pair once (i < j), half the rows to shuffle, then mirror
    upper = left.join(right, "user_id").where(F.col("i") < F.col("j"))
    counts = upper.groupBy("i", "j").agg(F.count(F.lit(1)).alias("count"))
    return counts.unionByName(counts.select(F.col("j").alias("i"), F.col("i").alias("j"), "count"))


def pmi_entries(views: DataFrame, min_count: int = 10, smoothing: float = 0.75) -> DataFrame:
    """(i, j, value) the non-zero entries of the positive PMI matrix, persisted (the caller
    unpersists it): ``PMI(i, j) = log(C_ij · Σ_k c_k^α / (c_i · c_j^α))`` with c the
    co-occurrence marginals and α = ``smoothing``, float32 values, zeros and negatives
    dropped - ``pretrain.pmi_matrix``'s formula, entry for entry."""
    counts = cooccurrence(views, min_count).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        marginal = counts.groupBy("i").agg(F.sum("count").cast("double").alias("c"))
        total = marginal.agg(F.sum(F.pow("c", smoothing))).first()
        context_sum = float(total[0]) if total is not None and total[0] is not None else 0.0
        rows = marginal.select("i", F.col("c").alias("c_i"))
        columns = marginal.select(F.col("i").alias("j"), F.pow("c", smoothing).alias("c_j"))
        pmi = F.log(F.col("count") * F.lit(context_sum) / (F.col("c_i") * F.col("c_j")))
        entries = (
            counts.join(rows, "i")
            .join(columns, "j")
            .select("i", "j", pmi.cast("float").alias("value"))
            .where(F.col("value") > 0)  # after the float32 cast, as numpy's eliminate_zeros
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        entries.count()  # materialised before its source is dropped
    finally:
        counts.unpersist()
    return entries
