"""The catalog loader: MovieLens titles by the item ids the dataset loader gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledrec.training.catalog import load_titles

MOVIES_DAT = (
    "1::Toy Story (1995)::Animation|Children's|Comedy\n"
    "73::Misérables, Les (1995)::Drama|Musical\n"
    "567::Kika (1993)::Drama\n"
    "\n"
)


def test_movies_dat_is_read_as_latin1_by_movie_id(tmp_path: Path) -> None:
    (tmp_path / "movies.dat").write_bytes(MOVIES_DAT.encode("latin-1"))
    titles = load_titles(tmp_path)  # the directory, as the ratings loader takes it
    assert titles == {
        "1": "Toy Story (1995)",
        "73": "Misérables, Les (1995)",
        "567": "Kika (1993)",
    }
    assert load_titles(tmp_path / "movies.dat") == titles


def test_movies_csv_is_read_as_utf8_with_quoted_titles(tmp_path: Path) -> None:
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\n1,Toy Story (1995),Comedy\n73,"Misérables, Les (1995)",Drama\n',
        encoding="utf-8",
    )
    assert load_titles(tmp_path) == {"1": "Toy Story (1995)", "73": "Misérables, Les (1995)"}


def test_a_malformed_line_names_its_place(tmp_path: Path) -> None:
    (tmp_path / "movies.dat").write_text("1::Toy Story (1995)::Comedy\n2 Jumanji\n")
    with pytest.raises(ValueError, match=r"movies\.dat:2"):
        load_titles(tmp_path)


def test_a_directory_without_movies_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="movies"):
        load_titles(tmp_path)
