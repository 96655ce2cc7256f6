"""Interactions: who viewed and who clicked what, as two sparse user × item matrices.

String ids are mapped to rows once, here; everything downstream works on row indices.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

CLICK_TYPES = ("click", "sale")  # event types that are positives
VIEW_TYPES = ("view", "click", "sale")  # event types that are views (every click is one)


@dataclass
class Interactions:
    """Binary implicit feedback. Every click is also a view."""

    user_ids: npt.NDArray[np.str_]  # (U,)
    item_ids: npt.NDArray[np.str_]  # (I,)
    views: sp.csr_matrix  # (U, I) float32, 1.0 where the user viewed the item
    clicks: sp.csr_matrix  # (U, I) float32, 1.0 where the user clicked (positives)

    @property
    def n_users(self) -> int:
        return int(self.user_ids.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_ids.shape[0])


def binary_matrix(
    rows: npt.NDArray[np.integer], cols: npt.NDArray[np.integer], shape: tuple[int, int]
) -> sp.csr_matrix:
    """(rows[k], cols[k]) pairs → csr float32 with 1.0 at each distinct pair."""
    ones = np.ones(len(rows), dtype=np.float32)
    m = sp.csr_matrix((ones, (rows, cols)), shape=shape, dtype=np.float32)
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def from_arrays(
    users: npt.NDArray[np.generic],
    items: npt.NDArray[np.generic],
    is_view: npt.NDArray[np.bool_],
    is_click: npt.NDArray[np.bool_],
) -> Interactions:
    """Build Interactions from parallel event arrays (ids of any sortable dtype).

    Users and items are those with at least one view or click; clicks count as views.
    """
    keep = is_view | is_click
    users, items, is_click = users[keep], items[keep], is_click[keep]
    user_ids, rows = np.unique(users, return_inverse=True)
    item_ids, cols = np.unique(items, return_inverse=True)
    shape = (len(user_ids), len(item_ids))
    return Interactions(
        user_ids=user_ids.astype(str),
        item_ids=item_ids.astype(str),
        views=binary_matrix(rows, cols, shape),
        clicks=binary_matrix(rows[is_click], cols[is_click], shape),
    )


def load_movielens(path: Path) -> Interactions:
    """MovieLens from a directory holding ``ratings.csv`` (user,movie,rating[,ts] with a
    header) or ``ratings.dat`` (``user::movie::rating::ts``).

    Every rating is a view; ratings >= 4 are clicks (the Mult-VAE implicit-feedback rule).
    """
    path = Path(path)
    if (path / "ratings.csv").exists():
        table = np.loadtxt(
            path / "ratings.csv", delimiter=",", skiprows=1, usecols=(0, 1, 2), dtype=np.float64
        )
    elif (path / "ratings.dat").exists():
        text = (path / "ratings.dat").read_text(encoding="latin-1").replace("::", ",")
        table = np.loadtxt(io.StringIO(text), delimiter=",", usecols=(0, 1, 2), dtype=np.float64)
    else:
        raise FileNotFoundError(f"no ratings.csv or ratings.dat in {path}")
    table = table.reshape(-1, 3)
    users, items, ratings = table[:, 0].astype(np.int64), table[:, 1].astype(np.int64), table[:, 2]
    return from_arrays(users, items, np.ones(len(users), dtype=bool), ratings >= 4)


def from_events(
    rows: Iterable[tuple[str, str, str]],
    click_types: Collection[str] = CLICK_TYPES,
    view_types: Collection[str] = VIEW_TYPES,
) -> Interactions:
    """(user_id, item_id, type) events → Interactions; other event types are ignored."""
    users: list[str] = []
    items: list[str] = []
    types: list[str] = []
    for user, item, kind in rows:
        users.append(user)
        items.append(item)
        types.append(kind)
    return from_typed_arrays(
        np.array(users, dtype=str), np.array(items, dtype=str), np.array(types, dtype=str),
        click_types, view_types,
    )  # fmt: skip


def from_typed_arrays(
    users: npt.NDArray[np.str_],
    items: npt.NDArray[np.str_],
    kinds: npt.NDArray[np.str_],
    click_types: Collection[str] = CLICK_TYPES,
    view_types: Collection[str] = VIEW_TYPES,
) -> Interactions:
    """Parallel (user_id, item_id, type) arrays → Interactions; other types are ignored."""
    return from_arrays(
        users, items, np.isin(kinds, list(view_types)), np.isin(kinds, list(click_types))
    )


def load_csv(path: Path) -> Interactions:
    """A CSV of events with a header naming at least ``user_id,item_id,type``."""
    with Path(path).open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        try:
            u, i, t = (header.index(name) for name in ("user_id", "item_id", "type"))
        except ValueError:
            raise ValueError(
                f"{path}: header must name user_id,item_id,type; got {header}"
            ) from None
        return from_events((row[u], row[i], row[t]) for row in reader if row)


def load_parquet(path: Path) -> Interactions:
    """A Parquet file (or directory of files) of events with columns user_id, item_id, type.

    Needs the ``parquet`` extra (pyarrow); only the three columns are read.
    """
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("Parquet input needs pyarrow: pip install 'ledrec[parquet]'") from None
    table = pq.read_table(Path(path), columns=["user_id", "item_id", "type"])  # type: ignore[no-untyped-call]
    users, items, kinds = (
        table.column(name).to_numpy(zero_copy_only=False).astype(str)
        for name in ("user_id", "item_id", "type")
    )
    return from_typed_arrays(users, items, kinds)


def load_events_file(path: Path) -> Interactions:
    """Events from a ``.parquet`` file/directory or a CSV file, by name."""
    path = Path(path)
    if path.suffix == ".parquet" or path.is_dir():
        return load_parquet(path)
    return load_csv(path)
