"""The common interaction formats are read without conversion, and detected by name/content."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledrec.cli import DATA_FORMATS
from ledrec.training.formats import (
    FORMATS,
    FormatError,
    detect_format,
    read_interactions,
    read_ratings,
)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_lines_every_pair_is_a_click(tmp_path: Path) -> None:
    path = _write(tmp_path, "train.txt", "0 0 1 2\n1 2 3\n2\n")
    assert detect_format(path) == "lines"
    r = read_ratings(path)
    assert list(zip(r.users, r.items, strict=True)) == [
        ("0", "0"), ("0", "1"), ("0", "2"), ("1", "2"), ("1", "3"),
    ]  # fmt: skip
    assert r.ratings is None and r.is_click.all()
    data = read_interactions(path)
    assert data.clicks.nnz == data.views.nnz == 5


def test_udata_and_dat_ratings_of_four_or_more_are_clicks(tmp_path: Path) -> None:
    udata = _write(tmp_path, "u.data", "196\t242\t3\t881250949\n186\t302\t4\t891717742\n")
    dat = _write(tmp_path, "ratings.dat", "1::10::5::978300760\n1::11::2::978302109\n")
    assert detect_format(udata) == "udata" and detect_format(dat) == "dat"
    r = read_ratings(udata)
    assert r.users.tolist() == ["196", "186"] and r.is_click.tolist() == [False, True]
    assert r.timestamps is not None and r.timestamps[0] == 881250949
    data = read_interactions(dat)
    assert data.views.nnz == 2 and data.clicks.nnz == 1
    # detection from content too, whatever the name
    assert detect_format(_write(tmp_path, "x.txt", "1\t2\t5\n")) == "udata"
    assert detect_format(_write(tmp_path, "y.txt", "1::2::5\n")) == "dat"


@pytest.mark.parametrize(
    ("text", "users", "clicks"),
    [
        ("userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n2,1029,4.0,1\n", ["1", "2"], 1),
        ("1,31,2.5\n2,1029,4.0\n", ["1", "2"], 1),  # no header
        ("a,x\nb,y\n", ["a", "b"], 2),  # no header, no rating: every row a click
        ("item,user\nx,a\ny,b\n", ["a", "b"], 2),  # header: columns by name
    ],
)
def test_csv_with_or_without_header(
    tmp_path: Path, text: str, users: list[str], clicks: int
) -> None:
    path = _write(tmp_path, "r.csv", text)
    assert detect_format(path) == "csv"
    r = read_ratings(path)
    assert r.users.tolist() == users
    assert int(r.is_click.sum()) == clicks


def test_events_csv_is_detected_and_keeps_its_types(tmp_path: Path) -> None:
    path = _write(tmp_path, "e.csv", "user_id,item_id,type\na,x,view\na,y,click\n")
    assert detect_format(path) == "events"
    data = read_interactions(path)
    assert data.views.nnz == 2 and data.clicks.nnz == 1


def test_movielens_directory(tmp_path: Path) -> None:
    _write(tmp_path, "ratings.dat", "1::10::5::978300760\n")
    assert detect_format(tmp_path) == "dat"
    assert read_ratings(tmp_path).items.tolist() == ["10"]


def test_bad_files_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="rating column is not numeric"):
        read_ratings(_write(tmp_path, "bad.data", "1\t2\tgood\n"), "udata")
    with pytest.raises(FormatError, match="no user or no item"):
        read_ratings(_write(tmp_path, "h.csv", "user,stars\n1,2\n"))
    with pytest.raises(FileNotFoundError):
        read_ratings(tmp_path / "missing.csv")


def test_cli_formats_match() -> None:
    assert DATA_FORMATS == FORMATS
