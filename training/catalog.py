"""The catalog: what an item id stands for, for people (MovieLens titles).

The ids are those ``training.dataset.load_movielens`` gives the items (the MovieID as
text, ``"1193"``), so a model's item ids look their titles up directly.
"""

from __future__ import annotations

import csv
from pathlib import Path


def load_titles(path: Path) -> dict[str, str]:
    """Item id -> title from MovieLens ``movies.dat`` (``MovieID::Title::Genres``, latin-1,
    as in ML-1M) or ``movies.csv`` (``movieId,title,genres`` with a header, UTF-8, as in the
    newer releases); ``path`` is the file or the directory holding it."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in ("movies.dat", "movies.csv") if (path / name).exists()]
        if not found:
            raise FileNotFoundError(f"no movies.dat or movies.csv in {path}")
        path = found[0]
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader)
            i, t = header.index("movieId"), header.index("title")
            return {row[i]: row[t] for row in reader if row}
    titles: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            movie_id, rest = line.split("::", 1)
            title, _genres = rest.rsplit("::", 1)
        except ValueError:
            raise ValueError(f"{path}:{n}: not MovieID::Title::Genres: {line!r}") from None
        titles[movie_id.strip()] = title
    return titles
