"""Weak-generalization evaluation, the protocol graph-model papers (NGCF, LightGCN) publish.

Every user is in training; each has train and test interactions. Models learn from all
users' train interactions; a user is encoded from their train clicks, every item but
their training items is ranked, and Recall@20 / NDCG@20 are averaged over the users with
a test item, exactly as LightGCN's code does (``utils.RecallPrecision_ATk``,
``utils.NDCGatK_r``): recall = hits in the top k / number of the user's test items (not
min(k, ·)); NDCG has binary gains and the ideal DCG over min(k, |test|) positions. Test
items outside the training catalog cannot be ranked: they count as misses.

Model selection (EASE λ, item-kNN k, LED's dot-product scale and early stopping) uses a
validation file when given; otherwise 20% of the train clicks of a seeded sample of users
are held out for it, and every model learns from the remaining train interactions (so
they all see the same data; at test time those users are encoded from all their train
clicks).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from ledrec.training.baselines import EASE_LAMBDAS, ease_score_fn, popularity_score_fn, tune_ease
from ledrec.training.dataset import Interactions, binary_matrix
from ledrec.training.evaluate import ScoreFn, led_score_fn
from ledrec.training.formats import Ratings
from ledrec.training.item_knn import tune_item_knn
from ledrec.training.report import metric_label, write_report
from ledrec.training.split import DEFAULT_N_HELDOUT, Split, fold_in_split

if TYPE_CHECKING:
    from ledrec.training.finetune import FinetuneConfig
    from ledrec.training.jobs import PretrainConfig, Progress

WEAK_K = 20
EASE_MAX_ITEMS = 30_000  # dense I × I in float64, inverted: ~7 GB at 30k items


@dataclass
class WeakSplit:
    """Every matrix is (U, I) over the same users and the training catalog."""

    user_ids: npt.NDArray[np.str_]
    item_ids: npt.NDArray[np.str_]  # items with a training interaction
    fit_views: sp.csr_matrix  # what the models learn from
    fit_clicks: sp.csr_matrix
    val_in: sp.csr_matrix  # (n_val, I) validation users' fit clicks
    val_out: sp.csr_matrix  # (n_val, I) their validation items
    inputs: sp.csr_matrix  # each user's known clicks: the encoder input at test time
    known: sp.csr_matrix  # each user's training items (views too): never ranked
    test: sp.csr_matrix  # test items in the catalog
    n_test: npt.NDArray[np.int64]  # (U,) test items, including those outside the catalog


def minus(a: sp.csr_matrix, b: sp.csr_matrix) -> sp.csr_matrix:
    """Binary a AND NOT b."""
    out = (a - a.multiply(b)).tocsr()
    out.eliminate_zeros()
    return out.astype(np.float32)


def _binary(m: sp.spmatrix) -> sp.csr_matrix:
    out = sp.csr_matrix(m, dtype=np.float32)
    out.eliminate_zeros()
    out.data[:] = 1.0
    return out


def weak_split(
    user_ids: npt.NDArray[np.str_],
    item_ids: npt.NDArray[np.str_],
    train_views: sp.csr_matrix,
    train_clicks: sp.csr_matrix,
    test: sp.csr_matrix,
    valid: sp.csr_matrix | None = None,
    n_val: int | None = None,
    seed: int = 0,
    min_positives: int = 5,
) -> WeakSplit:
    """The protocol's matrices from (U, I_all) train / test [/ validation] positives.

    Without ``valid``, ``n_val`` users with >= ``min_positives`` train clicks (default:
    600 or 10% of them) lend 20% of their train clicks to validation.
    """
    train_views = _binary(train_views + train_clicks)
    catalog = np.flatnonzero(np.asarray(train_views.sum(axis=0)).ravel() > 0)
    test = _binary(test)
    n_test = np.diff(test.indptr).astype(np.int64)
    train_clicks = _binary(train_clicks)[:, catalog]
    train_views = train_views[:, catalog]
    test = test[:, catalog].tocsr()
    if valid is not None:
        valid = _binary(valid)[:, catalog].tocsr()
        val_users = np.flatnonzero((np.diff(valid.indptr) > 0) & (np.diff(train_clicks.indptr) > 0))
        return WeakSplit(
            user_ids, item_ids[catalog], train_views, train_clicks,
            train_clicks[val_users], valid[val_users],
            _binary(train_clicks + valid), _binary(train_views + valid), test, n_test,
        )  # fmt: skip
    rng = np.random.default_rng(seed)
    val_users = validation_users(
        np.diff(train_clicks.indptr), min_positives, n_val, rng, "train clicks"
    )
    val_in, val_out = fold_in_split(train_clicks[val_users], 0.8, rng)
    out = val_out.tocoo()
    lent = binary_matrix(val_users[out.row], out.col, train_clicks.shape)  # (U, I)
    return WeakSplit(
        user_ids, item_ids[catalog], minus(train_views, lent), minus(train_clicks, lent),
        val_in, val_out, train_clicks, train_views, test, n_test,
    )  # fmt: skip


def _ids(*arrays: npt.NDArray[np.str_]) -> tuple[npt.NDArray[np.str_], list[npt.NDArray[np.intp]]]:
    ids, inverse = np.unique(np.concatenate(arrays), return_inverse=True)
    bounds = np.cumsum([0, *(len(a) for a in arrays)])
    return ids.astype(str), [inverse[a:b] for a, b in itertools.pairwise(bounds)]


def split_from_files(
    train: Ratings,
    test: Ratings,
    valid: Ratings | None = None,
    n_val: int | None = None,
    seed: int = 0,
) -> WeakSplit:
    """Train / test [/ validation] files: one id space; in test and validation only the
    clicks count (ratings >= 4 where the file has ratings)."""
    parts = [train, test] if valid is None else [train, test, valid]
    user_ids, user_rows = _ids(*(p.users for p in parts))
    item_ids, item_cols = _ids(*(p.items for p in parts))
    shape = (len(user_ids), len(item_ids))

    def matrix(k: int, only_clicks: bool) -> sp.csr_matrix:
        keep = parts[k].is_click if only_clicks else np.ones(len(parts[k].users), dtype=bool)
        return binary_matrix(user_rows[k][keep], item_cols[k][keep], shape)

    return weak_split(
        user_ids, item_ids, matrix(0, False), matrix(0, True), matrix(1, True),
        matrix(2, True) if valid is not None else None, n_val, seed,
    )  # fmt: skip


def split_one_source(
    data: Interactions, test_share: float = 0.2, seed: int = 0, n_val: int | None = None
) -> WeakSplit:
    """A seeded per-user split of one source: ``test_share`` of each user's clicks (at
    least one when they have two) to test; the rest, and every view, to train."""
    rng = np.random.default_rng(seed)
    train_clicks, test = fold_in_split(data.clicks, 1.0 - test_share, rng)
    train_views = minus(data.views, test)
    return weak_split(
        data.user_ids, data.item_ids, train_views, train_clicks, test, None, n_val, seed + 1
    )


SplitMetrics = Callable[[ScoreFn, "WeakSplit"], dict[str, float]]


def ranked_hits(
    score_fn: ScoreFn, split: WeakSplit, k: int, max_cells: int = 20_000_000
) -> Iterator[tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64]]]:
    """Batches of ((b, k) True where the rank-r item is a test item, (b,) test items) over
    the users with a test item: encoded from ``inputs``, their ``known`` items never ranked."""
    users = np.flatnonzero(split.n_test > 0)
    batch = max(1, max_cells // max(split.item_ids.shape[0], 1))
    for start in range(0, len(users), batch):
        rows = users[start : start + batch]
        scores = np.array(score_fn(split.inputs[rows]), dtype=np.float64)  # (b, I) private
        scores[split.known[rows].nonzero()] = -np.inf
        kk = min(k, scores.shape[1])
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(part, order, axis=1)  # (b, kk) best first
        flat_rows = np.repeat(rows, top.shape[1])
        hits = np.asarray(split.test[flat_rows, top.ravel()]).reshape(top.shape) > 0
        yield hits, split.n_test[rows]


def weak_metrics(score_fn: ScoreFn, split: WeakSplit, k: int = WEAK_K) -> dict[str, float]:
    """{"recall@k", "ndcg@k"} averaged over the users with a test item (LightGCN's)."""
    discount = 1.0 / np.log2(np.arange(2, k + 2))  # (k,)
    ideal = np.concatenate([[0.0], np.cumsum(discount)])  # ideal[m]: DCG of m hits on top
    recall_sum = ndcg_sum = 0.0
    n = 0
    for hits, n_test in ranked_hits(score_fn, split, k):
        recall_sum += float((hits.sum(axis=1) / n_test).sum())
        ndcg_sum += float(((hits @ discount[: hits.shape[1]]) / ideal[np.minimum(n_test, k)]).sum())
        n += len(n_test)
    n = max(n, 1)
    return {f"recall@{k}": recall_sum / n, f"ndcg@{k}": ndcg_sum / n}


def _best_epoch(history: Sequence[dict[str, float]]) -> int:
    """The epoch whose model fine-tuning kept (the best validation NDCG@100)."""
    if not history:
        return 0
    return int(max(history, key=lambda h: h.get("ndcg@100", -1.0)).get("epoch", 0))


def _validation_split(split: WeakSplit) -> Split:
    """The strong protocol's Split view of the fit data, for the shared tuning code
    (zero-shot scale, fine-tuning's early stopping): validation = the validation users."""
    return Split(
        item_ids=split.item_ids,
        train_views=split.fit_views,
        train_clicks=split.fit_clicks,
        val_in=split.val_in,
        val_out=split.val_out,
        test_in=split.val_in,
        test_out=split.val_out,
    )


def run_weak_evaluate(
    split: WeakSplit,
    out_dir: Path,
    finetune_config: FinetuneConfig | None,
    *,
    pretrain: PretrainConfig | None = None,
    ease_lambdas: Sequence[float] = EASE_LAMBDAS,
    ease_max_items: int = EASE_MAX_ITEMS,
    seed: int = 0,
    source: str = "",
    progress: Progress | None = None,
    protocol: str = "weak",
    metrics: SplitMetrics = weak_metrics,
    definition: str = "",
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Popularity, EASE, item-kNN, SVD-only LED and fine-tuned LED (unless
    ``finetune_config`` is None) on ``split``; writes report.json and report.md.

    Another protocol on a WeakSplit (the time split) names itself (``protocol``), brings its
    ``metrics``, a one-paragraph ``definition`` for the report and ``data`` counts."""
    from ledrec.training.jobs import PretrainConfig, Stopwatch, zero_shot
    from ledrec.training.pretrain import pretrain_embeddings

    pre = pretrain or PretrainConfig()
    clock = Stopwatch(progress)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []

    def add(model: str, variant: str, seconds: float, score_fn: ScoreFn, **extra: Any) -> None:
        with clock.stage(f"test {model} {variant}".strip()):
            figures = metrics(score_fn, split)
        rows.append({"model": model, "variant": variant, "seconds": seconds, **figures, **extra})

    with clock.stage("popularity"):
        pop = popularity_score_fn(split.fit_clicks)
    add("Popularity", "", clock.seconds["popularity"], pop)
    n_items = split.item_ids.shape[0]
    if n_items <= ease_max_items:
        with clock.stage("ease"):
            ease = tune_ease(split.fit_clicks, split.val_in, split.val_out, ease_lambdas)
        add("EASE", "", clock.seconds["ease"], ease_score_fn(ease.weights), lam=ease.lam)
        del ease  # (I, I) dense
    else:
        clock.say(f"EASE skipped: {n_items} items > {ease_max_items} (a dense I x I inverse)")
        rows.append({"model": "EASE", "variant": f"skipped: {n_items} items", "seconds": 0.0})
    with clock.stage("item-knn"):
        knn = tune_item_knn(split.fit_clicks, split.val_in, split.val_out)
    add("Item-kNN", "", clock.seconds["item-knn"], knn.score_fn, k=knn.k)
    del knn
    tuning = _validation_split(split)
    with clock.stage("pretrain"):
        svd = pretrain_embeddings(
            split.fit_views, pre.dim, seed, pre.min_count, pre.smoothing, pre.n_iter
        )
    with clock.stage("zero-shot"):
        zero = zero_shot(tuning, svd, pre.zero_shot_scales)
    add(
        "LED", "SVD-only", clock.seconds["pretrain"] + clock.seconds["zero-shot"],
        led_score_fn(zero.embeddings, zero.biases), scale=zero.scale,
    )  # fmt: skip
    if finetune_config is not None:
        from ledrec.training.finetune import finetune

        with clock.stage("finetune"):
            init = zero.base if finetune_config.init == "svd" else None
            result = finetune(tuning, finetune_config, init, progress=clock.say)
        add(
            "LED", f"{finetune_config.loss}/{finetune_config.variant}/{finetune_config.init}",
            clock.seconds["pretrain"] + result.seconds,
            led_score_fn(result.embeddings, result.biases),
            best_epoch=_best_epoch(result.history), config=asdict(finetune_config),
        )  # fmt: skip
    ease_row = next((r for r in rows if r["model"] == "EASE" and "lam" in r), None)
    for row in rows:
        if ease_row is not None and f"recall@{WEAK_K}" in row:
            row[f"recall@{WEAK_K} / EASE"] = row[f"recall@{WEAK_K}"] / ease_row[f"recall@{WEAK_K}"]
    report = {
        "protocol": protocol,
        "definition": definition,
        "source": source,
        "seed": seed,
        "data": {
            "users": int(split.user_ids.shape[0]),
            "items": int(n_items),
            "fit_clicks": int(split.fit_clicks.nnz),
            "fit_views": int(split.fit_views.nnz),
            "validation_users": int(split.val_in.shape[0]),
            "test_users": int((split.n_test > 0).sum()),
            "test_items": int(split.n_test.sum()),
            "test_items_outside_catalog": int(split.n_test.sum() - split.test.nnz),
            **(data or {}),
        },
        "pretrain": asdict(pre),
        "rows": rows,
        "stage_seconds": clock.seconds,
        "total_seconds": time.perf_counter() - started,
    }
    write_report(report, out_dir, render_weak_markdown)
    clock.say(f"report written to {out_dir}")
    return report


PROTOCOL_TITLES = {"weak": "weak generalization", "time": "global time split"}


def render_weak_markdown(report: dict[str, Any]) -> str:
    d = report["data"]
    k = WEAK_K
    definition = report.get("definition") or (
        f"Every user trains (LightGCN protocol), seed {report['seed']}: {d['users']} users, "
        f"{d['items']} items, {d['fit_clicks']} training clicks; {d['test_users']} test users "
        f"with {d['test_items']} test items ({d['test_items_outside_catalog']} outside the "
        f"training catalog, counted as misses). Model selection on {d['validation_users']} "
        f"validation users. Recall@{k} = hits / the user's test items; NDCG@{k} binary, ideal "
        f"DCG over min({k}, |test|); both averaged over test users."
    )
    scored = [r for r in report["rows"] if f"recall@{k}" in r]
    names = [n for n in scored[0] if "@" in n and "/" not in n] if scored else []
    lines = [
        f"# LED evaluation, {PROTOCOL_TITLES.get(report['protocol'], report['protocol'])} — "
        f"{report['source'] or 'interactions'}",
        "",
        f"{definition} d = {report['pretrain']['dim']}. Train s = fitting (EASE, item-kNN: "
        "every value of the grid; LED: pre-training + fine-tuning).",
        "",
        "| Model | Variant | " + " | ".join(map(metric_label, names))
        + f" | R@{k} / EASE | Chosen | Train s |",
        "|---|---|" + "---|" * (len(names) + 3),
    ]  # fmt: skip
    for r in report["rows"]:
        if f"recall@{k}" not in r:
            lines.append(f"| {r['model']} | {r['variant']} |" + " |" * (len(names) + 3))
            continue
        ratio = r.get(f"recall@{k} / EASE")
        chosen = next(
            (f"{name} {r[name]:g}" for name in ("lam", "k", "scale", "best_epoch") if name in r), ""
        )
        figures = " | ".join(f"{r[n]:.4f}" for n in names)
        lines.append(
            f"| {r['model']} | {r['variant']} | {figures} | "
            f"{'' if ratio is None else f'{ratio:.2f}'} | {chosen} | {r['seconds']:.1f} |"
        )
    seconds = ", ".join(f"{name} {v:.1f}s" for name, v in report["stage_seconds"].items())
    return "\n".join(
        [*lines, "", f"Total {report['total_seconds']:.0f}s. Stage seconds: {seconds}.", ""]
    )


def validation_users(
    n_clicks: npt.NDArray[np.integer],
    min_positives: int,
    n_val: int | None,
    rng: np.random.Generator,
    counted: str,
) -> npt.NDArray[np.int64]:
    """``n_val`` users (default: a tenth of them, at most ``DEFAULT_N_HELDOUT``) drawn among
    those with ``n_clicks >= min_positives``, sorted; ``counted`` names the clicks counted."""
    eligible = np.flatnonzero(n_clicks >= min_positives)
    if n_val is None:
        n_val = min(DEFAULT_N_HELDOUT, len(eligible) // 10)
    if not 1 <= n_val <= len(eligible):
        raise ValueError(
            f"{len(eligible)} users with >= {min_positives} {counted}: cannot take "
            f"{n_val} validation users from them"
        )
    return np.sort(rng.choice(eligible, size=n_val, replace=False))
