from pathlib import Path

import numpy as np

from ledrec.training.dataset import from_events, load_csv, load_movielens


def test_load_movielens_csv(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text(
        "user,movie,rating\n1,10,5\n1,20,3\n2,10,4\n2,30,1\n3,20,4.5\n1,10,5\n"
    )
    data = load_movielens(tmp_path)
    assert data.user_ids.tolist() == ["1", "2", "3"]
    assert data.item_ids.tolist() == ["10", "20", "30"]
    assert data.views.dtype == np.float32 and data.clicks.dtype == np.float32
    # every rating is a view (duplicates collapse to 1.0); rating >= 4 is a click
    assert data.views.toarray().tolist() == [[1, 1, 0], [1, 0, 1], [0, 1, 0]]
    assert data.clicks.toarray().tolist() == [[1, 0, 0], [1, 0, 0], [0, 1, 0]]


def test_load_movielens_dat(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text("1::10::5::978300760\n2::20::2::978300761\n")
    data = load_movielens(tmp_path)
    assert data.clicks.toarray().tolist() == [[1, 0], [0, 0]]
    assert data.views.nnz == 2


def test_from_events_types() -> None:
    data = from_events(
        [("a", "x", "view"), ("a", "y", "click"), ("b", "x", "sale"), ("b", "z", "wishlist")]
    )
    assert data.user_ids.tolist() == ["a", "b"]
    assert data.item_ids.tolist() == ["x", "y"]  # z had no view/click type: not an item
    assert data.views.toarray().tolist() == [[1, 1], [1, 0]]  # clicks and sales are views
    assert data.clicks.toarray().tolist() == [[0, 1], [1, 0]]


def test_load_csv_extra_columns(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("ts,type,item_id,user_id\n1,view,x,a\n2,click,x,a\n3,view,y,b\n")
    data = load_csv(path)
    assert data.clicks.toarray().tolist() == [[1, 0], [0, 0]]
    assert data.views.toarray().tolist() == [[1, 0], [0, 1]]


def test_parquet_and_csv_events_give_the_same_interactions(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ledrec.training.dataset import load_events_file

    rows = [("u1", "a", "view"), ("u1", "b", "click"), ("u2", "a", "sale"), ("u2", "c", "like")]
    pq.write_table(
        pa.table({k: [r[j] for r in rows] for j, k in enumerate(("user_id", "item_id", "type"))}),
        tmp_path / "events.parquet",
    )
    (tmp_path / "events.csv").write_text(
        "user_id,item_id,type\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows)
    )
    from_parquet = load_events_file(tmp_path / "events.parquet")
    from_csv = load_events_file(tmp_path / "events.csv")
    # "like" is not an event type: item c never enters
    assert from_parquet.item_ids.tolist() == from_csv.item_ids.tolist() == ["a", "b"]
    assert (from_parquet.clicks != from_csv.clicks).nnz == 0
    assert (from_parquet.views != from_csv.views).nnz == 0
    assert from_parquet.clicks.nnz == 2 and from_parquet.views.nnz == 3
