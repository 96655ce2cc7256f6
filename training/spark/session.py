"""The SparkSession the Spark engine runs on: ``local[N]`` or a cluster URL."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping

from pyspark.sql import SparkSession

DEFAULT_MASTER = "local[2]"
LOCAL_DRIVER_MEMORY = "4g"  # ``conf={"spark.driver.memory": ...}`` overrides it


def default_shuffle_partitions(master: str) -> int | None:
    """SQL shuffle partitions: a few per local core (Spark's 200 make tiny tasks on one
    machine); on a cluster, None: the cluster's own setting. (RDDs keep Spark's default
    parallelism: the cores.)"""
    if master == "local":
        return 4
    match = re.fullmatch(r"local\[(\d+|\*)(?:,\d+)?\]", master)
    if match is None:
        return None
    cores = match.group(1)
    return 4 * ((os.cpu_count() or 1) if cores == "*" else int(cores))


def spark_session(
    master: str = DEFAULT_MASTER,
    shuffle_partitions: int | None = None,
    conf: Mapping[str, str] | None = None,
    app_name: str = "ledrec-train",
) -> SparkSession:
    """A SparkSession on ``master``, UI and console progress bars off.

    Python workers run this interpreter in local mode (unless ``PYSPARK_PYTHON`` says); on a
    cluster, every executor needs the same ``ledrec[spark]`` installed, since the block
    products ship functions of ``ledrec.training.spark`` to them.
    """
    builder = SparkSession.builder.master(master).appName(app_name)
    builder = builder.config("spark.ui.enabled", "false")
    # progress is the training job's one line per stage, not Spark's redrawn bars
    builder = builder.config("spark.ui.showConsoleProgress", "false")
    partitions = shuffle_partitions or default_shuffle_partitions(master)
    if partitions is not None:
        builder = builder.config("spark.sql.shuffle.partitions", str(partitions))
    if master.startswith("local"):
        # PySpark starts its workers with $PYSPARK_PYTHON, else whatever python3 is on PATH
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        # local mode keeps every shuffle and persisted tile in the driver's JVM; Spark's 1g
        # default ran out of heap at MovieLens-1M's size (with a SQL self-join co-occurrence)
        builder = builder.config("spark.driver.memory", LOCAL_DRIVER_MEMORY)
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
