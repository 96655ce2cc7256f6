"""Readers for the common interaction formats, so public datasets need no hand conversion.

- ``lines``: ``u i1 i2 ...`` per line, whitespace-separated (LightGCN / NGCF ``train.txt``,
  ``test.txt``); every pair is a positive.
- ``udata``: tab-separated ``user item rating [ts]`` (MovieLens-100k ``u.data``).
- ``dat``: ``user::item::rating[::ts]`` (MovieLens ``ratings.dat``).
- ``csv``: ``user,item[,rating][,ts]``, with or without a header (MovieLens ``ratings.csv``
  is this with a header).
- ``events``: ledrec's own events (CSV with a ``user_id,item_id,type`` header, or Parquet).

Where ratings exist, every row is a view and ratings >= 4 are clicks (the Mult-VAE
implicit-feedback rule, as ``dataset.load_movielens``); without ratings every row is both.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ledrec.training.dataset import (
    CLICK_TYPES,
    VIEW_TYPES,
    Interactions,
    from_arrays,
    load_events_file,
)

FORMATS = ("lines", "udata", "dat", "csv", "events")
CLICK_RATING = 4.0

# header names recognised for each column (lower case)
_USER_NAMES = ("user_id", "userid", "user", "uid", "u")
_ITEM_NAMES = ("item_id", "itemid", "item", "movie_id", "movieid", "movie", "iid", "i")
_RATING_NAMES = ("rating", "ratings", "score", "r")
_TS_NAMES = ("timestamp", "ts", "time", "t")


@dataclass
class Ratings:
    """One interaction per row, ids as strings; ratings and timestamps where the file has them."""

    users: npt.NDArray[np.str_]
    items: npt.NDArray[np.str_]
    ratings: npt.NDArray[np.float64] | None = None
    timestamps: npt.NDArray[np.float64] | None = None

    @property
    def is_click(self) -> npt.NDArray[np.bool_]:
        if self.ratings is None:
            return np.ones(len(self.users), dtype=bool)
        return self.ratings >= CLICK_RATING

    def to_interactions(self) -> Interactions:
        """Every row a view; clicks by ``is_click``."""
        return from_arrays(self.users, self.items, np.ones(len(self.users), bool), self.is_click)

    def to_timed_events(self, path: Path | str = "") -> TimedEvents:
        """The rows as events in time; a FormatError when the file has no timestamps."""
        if self.timestamps is None:
            raise FormatError(
                f"{path or 'the data'}: no timestamp column (the time protocol needs one)"
            )
        return TimedEvents(self.users, self.items, self.is_click, self.timestamps)


@dataclass
class TimedEvents:
    """One event per row, in any order: every row is a view, ``is_click`` its positives."""

    users: npt.NDArray[np.str_]
    items: npt.NDArray[np.str_]
    is_click: npt.NDArray[np.bool_]
    ts: npt.NDArray[np.float64]  # epoch seconds (any monotone clock)


class FormatError(ValueError):
    """A file that is not in the format it was read as."""


def _movielens_file(path: Path) -> Path:
    for name in ("ratings.csv", "ratings.dat", "u.data"):
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"{path}: a directory without ratings.csv, ratings.dat or u.data")


def detect_format(path: Path) -> str:
    """The format of ``path`` from its name, else from its first line."""
    path = Path(path)
    if path.is_dir():
        if any(path.glob("*.parquet")):
            return "events"
        return detect_format(_movielens_file(path))
    if path.suffix == ".parquet":
        return "events"
    if path.name == "u.data":
        return "udata"
    if path.suffix == ".dat":
        return "dat"
    with path.open(encoding="utf-8", errors="replace") as f:
        first = f.readline().strip()
    if not first:
        raise FormatError(f"{path}: empty first line; give --format")
    if "::" in first:
        return "dat"
    if "," in first:
        header = [c.strip().strip('"').lower() for c in first.split(",")]
        return "events" if {"user_id", "item_id", "type"} <= set(header) else "csv"
    if "\t" in first:
        return "udata"
    return "lines"


def read_lines(path: Path) -> Ratings:
    """``u i1 i2 ...`` lines; a user alone on a line (no items) adds nothing."""
    users: list[str] = []
    items: list[str] = []
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 1:
                users += [fields[0]] * (len(fields) - 1)
                items += fields[1:]
    return Ratings(np.array(users, dtype=str), np.array(items, dtype=str))


def _float_column(values: list[str], path: Path, name: str) -> npt.NDArray[np.float64]:
    try:
        return np.array(values, dtype=np.float64)
    except ValueError:
        raise FormatError(f"{path}: the {name} column is not numeric") from None


def _from_columns(rows: list[list[str]], path: Path, cols: tuple[int, ...]) -> Ratings:
    """Rows of fields → Ratings; ``cols`` = user, item[, rating[, ts]] field positions."""
    rows = [r for r in rows if r and any(c.strip() for c in r)]
    if not rows:
        raise FormatError(f"{path}: no rows")
    width = min(len(r) for r in rows)
    if width <= max(cols):
        raise FormatError(f"{path}: a row with {width} fields; expected at least {max(cols) + 1}")
    columns = [[r[c].strip() for r in rows] for c in cols]
    ratings = _float_column(columns[2], path, "rating") if len(cols) > 2 else None
    ts = _float_column(columns[3], path, "timestamp") if len(cols) > 3 else None
    return Ratings(np.array(columns[0], dtype=str), np.array(columns[1], dtype=str), ratings, ts)


def _positional(n_fields: int) -> tuple[int, ...]:
    return tuple(range(min(n_fields, 4)))


def read_separated(path: Path, separator: str) -> Ratings:
    """``user<sep>item[<sep>rating[<sep>ts]]`` without a header (``u.data``, ``ratings.dat``)."""
    with Path(path).open(encoding="latin-1") as f:
        rows = [line.rstrip("\n").split(separator) for line in f]
    rows = [r for r in rows if r != [""]]
    if not rows or len(rows[0]) < 2:
        raise FormatError(f"{path}: expected user{separator}item[{separator}rating...] rows")
    return _from_columns(rows, path, _positional(len(rows[0])))


def _header_columns(header: list[str], path: Path) -> tuple[int, ...] | None:
    """Column positions named by a header row, or None if the row is not a header."""
    names = [h.strip().strip('"').lower() for h in header]

    def find(candidates: tuple[str, ...]) -> int | None:
        return next((names.index(c) for c in candidates if c in names), None)

    user, item = find(_USER_NAMES), find(_ITEM_NAMES)
    rating, ts = find(_RATING_NAMES), find(_TS_NAMES)
    if user is None and item is None:
        # no known name: a header only if a field that should be numeric is not
        numeric_like = names[2:4]
        try:
            [float(v) for v in numeric_like]
        except ValueError:
            return _positional(len(names))
        return None
    if user is None or item is None:
        raise FormatError(f"{path}: header {header} names no user or no item column")
    cols: tuple[int, ...] = (user, item)
    if rating is not None:
        cols += (rating,)
        if ts is not None:
            cols += (ts,)
    return cols


def read_csv(path: Path) -> Ratings:
    """``user,item[,rating][,ts]`` with or without a header (columns found by name)."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise FormatError(f"{path}: empty file")
    cols = _header_columns(rows[0], path)
    if cols is None:
        return _from_columns(rows, path, _positional(len(rows[0])))
    return _from_columns(rows[1:], path, cols)


