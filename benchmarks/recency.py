"""What a streaming user needs from the encoder (issue #18 item 4): does weighting the
timeline help LED's user vector, measured offline before anything is built online?

The encoder is u = Σ w_t v_t / Σ w_t over the timeline. Two weightings are tried, each
chosen on the validation users (NDCG@100) and reported on the test users against the
unweighted mean, with the paired per-user difference and its standard error:

- **recency**: w = 2^(-age / h), the age in events (positions from the timeline's end) or,
  when the data has timestamps, in seconds before the user's last timeline event;
- **event type**: MovieLens has ratings only, so the offline analogue of the stream's
  view / click / sale weights is a weight per rating band (<= 2, 3, >= 4). The timeline is
  then every rated item of the fold-in part, not only the clicks.

Two targets: ``random`` is the strong protocol's (a random 20% of each held-out user's
clicks: the split ``ledrec evaluate`` makes), ``last`` the user's last 20% of clicks in
event order, with the timeline cut before the first of them (what a stream serves). Recency
can only matter on ``last``; on ``random`` the held-out clicks are as old as the rest.

The model is ``ledrec train``'s default (``run_train``), trained once per dataset / seed on
the same split. Data: MovieLens-1M (``ratings.dat`` with timestamps or ``ratings.csv``
without: then event order is file order), the same subsampled to a share of its users
(``benchmarks/quality_subsample.py``'s sampling), and the synthetic generator (timestamps,
view / click / sale, stationary tastes).

    python -m benchmarks.recency --movielens /work/shared/data/ml-1m --share 1.0 0.1 \
        --full-seeds 0 1 2 --seeds 0 1 2 3 4 --synthetic --models /tmp/recency-models
    python -m benchmarks.recency --table benchmarks/results/recency.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine  # noqa: E402
from benchmarks.quality_subsample import subsample_users  # noqa: E402
from ledrec.stream.artifact import load_model  # noqa: E402
from ledrec.training.dataset import Interactions, from_arrays  # noqa: E402
from ledrec.training.evaluate import (  # noqa: E402
    METRICS,
    evaluate_scores,
    led_score_fn,
    ndcg_per_user,
    recall_per_user,
)
from ledrec.training.finetune import FinetuneConfig  # noqa: E402
from ledrec.training.jobs import TrainConfig, run_train  # noqa: E402
from ledrec.training.selection import DEFAULT_MIN_STEPS  # noqa: E402
from ledrec.training.split import Split, default_n_heldout, strong_generalization_split  # noqa: E402
from ledrec.training.synthetic import SyntheticConfig, generate  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "recency.json"
INF = float("inf")
EVENT_HALF_LIVES = (INF, 100.0, 50.0, 20.0, 10.0, 5.0)  # in events
DAY = 86400.0
TIME_HALF_LIVES = (INF, 180 * DAY, 30 * DAY, 7 * DAY, DAY, 3600.0)  # in seconds
BAND_WEIGHTS = (0.0, 0.25, 0.5, 1.0)  # for ratings <= 2 and 3; ratings >= 4 weigh 1
VIEW_WEIGHTS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)  # every rating < 4, relative to a click
Array = npt.NDArray[Any]


@dataclass
class Ratings:
    """Every rating as parallel arrays; ``order`` sorts a user's events (timestamps when
    the source has them, else the file position)."""

    user: npt.NDArray[np.int64]
    item: npt.NDArray[np.int64]
    rating: npt.NDArray[np.float64]
    order: npt.NDArray[np.float64]
    timed: bool  # ``order`` is in seconds

    def interactions(self) -> Interactions:
        """Every rating a view, ratings >= 4 clicks: ``load_movielens``'s rule."""
        return from_arrays(
            self.user, self.item, np.ones(len(self.user), dtype=bool), self.rating >= 4
        )


def load_ratings(path: Path) -> Ratings:
    """MovieLens ``ratings.dat`` (``user::movie::rating::ts``) or ``ratings.csv`` (a header,
    then ``user,movie,rating[,ts]``), with the timestamps when the file has them."""
    if (path / "ratings.dat").exists():
        text = (path / "ratings.dat").read_text(encoding="latin-1").replace("::", ",")
        table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.float64, ndmin=2)
    else:
        table = np.loadtxt(path / "ratings.csv", delimiter=",", skiprows=1, ndmin=2)
    timed = table.shape[1] >= 4
    order = table[:, 3] if timed else np.arange(len(table), dtype=np.float64)
    return Ratings(
        table[:, 0].astype(np.int64), table[:, 1].astype(np.int64), table[:, 2], order, timed
    )


