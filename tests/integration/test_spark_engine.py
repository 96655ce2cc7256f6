"""The Spark training engine in local[2] against the numpy engine: the same training views,
the same PMI matrix entry for entry, the same SVD subspace, and ``ledrec train --engine
spark`` publishing a model version. One SparkSession for the module."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.linalg import subspace_angles

from ledrec.cli import main
from ledrec.training.dataset import from_events, load_events_file, load_movielens
from ledrec.training.jobs import NumpyPretrainer, PretrainConfig
from ledrec.training.pretrain import pmi_matrix, pretrain_embeddings
from ledrec.training.split import strong_generalization_split
from ledrec.training.synthetic import SyntheticConfig, iter_events, synthetic_interactions

pyspark_sql = pytest.importorskip("pyspark.sql", reason="the spark extra is not installed")
from pyspark import RDD  # noqa: E402

from ledrec.training.spark.events import (  # noqa: E402
    events_from_rows,
    read_events,
    read_movielens,
    training_views,
    views_from_matrix,
)
from ledrec.training.spark.pmi import Tile, pmi_tiles  # noqa: E402
from ledrec.training.spark.pretrain import SparkPretrainer, spark_pretrain_embeddings  # noqa: E402
from ledrec.training.spark.rsvd import block_matrix, randomized_svd  # noqa: E402
from ledrec.training.spark.session import spark_session  # noqa: E402

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def spark() -> Iterator[pyspark_sql.SparkSession]:
    session = spark_session("local[2]", 4)
    yield session
    session.stop()


def _assemble(tiles: list[Tile], shape: tuple[int, int], block: int) -> sp.csr_matrix:
    """Tiles collected to one matrix (tests only: the engine never does this)."""
    out = sp.lil_matrix(shape, dtype=np.float32)
    for (r, c), tile in tiles:
        out[r * block : r * block + tile.shape[0], c * block : c * block + tile.shape[1]] = tile
    return out.tocsr()


def _tiled(spark: pyspark_sql.SparkSession, matrix: sp.spmatrix, block: int) -> RDD[Tile]:
    m = sp.csr_matrix(matrix)
    tiles = [
        ((r, c), m[r * block : (r + 1) * block, c * block : (c + 1) * block])
        for r in range(-(-m.shape[0] // block))
        for c in range(-(-m.shape[1] // block))
    ]
    return spark.sparkContext.parallelize([t for t in tiles if t[1].nnz], 3)


def _write_events(path: Path, config: SyntheticConfig) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["user_id", "item_id", "type", "ts"])
        out.writerows(iter_events(config))
        out.writerow(["u0", "i0", "impression", "0"])  # a type neither engine counts


def _views_of(frame: pyspark_sql.DataFrame, user_ids: list[str], n_items: int) -> sp.csr_matrix:
    row = {u: k for k, u in enumerate(user_ids)}
    pairs = [(row[r[0]], r[1]) for r in frame.collect()]
    users, items = zip(*pairs, strict=True)
    ones = np.ones(len(pairs), dtype=np.float32)
    return sp.csr_matrix((ones, (users, items)), shape=(len(user_ids), n_items))


@pytest.mark.parametrize("kind", ["csv", "parquet", "movielens", "replay"])
def test_spark_reads_the_training_views_numpy_reads(
    spark: pyspark_sql.SparkSession, tmp_path: Path, kind: str
) -> None:
    config = SyntheticConfig(n_users=1500, n_items=80, n_events=20_000, seed=3)
    if kind == "movielens":
        rng = np.random.default_rng(0)
        lines = [
            f"{u:04d}::{m}::{rng.integers(1, 6)}::0"
            for u in range(1, 1400)
            for m in rng.choice(60, size=12, replace=False)
        ]
        (tmp_path / "ratings.dat").write_text("\n".join(lines) + "\n")
        data, frame = load_movielens(tmp_path), read_movielens(spark, tmp_path)
    elif kind == "replay":  # the trainer's bounded replay, held by the driver
        rows = [(user, item, type_) for user, item, type_, _ in iter_events(config)]
        data, frame = from_events(rows), events_from_rows(spark, rows)
    else:
        path = tmp_path / "events.csv"
        _write_events(path, config)
        if kind == "parquet":
            import pyarrow.csv as pv
            import pyarrow.parquet as pq

            pq.write_table(pv.read_csv(path), tmp_path / "events.parquet")
            path = tmp_path / "events.parquet"
        data, frame = load_events_file(path), read_events(spark, path)
    split = strong_generalization_split(data, n_heldout=50, seed=1, min_positives=2)
    assert split.train_users is not None and split.val_users is not None
    assert split.test_users is not None
    heldout = data.user_ids[np.concatenate([split.val_users, split.test_users])].tolist()
    views = training_views(frame, split.item_ids.tolist(), heldout)
    got = _views_of(views, data.user_ids[split.train_users].tolist(), len(split.item_ids))
    assert (got != split.train_views).nnz == 0
    assert got.nnz == split.train_views.nnz


def test_spark_pmi_equals_numpy_entry_for_entry(spark: pyspark_sql.SparkSession) -> None:
    rng = np.random.default_rng(0)
    popularity = rng.random(60) * 0.4
    views = sp.csr_matrix((rng.random((400, 60)) < popularity).astype(np.float32))
    expected = pmi_matrix(views, min_count=10, smoothing=0.75)
    assert 0 < expected.nnz < 60 * 59  # some entries clipped, some items cut
    assert (np.diff(expected.indptr) == 0).any()
    tiles = pmi_tiles(views_from_matrix(spark, views), 60, block=16, min_count=10, smoothing=0.75)
    got = _assemble(tiles.collect(), expected.shape, block=16)
    tiles.unpersist()
    assert got.nnz == expected.nnz and ((got > 0) != (expected > 0)).nnz == 0
    np.testing.assert_allclose(got.toarray(), expected.toarray(), rtol=1e-6, atol=0)


def _low_rank(n: int, rank: int, seed: int) -> sp.coo_matrix:
    """An (n, n) matrix with a clear spectral gap after ``rank``, rows 0-24 and columns
    50-74 empty (whole blocks of 25 without a tile)."""
    rng = np.random.default_rng(seed)
    left, right = rng.standard_normal((n, rank)), rng.standard_normal((rank, n))
    dense = left * np.geomspace(10, 3, rank) @ right + 0.05 * rng.standard_normal((n, n))
    dense[:25] = 0.0
    dense[:, 50:75] = 0.0
    return sp.coo_matrix(dense)


def test_spark_svd_spans_the_exact_subspace_reproducibly(spark: pyspark_sql.SparkSession) -> None:
    n, k = 90, 6
    a = _low_rank(n, k, seed=0)
    matrix = block_matrix(_tiled(spark, a, 25), (n, n), block=25)  # 4 × 4, the last ragged
    blocks, s = randomized_svd(matrix, k, n_iter=2, seed=7)
    again, _ = randomized_svd(matrix, k, n_iter=2, seed=7)
    matrix.unpersist()
    assert sorted(blocks) == [1, 2, 3]  # no tile in row block 0: its rows of U are zero
    u = np.vstack([np.zeros((25, k)), *(blocks[b] for b in (1, 2, 3))])
    exact_u, exact_s, _ = np.linalg.svd(a.toarray())
    assert u.shape == (n, k)
    np.testing.assert_allclose(u.T @ u, np.eye(k), atol=1e-10)
    np.testing.assert_allclose(s, exact_s[:k], rtol=1e-6)
    assert np.degrees(subspace_angles(u, exact_u[:, :k])).max() < 1e-3
    for b in blocks:  # the same seed, the same vectors (up to float summation order)
        np.testing.assert_allclose(again[b], blocks[b], atol=1e-10)


def test_spark_embeddings_match_the_numpy_engine(spark: pyspark_sql.SparkSession) -> None:
    data = synthetic_interactions(
        SyntheticConfig(n_users=2000, n_items=150, n_events=40_000, n_clusters=4, seed=2)
    )
    views = data.views
    expected = pretrain_embeddings(views, dim=4, seed=0, min_count=5, n_iter=5)
    got = spark_pretrain_embeddings(
        views_from_matrix(spark, views), data.n_items, dim=4, seed=0, min_count=5, block=64
    )
    assert got.shape == expected.shape and got.dtype == np.float32
    norms = np.linalg.norm(got, axis=1)
    assert np.all((np.abs(norms - 1) < 1e-5) | (norms == 0))
    np.testing.assert_array_equal(norms == 0, np.linalg.norm(expected, axis=1) == 0)
    # a unit row is the item's direction in the top-4 subspace: same up to a rotation
    assert np.degrees(subspace_angles(got, expected)).max() < 1.0


def test_ledrec_train_engine_spark_publishes_a_model(
    spark: pyspark_sql.SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.csv"
    _write_events(events, SyntheticConfig(n_users=3000, n_items=200, n_events=200_000, seed=5))
    store = tmp_path / "models"
    argv = ["--model-store", str(store), "train", "--engine", "spark", "--events", str(events)]
    assert main([*argv, "--svd-only", "--dim", "8"]) == 0, capsys.readouterr().err
    (manifest,) = store.rglob("manifest.json")
    provenance = json.loads(manifest.read_text())["provenance"]
    assert provenance["pretrain_engine"] == "spark"
    assert provenance["source"] == f"events:{events}"
    assert spark.sparkContext._jsc is not None  # the caller's session was left running

    data = load_events_file(events)
    split = strong_generalization_split(data, n_heldout=600, seed=0)
    numpy_svd = NumpyPretrainer()(data, split, PretrainConfig(dim=8), 0)
    spark_svd = SparkPretrainer(spark, read_events(spark, events))(
        data, split, PretrainConfig(dim=8), 0
    )
    assert np.degrees(subspace_angles(spark_svd, numpy_svd)).max() < 5.0
