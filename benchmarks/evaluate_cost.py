"""Where ``ledrec evaluate``'s CPU goes on MovieLens-1M (#16): EASE's λ grid inverted in
float64 (before) and float32 (``baselines.ease_weights``), and the CPU seconds of one
fine-tuning epoch (its training steps and its sampled validation) for every LED row of
the table (``jobs.default_finetune_configs``).

CPU seconds on one BLAS thread (threadpoolctl), so that figures taken on a shared machine
compare: wall time there follows the other jobs.

    python -m benchmarks.evaluate_cost --movielens /work/shared/data/ml-1m

Writes ``benchmarks/results/evaluate_cost.json`` and prints one line per measurement.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import scipy.linalg
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result  # noqa: E402
from ledrec.training import finetune as ft  # noqa: E402
from ledrec.training.baselines import EASE_LAMBDAS, ease_score_fn, ease_weights, gram  # noqa: E402
from ledrec.training.dataset import load_movielens  # noqa: E402
from ledrec.training.evaluate import evaluate_scores  # noqa: E402
from ledrec.training.jobs import default_finetune_configs  # noqa: E402
from ledrec.training.losses import make_loss  # noqa: E402
from ledrec.training.pretrain import pretrain_embeddings  # noqa: E402
from ledrec.training.sampled_eval import SampledValidation  # noqa: E402
from ledrec.training.split import Split, strong_generalization_split  # noqa: E402

T = TypeVar("T")


def _cpu(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.process_time()
    out = fn()
    return out, time.process_time() - start


def _ease_float64(g: npt.NDArray[np.float64], lam: float) -> npt.NDArray[np.float32]:
    """The weights as computed before #16: the inverse in float64."""
    a = g.copy()
    a[np.diag_indices_from(a)] += lam
    p = scipy.linalg.inv(a, overwrite_a=True, check_finite=False)
    b = p / (-np.diag(p))
    b[np.diag_indices_from(b)] = 0.0
    return b.astype(np.float32)


def ease_grid(split: Split) -> list[dict[str, Any]]:
    g = gram(split.train_clicks)
    rows = []
    for lam in EASE_LAMBDAS:
        w64, cpu64 = _cpu(lambda lam=lam: _ease_float64(g, lam))
        w32, cpu32 = _cpu(lambda lam=lam: ease_weights(g, lam))
        m64 = evaluate_scores(ease_score_fn(w64), split.val_in, split.val_out)
        m32 = evaluate_scores(ease_score_fn(w32), split.val_in, split.val_out)
        row = {
            "lambda": lam,
            "cpu_s_float64": round(cpu64, 2),
            "cpu_s_float32": round(cpu32, 2),
            "max_abs_weight_difference": float(np.abs(w64 - w32).max()),
            "validation_float64": m64,
            "validation_float32": m32,
        }
        print(
            f"EASE λ {lam:6g}: float64 {cpu64:5.2f} s CPU, float32 {cpu32:5.2f} s; "
            f"weights within {row['max_abs_weight_difference']:.1e}; validation ndcg@100 "
            f"{m64['ndcg@100']:.6f} / {m32['ndcg@100']:.6f}",
            flush=True,
        )
        rows.append(row)
    return rows


def epoch_cost(
    split: Split, svd: npt.NDArray[np.float32], config: ft.FinetuneConfig
) -> dict[str, Any]:
    """CPU seconds of one epoch of ``config``'s training steps, and of one sampled
    validation pass, from its initial parameters (as ``finetune`` runs them)."""
    rng = np.random.default_rng(config.seed)
    base = svd if (config.init == "svd" or config.variant == "proj") else None
    params = ft._initial_params(config, split, base, rng)
    clicks = split.train_clicks.tocsr()
    clicks = clicks[np.diff(clicks.indptr) >= 2]
    loss = make_loss(config.loss, clicks.shape[1])
    sampler = ft._negative_sampler(config, clicks, rng)
    adam = ft._Adam(params, config.lr)
    parts = {"sample": 0.0, "gradients": 0.0, "adam": 0.0}
    order = rng.permutation(clicks.shape[0])
    for first in range(0, len(order), config.batch_size):
        rows = clicks[order[first : first + config.batch_size]]
        batch, cpu = _cpu(lambda rows=rows: ft._sample_batch(rows, config.dropout, sampler, rng))
        parts["sample"] += cpu
        (_, grads), cpu = _cpu(lambda batch=batch: ft._gradients(params, base, batch, loss))
        parts["gradients"] += cpu
        _, cpu = _cpu(lambda batch=batch, grads=grads: adam.step(params, grads, batch.items))
        parts["adam"] += cpu
    sampled = SampledValidation(
        split.val_in, split.val_out, config.val_negatives, config.val_users, config.seed
    )
    _, validation = _cpu(
        lambda: sampled(
            lambda items: (ft._item_vectors(params, base, items), params["biases"][items])
        )
    )
    name = f"{config.loss}/{config.variant}/{config.init}"
    row = {
        "config": name,
        "steps_cpu_s": round(sum(parts.values()), 3),
        "parts_cpu_s": {k: round(v, 3) for k, v in parts.items()},
        "validation_cpu_s": round(validation, 3),
    }
    print(
        f"{name:18s} one epoch: steps {row['steps_cpu_s']:.2f} s CPU "
        f"({', '.join(f'{k} {v:.2f}' for k, v in row['parts_cpu_s'].items())}), "
        f"validation {validation:.2f} s",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--movielens", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    data = load_movielens(args.movielens)
    split = strong_generalization_split(data, n_heldout=600, seed=0)
    with threadpool_limits(limits=1):
        svd = pretrain_embeddings(split.train_views, 256, 0)
        ease = ease_grid(split)
        epochs = [epoch_cost(split, svd, c) for c in default_finetune_configs(256, 0)]
    path = write_result(
        "evaluate_cost",
        {"movielens": str(args.movielens), "blas_threads": 1, "ease": ease, "epochs": epochs},
        args.out,
    )
    print(f"written {path}")


if __name__ == "__main__":
    main()