def synthetic_ratings(config: SyntheticConfig) -> Ratings:
    """The generator's events as one rating per (user, item): 3 a view only, 4 a click,
    5 a sale (so ratings >= 4 are its clicks), at the first event's time."""
    events = generate(config)
    key = events.user * config.n_items + events.item
    first = np.unique(key, return_index=True)[1]  # events are in time order
    best = np.zeros(config.n_users * config.n_items, dtype=np.int8)
    np.maximum.at(best, key, events.kind)
    k = key[first]
    return Ratings(
        k // config.n_items, k % config.n_items, 3.0 + best[k], events.ts[first], timed=True
    )


@dataclass
class Group:
    """One held-out group's ratings in the split's item columns, sorted by user then order."""

    row: npt.NDArray[np.int64]  # user index within the group
    col: npt.NDArray[np.int64]
    rating: npt.NDArray[np.float64]
    order: npt.NDArray[np.float64]
    n_users: int
    n_items: int


def group_of(ratings: Ratings, data: Interactions, users: Array, split: Split) -> Group:
    """The ratings of ``data``'s rows ``users`` on the items ``split`` kept."""
    user_row = {int(u): k for k, u in enumerate(data.user_ids[users].astype(np.int64))}
    item_col = {int(i): k for k, i in enumerate(split.item_ids.astype(np.int64))}
    row = np.fromiter((user_row.get(int(u), -1) for u in ratings.user), np.int64, len(ratings.user))
    col = np.fromiter((item_col.get(int(i), -1) for i in ratings.item), np.int64, len(ratings.item))
    keep = (row >= 0) & (col >= 0)
    file_pos = np.flatnonzero(keep)
    by = np.lexsort((file_pos, ratings.order[keep], row[keep]))  # ties: file order
    idx = file_pos[by]
    return Group(row[idx], col[idx], ratings.rating[idx], ratings.order[idx], len(users),
                 len(split.item_ids))  # fmt: skip


@dataclass
class Target:
    """A protocol applied to a group: which rated entries are before the cut (may enter
    the timeline) and the clicks to predict."""

    before: npt.NDArray[np.bool_]  # (E,)
    heldout: sp.csr_matrix  # (n, I)


def target_random(group: Group, fold_in: sp.csr_matrix, heldout: sp.csr_matrix) -> Target:
    """The split's own random 20%: every rating but the held-out clicks is before the cut."""
    is_out = np.asarray(heldout.tocsr()[group.row, group.col]).ravel() > 0
    is_in = np.asarray(fold_in.tocsr()[group.row, group.col]).ravel() > 0
    click = group.rating >= 4
    assert np.array_equal(is_in, click & ~is_out), "the split's clicks are the group's"
    return Target(~is_out, heldout.tocsr())


def _rank_in_user(row: npt.NDArray[np.int64], mask: npt.NDArray[np.bool_]) -> Array:
    """(E,) for entries in ``mask``: their rank among the user's masked entries (in the
    group's order), and how many the user has; -1 elsewhere."""
    rank = np.full(len(row), -1, dtype=np.int64)
    count = np.zeros(len(row), dtype=np.int64)
    r = row[mask]
    starts = np.searchsorted(r, r, side="left")
    rank[mask] = np.arange(len(r)) - starts
    per_user = np.bincount(r, minlength=int(row.max()) + 1 if len(row) else 0)
    count[mask] = per_user[r]
    return np.stack([rank, count])


def target_last(group: Group) -> Target:
    """The user's last 20% of clicks in event order (``fold_in_split``'s counts), and only
    the ratings before the first of them."""
    click = group.rating >= 4
    rank, n = _rank_in_user(group.row, click)
    n_out = np.where(n >= 2, np.maximum(np.floor(0.2 * n + 1e-9), 1), 0).astype(np.int64)
    is_out = click & (rank >= n - n_out)
    first_out = np.full(group.n_users, np.iinfo(np.int64).max)
    pos = np.arange(len(group.row))
    np.minimum.at(first_out, group.row[is_out], pos[is_out])
    heldout = sp.csr_matrix(
        (np.ones(int(is_out.sum()), np.float32), (group.row[is_out], group.col[is_out])),
        shape=(group.n_users, group.n_items),
    )
    return Target(pos < first_out[group.row], heldout)


