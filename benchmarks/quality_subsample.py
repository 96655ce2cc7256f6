"""Few users, the same catalog: ``ledrec train``'s default on MovieLens-1M subsampled to a
share of its users (every item kept), against EASE on the same split (issue #18).

For each seed: a fresh user sample, ``run_train`` with the default configuration and the
small-data ``--n-heldout`` default, and EASE tuned as ``ledrec evaluate`` tunes it (λ on
validation NDCG@100, Recall@20 on the test users). Records each candidate's validation and
test figures, which one the selection chose, and the chosen model's Recall@20 / EASE.

    python -m benchmarks.quality_subsample --movielens /work/shared/data/ml-1m
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ledrec.stream.artifact import load_model  # noqa: E402
from ledrec.training.baselines import ease_score_fn, tune_ease  # noqa: E402
from ledrec.training.dataset import Interactions, load_movielens  # noqa: E402
from ledrec.training.evaluate import evaluate_scores  # noqa: E402
from ledrec.training.finetune import FinetuneConfig  # noqa: E402
from ledrec.training.jobs import TrainConfig, run_train  # noqa: E402
from ledrec.training.selection import DEFAULT_MIN_STEPS  # noqa: E402
from ledrec.training.split import default_n_heldout, strong_generalization_split  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "quality_subsample.json"


def subsample_users(data: Interactions, share: float, seed: int) -> Interactions:
    """A random ``share`` of the users with all their events; every item column kept."""
    rng = np.random.default_rng(seed)
    n = max(1, round(share * data.n_users))
    rows = np.sort(rng.choice(data.n_users, size=n, replace=False))
    return replace(
        data, user_ids=data.user_ids[rows], views=data.views[rows], clicks=data.clicks[rows]
    )


def one_seed(data: Interactions, share: float, seed: int, min_steps: int) -> dict[str, Any]:
    sample = subsample_users(data, share, seed)
    n_heldout = default_n_heldout(sample)
    config = TrainConfig(
        finetune=FinetuneConfig(seed=seed), n_heldout=n_heldout, seed=seed, min_steps=min_steps
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as store:
        model = load_model(run_train(sample, Path(store), config))
    train_seconds = time.perf_counter() - t0
    selection = model.provenance["selection"]

    # EASE on the split run_train made (same data, n_heldout and seed)
    t0 = time.perf_counter()
    split = strong_generalization_split(sample, n_heldout=n_heldout, seed=seed)
    ease = tune_ease(split.train_clicks, split.val_in, split.val_out)
    ease_test = evaluate_scores(ease_score_fn(ease.weights), split.test_in, split.test_out)
    ease_seconds = time.perf_counter() - t0

    candidates = selection["candidates"]
    chosen = selection["chosen"]
    svd, tuned = candidates["svd_only"], candidates["css/train/svd"]
    return {
        "seed": seed,
        "users": sample.n_users,
        "train_users": int(split.train_clicks.shape[0]),
        "n_heldout": n_heldout,
        "items": int(split.item_ids.shape[0]),
        "ease_lambda": ease.lam,
        "ease_val_ndcg@100": ease.val_metrics["ndcg@100"],
        "ease_test_recall@20": ease_test["recall@20"],
        "svd_only_val_ndcg@100": svd["validation"]["ndcg@100"],
        "svd_only_test_recall@20": svd["test"]["recall@20"],
        "finetuned_val_ndcg@100": tuned["validation"]["ndcg@100"],
        "finetuned_test_recall@20": tuned["test"]["recall@20"],
        "finetuned_best_epoch": tuned["best_epoch"],
        "finetuned_epochs_run": tuned["epochs_run"],
        "finetuned_epochs": tuned["epochs"],
        "finetuned_patience": tuned["patience"],
        "chosen": chosen,
        "reason": selection["reason"],
        "chosen_test_recall@20": model.metrics["test_recall@20"],
        "chosen_recall@20 / EASE": model.metrics["test_recall@20"] / ease_test["recall@20"],
        "svd_only_recall@20 / EASE": svd["test"]["recall@20"] / ease_test["recall@20"],
        "finetuned_recall@20 / EASE": tuned["test"]["recall@20"] / ease_test["recall@20"],
        "chosen_not_below_svd_only_on_validation": (
            model.metrics["ndcg@100"] >= svd["validation"]["ndcg@100"]
        ),
        "train_seconds": train_seconds,
        "ease_seconds": ease_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movielens", default="/work/shared/data/ml-1m")
    parser.add_argument("--share", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--min-steps", type=int, default=DEFAULT_MIN_STEPS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    data = load_movielens(Path(args.movielens))
    rows = []
    for seed in args.seeds:
        row = one_seed(data, args.share, seed, args.min_steps)
        print(json.dumps(row), flush=True)
        rows.append(row)
    keys = [k for k, v in rows[0].items() if isinstance(v, float) and k != "seed"]
    report = {
        "what": f"MovieLens-1M, {args.share:.0%} of its users (every item), ledrec train's "
        "default (selection between SVD-only and css/train/svd on validation NDCG@100) vs EASE",
        "source": f"movielens:{args.movielens}",
        "share": args.share,
        "min_steps": args.min_steps,
        "seeds": args.seeds,
        "mean": {k: float(np.mean([r[k] for r in rows])) for k in keys},
        "std": {k: float(np.std([r[k] for r in rows])) for k in keys},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["mean"], indent=2))


if __name__ == "__main__":
    main()
