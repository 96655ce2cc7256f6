"""Events as Spark DataFrames, read as the numpy loaders read them (training/dataset.py),
and the training views of a split.

An events DataFrame has the string columns ``user_id, item_id, type``; a views DataFrame
has ``user_id`` and ``item`` (the item's row in the split's catalog), one row per distinct
(user, item) viewed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ledrec.training.dataset import CLICK_TYPES, VIEW_TYPES

EVENT_COLUMNS = ("user_id", "item_id", "type")
EVENT_SCHEMA = "user_id string, item_id string, type string"


def read_events(spark: SparkSession, path: Path | str) -> DataFrame:
    """Events from a ``.parquet`` file/directory or a CSV file with a header naming at least
    ``user_id,item_id,type`` (``dataset.load_events_file``'s inputs)."""
    path = Path(path)
    if path.suffix == ".parquet" or path.is_dir():
        frame = spark.read.parquet(str(path))
    else:  # every column a string, as the csv module reads them
        frame = spark.read.option("header", True).csv(str(path))
    missing = [name for name in EVENT_COLUMNS if name not in frame.columns]
    if missing:
        raise ValueError(f"{path}: no column {missing}; events need user_id,item_id,type")
    return frame.select(*(F.col(name).cast("string") for name in EVENT_COLUMNS))


def read_movielens(spark: SparkSession, path: Path | str) -> DataFrame:
    """MovieLens ``ratings.csv`` (with a header) or ``ratings.dat`` (``u::m::r::ts``) as
    events: every rating a view, ratings >= 4 clicks (``dataset.load_movielens``'s rule)."""
    path = Path(path)
    if (path / "ratings.csv").exists():
        frame = spark.read.option("header", True).csv(str(path / "ratings.csv"))
        user, item, rating = (F.col(name) for name in frame.columns[:3])
    elif (path / "ratings.dat").exists():
        fields = F.split(F.col("value"), "::")
        frame = spark.read.text(str(path / "ratings.dat"))
        user, item, rating = fields[0], fields[1], fields[2]
    else:
        raise FileNotFoundError(f"no ratings.csv or ratings.dat in {path}")
    rating = rating.cast("double")
    return frame.select(
        # ids as numbers, then strings: "0001" is user "1", as numpy parses it
        user.cast("double").cast("long").cast("string").alias("user_id"),
        item.cast("double").cast("long").cast("string").alias("item_id"),
        F.when(rating >= 4, F.lit("click")).otherwise(F.lit("view")).alias("type"),
    )


def events_from_rows(spark: SparkSession, rows: Iterable[tuple[str, str, str]]) -> DataFrame:
    """(user_id, item_id, type) rows held by the driver, e.g. a bounded replay of the events
    topic (``stream.replay.replay_events``), as an events DataFrame."""
    return spark.createDataFrame(list(rows), EVENT_SCHEMA)


def training_views(
    events: DataFrame, item_ids: Sequence[str], heldout_users: Sequence[str]
) -> DataFrame:
    """The split's training views: events of a viewing type by users not held out, on the
    catalog ``item_ids`` (an item's position is its ``item`` row), one row per distinct
    (user, item) - the Spark side of ``Split.train_views``.

    The catalog and the held-out users come from the driver: O(items) and O(held-out users).
    """
    spark = events.sparkSession
    catalog = spark.createDataFrame(
        [(row, str(item)) for row, item in enumerate(item_ids)], "item int, item_id string"
    )
    heldout = spark.createDataFrame([(str(u),) for u in heldout_users], "user_id string")
    kinds = sorted(set(VIEW_TYPES) | set(CLICK_TYPES))  # numpy: every click is a view
    return (
        events.where(F.col("type").isin(kinds))
        .join(F.broadcast(heldout), "user_id", "left_anti")
        .join(catalog, "item_id")
        .select("user_id", "item")
        .distinct()
    )


def views_from_matrix(spark: SparkSession, views: sp.csr_matrix, chunk: int = 100_000) -> DataFrame:
    """A (U, I) views matrix held by the driver (synthetic data) as a views DataFrame whose
    ``user_id`` is the row number."""
    coo = views.tocoo()
    keep = coo.data > 0  # explicit zeros are not views
    users, items = coo.row[keep].astype(np.int64), coo.col[keep].astype(np.int32)
    chunks = [
        (users[start : start + chunk], items[start : start + chunk])
        for start in range(0, len(users), chunk)
    ]
    rows = spark.sparkContext.parallelize(chunks, max(1, len(chunks))).flatMap(_chunk_rows)
    return spark.createDataFrame(rows, "user_id string, item int")


def _chunk_rows(
    chunk: tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]],
) -> list[tuple[str, int]]:
    users, items = chunk
    return [(str(u), int(i)) for u, i in zip(users.tolist(), items.tolist(), strict=True)]