@dataclass(frozen=True)
class Weighting:
    """w = band weight(rating) · 2^(-age / half_life); ``clicks_only``: ratings < 4 out."""

    name: str = field(compare=False)  # equal weightings are equal whatever their name
    half_life: float = INF
    in_events: bool = True  # age in positions; else in the ``order`` unit (seconds)
    low: float = 0.0  # ratings <= 2
    mid: float = 0.0  # rating 3

    def weights(self, group: Group, timeline: npt.NDArray[np.bool_]) -> Array:
        """(E,) each timeline entry's weight (0 off the timeline)."""
        band = np.where(group.rating >= 4, 1.0, np.where(group.rating >= 3, self.mid, self.low))
        on = timeline & (band > 0)
        w = np.zeros(len(group.row))
        if self.half_life == INF:
            w[on] = band[on]
            return w
        if self.in_events:
            rank, n = _rank_in_user(group.row, on)
            age = (n - 1 - rank)[on].astype(np.float64)
        else:
            last = np.full(group.n_users, -np.inf)
            np.maximum.at(last, group.row[on], group.order[on])
            age = last[group.row[on]] - group.order[on]
        w[on] = band[on] * np.exp2(-age / self.half_life)
        return w


def per_user_metrics(
    group: Group,
    target: Target,
    weighting: Weighting,
    v: Array,
    b: Array,
    seen_rated: bool = True,
) -> dict[str, Array]:
    """(n,) each metric per user: u = weighted mean of the timeline's embeddings. Every
    rated item before the cut is excluded from the ranking (seen), whatever its weight, so
    that all weightings rank the same candidates; ``seen_rated=False`` excludes only the
    weighted ones (the protocol's rule: its fold-in is the clicks)."""
    w = weighting.weights(group, target.before)
    shape = (group.n_users, group.n_items)
    weights = sp.csr_matrix((w, (group.row, group.col)), shape=shape)
    total = np.asarray(weights.sum(axis=1)).ravel()
    u = (weights @ v.astype(np.float64)) / np.maximum(total, 1e-300)[:, None]
    scores = u.astype(np.float32) @ v.T + b
    seen = target.before if seen_rated else w > 0
    scores[group.row[seen], group.col[seen]] = -np.inf
    out = {}
    for name, (kind, k) in METRICS.items():
        fn = recall_per_user if kind == "recall" else ndcg_per_user
        out[name] = fn(scores, target.heldout, k)
    return out


def recency_grid(timed: bool) -> list[Weighting]:
    grid = [Weighting("none")]
    grid += [Weighting(f"h={h:g} events", h) for h in EVENT_HALF_LIVES if h != INF]
    if timed:
        grid += [
            Weighting(f"h={h / DAY:g} days" if h >= DAY else f"h={h / 3600:g} h", h, False)
            for h in TIME_HALF_LIVES
            if h != INF
        ]
    return grid


def band_grid() -> list[Weighting]:
    return [
        Weighting(f"<=2: {lo:g}, 3: {mid:g}, >=4: 1", low=lo, mid=mid)
        for lo in BAND_WEIGHTS
        for mid in BAND_WEIGHTS
    ]


def view_grid() -> list[Weighting]:
    """One weight for every rating < 4: what the stream can express, since MovieLens is
    published as a view per rating < 4 and a click per rating >= 4 (``event_weights``
    {"view": w, "click": 1})."""
    return [Weighting(f"view: {w:g}, click: 1", low=w, mid=w) for w in VIEW_WEIGHTS]


def paired(a: Array, b: Array) -> dict[str, float]:
    """Mean of b - a over users with a figure, and its standard error."""
    d = (b - a)[~np.isnan(a)]
    return {"diff": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(len(d)))}


def study(
    grid: list[Weighting],
    references: list[Weighting],
    val: tuple[Group, Target],
    test: tuple[Group, Target],
    v: Array,
    b: Array,
) -> dict[str, Any]:
    """Every weighting's validation and test figures; the one with the best validation
    NDCG@100 against each of ``references`` (in ``grid``) on the test users."""
    rows = [(w, per_user_metrics(*val, w, v, b), per_user_metrics(*test, w, v, b)) for w in grid]
    chosen = max(rows, key=lambda r: float(np.nanmean(r[1]["ndcg@100"])))

    def means(m: dict[str, Array]) -> dict[str, float]:
        return {k: float(np.nanmean(x)) for k, x in m.items()}

    against = {}
    for reference in references:
        _, rv, rt = next(r for r in rows if r[0] == reference)
        against[reference.name] = {
            "test_reference": means(rt),
            "test_diff": {k: paired(rt[k], chosen[2][k]) for k in METRICS},
            "val_diff": {k: paired(rv[k], chosen[1][k]) for k in METRICS},
        }
    return {
        "chosen": chosen[0].name,
        "test_chosen": means(chosen[2]),
        "against": against,
        "grid": [{"weighting": w.name, "val": means(vm), "test": means(tm)} for w, vm, tm in rows],
    }