def read_ratings(path: Path, fmt: str | None = None) -> Ratings:
    """The rows of ``path`` (a file, or a MovieLens directory) in ``fmt`` or the detected one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    fmt = fmt or detect_format(path)
    if path.is_dir() and fmt != "events":
        path = _movielens_file(path)
    if fmt == "lines":
        return read_lines(path)
    if fmt == "udata":
        return read_separated(path, "\t")
    if fmt == "dat":
        return read_separated(path, "::")
    if fmt == "csv":
        return read_csv(path)
    if fmt == "events":
        raise FormatError(f"{path}: events carry types, not ratings; read with read_interactions")
    raise FormatError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")


def read_timed_events(path: Path, fmt: str | None = None) -> TimedEvents:
    """Events with their times from any supported file that has them: a ratings file's
    timestamp column, or ledrec events (CSV or Parquet) with a ``ts`` column."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt != "events":
        return read_ratings(path, fmt).to_timed_events(path)
    if path.suffix == ".parquet" or path.is_dir():
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError(
                "Parquet input needs pyarrow: pip install 'ledrec[parquet]'"
            ) from None
        names = ["user_id", "item_id", "type", "ts"]
        table = pq.read_table(path, columns=names)  # type: ignore[no-untyped-call]
        users, items, kinds, ts = (table.column(n).to_numpy(zero_copy_only=False) for n in names)
    else:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        header = [h.strip() for h in rows[0]] if rows else []
        if "ts" not in header:
            raise FormatError(f"{path}: no ts column (the time protocol needs one)")
        try:
            u, i, t, c = (header.index(n) for n in ("user_id", "item_id", "type", "ts"))
        except ValueError:
            raise FormatError(f"{path}: header must name user_id,item_id,type,ts") from None
        body = [r for r in rows[1:] if r]
        users, items, kinds = (np.array([r[c] for r in body], dtype=str) for c in (u, i, t))
        ts = _float_column([r[c] for r in body], path, "ts")
    kinds = np.asarray(kinds).astype(str)
    keep = np.isin(kinds, list(VIEW_TYPES))
    return TimedEvents(
        np.asarray(users).astype(str)[keep], np.asarray(items).astype(str)[keep],
        np.isin(kinds[keep], list(CLICK_TYPES)), np.asarray(ts, dtype=np.float64)[keep],
    )  # fmt: skip


def read_interactions(path: Path, fmt: str | None = None) -> Interactions:
    """Interactions from any supported file; events files keep their view/click types."""
    fmt = fmt or detect_format(Path(path))
    if fmt == "events":
        return load_events_file(Path(path))
    return read_ratings(path, fmt).to_interactions()