def one_dataset(
    ratings: Ratings,
    data: Interactions,
    seed: int,
    svd_only: bool,
    models: Path | None,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Train the default (or SVD-only) once, then every study on its split. ``models``: the
    trained model's directory, kept there and reused by the next run (never in the repo:
    it is derived from the data)."""
    n_heldout = default_n_heldout(data)
    config = TrainConfig(
        finetune=None if svd_only else FinetuneConfig(seed=seed),
        n_heldout=n_heldout,
        seed=seed,
        min_steps=DEFAULT_MIN_STEPS,
    )
    t0 = time.perf_counter()
    reused = models is not None and models.is_dir()
    if models is not None and reused:  # trained by an earlier run: reuse it
        model = load_model(models)
    else:
        with tempfile.TemporaryDirectory() as store:
            path = run_train(data, Path(store), config)
            model = load_model(path)
            if models is not None:
                shutil.copytree(path, models)
    train_seconds = time.perf_counter() - t0
    split = strong_generalization_split(data, n_heldout=n_heldout, seed=seed)
    assert np.array_equal(model.item_ids, split.item_ids.astype(str))
    v, b = model.embeddings, model.biases
    assert split.val_users is not None and split.test_users is not None
    val = group_of(ratings, data, split.val_users, split)
    test = group_of(ratings, data, split.test_users, split)

    # the reference weighting on the random target is exactly the protocol's figure
    protocol = evaluate_scores(led_score_fn(v, b), split.test_in, split.test_out)
    targets = {
        "random": (
            target_random(val, split.val_in, split.val_out),
            target_random(test, split.test_in, split.test_out),
        ),
        "last": (target_last(val), target_last(test)),
    }
    none = Weighting("none")
    mine = per_user_metrics(test, targets["random"][1], none, v, b, seen_rated=False)
    for k in METRICS:
        assert abs(float(np.nanmean(mine[k])) - protocol[k]) < 1e-6, (k, protocol)
    out: dict[str, Any] = {
        "seed": seed,
        "users": data.n_users,
        "items": len(split.item_ids),
        "n_heldout": n_heldout,
        "chosen_model": model.provenance["selection"]["chosen"],
        "train_seconds": None if reused else train_seconds,  # None: trained by an earlier run
        "protocol_test": protocol,
        "studies": {},
    }
    all_equal = Weighting("<=2: 1, 3: 1, >=4: 1", low=1.0, mid=1.0)
    for name, (tv, tt) in targets.items():
        for key, grid, refs in (
            (f"recency/{name}", recency_grid(ratings.timed), [none]),
            (f"bands/{name}", band_grid(), [none, all_equal]),
            (f"views/{name}", view_grid(), [none, all_equal]),
        ):
            s = study(grid, refs, (val, tv), (test, tt), v, b)
            out["studies"][key] = s
            ref = s["against"][none.name]
            d = ref["test_diff"]["ndcg@100"]
            say(
                f"  {key}: chose {s['chosen']!r}; test NDCG@100 "
                f"{ref['test_reference']['ndcg@100']:.4f} -> {s['test_chosen']['ndcg@100']:.4f}"
                f" ({d['diff']:+.4f} ± {d['se']:.4f} se)"
            )
    return out


def render(report: dict[str, Any]) -> str:
    """The report as markdown: per dataset and seed, each study's choice and its test
    difference (± one standard error over test users) against the unweighted mean."""
    head = (
        "| Data | Seed | Study / target | Chosen on validation | Test NDCG@100 | "
        "ΔNDCG@100 ± se | ΔR@20 ± se | ΔR@50 ± se | ΔNDCG@100 vs view = click |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, rows in report["datasets"].items():
        for row in rows:
            for key, s in row["studies"].items():
                if key.startswith("bands/"):
                    continue  # the 2-band grid: in the JSON; the stream can't express it
                a = s["against"]["none"]
                d = a["test_diff"]

                def pm(x: dict[str, float]) -> str:
                    return f"{x['diff']:+.4f} ± {x['se']:.4f}"

                equal = s["against"].get("<=2: 1, 3: 1, >=4: 1")
                cells = [
                    name, str(row["seed"]), key, s["chosen"],
                    f"{a['test_reference']['ndcg@100']:.4f} → {s['test_chosen']['ndcg@100']:.4f}",
                    pm(d["ndcg@100"]), pm(d["recall@20"]), pm(d["recall@50"]),
                    pm(equal["test_diff"]["ndcg@100"]) if equal else "",
                ]  # fmt: skip
                lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Over seeds: mean ± std of the per-seed test ΔNDCG@100 (chosen − none), and how many "
        "seeds the choice was above / below none by more than 2 se.",
        "",
    ]
    lines += ["| Data | Study / target | Seeds | mean ΔNDCG@100 ± std | > +2 se | < −2 se |"]
    lines += ["|---|---|---|---|---|---|"]
    for name, rows in report["datasets"].items():
        for key in rows[0]["studies"]:
            if key.startswith("bands/"):
                continue
            d = [r["studies"][key]["against"]["none"]["test_diff"]["ndcg@100"] for r in rows]
            diffs = np.array([x["diff"] for x in d])
            up = sum(x["diff"] > 2 * x["se"] for x in d)
            down = sum(x["diff"] < -2 * x["se"] for x in d)
            lines.append(
                f"| {name} | {key} | {len(d)} | {diffs.mean():+.4f} ± {diffs.std():.4f} | "
                f"{up} | {down} |"
            )
    lines += [
        "",
        "Every weighting of the grid, averaged over seeds: validation NDCG@100, and the test "
        "ΔNDCG@100 / ΔR@20 against none (a fixed weighting, not chosen per seed).",
        "",
        "| Data | Study / target | Weighting | val NDCG@100 | test ΔNDCG@100 | test ΔR@20 |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in report["datasets"].items():
        for key in rows[0]["studies"]:
            if key.startswith("bands/"):
                continue
            grids = [r["studies"][key]["grid"] for r in rows]
            for j, entry in enumerate(grids[0]):
                val = np.mean([g[j]["val"]["ndcg@100"] for g in grids])
                dn = np.mean([g[j]["test"]["ndcg@100"] - g[0]["test"]["ndcg@100"] for g in grids])
                dr = np.mean([g[j]["test"]["recall@20"] - g[0]["test"]["recall@20"] for g in grids])
                lines.append(
                    f"| {name} | {key} | {entry['weighting']} | {val:.4f} | {dn:+.4f} | {dr:+.4f} |"
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movielens", default="/work/shared/data/ml-1m")
    parser.add_argument("--share", type=float, nargs="*", default=[1.0, 0.1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="subsamples'")
    parser.add_argument("--full-seeds", type=int, nargs="+", default=[0], help="share 1's")
    parser.add_argument("--synthetic", action="store_true", help="also the synthetic world")
    parser.add_argument("--svd-only", action="store_true", help="the SVD-only model (fast)")
    parser.add_argument("--models", type=Path, help="keep / reuse trained models here")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--table", type=Path, help="print this report's markdown; no run")
    args = parser.parse_args()
    if args.table:
        print(render(json.loads(args.table.read_text())), end="")
        return

    def say(line: str) -> None:
        print(line, flush=True)

    report: dict[str, Any] = {"machine": machine(), "argv": sys.argv[1:], "datasets": {}}
    runs: list[tuple[str, Ratings, Interactions, int]] = []
    if args.share:
        ratings = load_ratings(Path(args.movielens))
        data = ratings.interactions()
        report["movielens_timed"] = ratings.timed
        for share in args.share:
            if share >= 1.0:
                runs += [("ml-1m", ratings, data, s) for s in args.full_seeds]
            else:
                runs += [
                    (f"ml-1m@{share:g}", ratings, subsample_users(data, share, s), s)
                    for s in args.seeds
                ]
    if args.synthetic:
        synthetic = synthetic_ratings(SyntheticConfig())
        runs.append(("synthetic", synthetic, synthetic.interactions(), 0))
    for name, ratings, data, seed in runs:
        say(f"{name} seed {seed}: {data.n_users} users, timed={ratings.timed}")
        kind = "svd" if args.svd_only else "default"
        models = args.models / f"{name}-seed{seed}-{kind}" if args.models else None
        row = one_dataset(ratings, data, seed, args.svd_only, models, say)
        report["datasets"].setdefault(name, []).append(row)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    report["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
