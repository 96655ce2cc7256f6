"""The Spark engine against the numpy engine on MovieLens-1M: same split, same seed.

For each engine: the pre-trained (SVD-only) model's test Recall@20 / Recall@50 /
NDCG@100 and pre-training seconds; the principal angles between the two engines'
embedding subspaces (next to the numpy engine run with another seed, the method's own
spread, and to the exact SVD); the PMI matrices compared entry for entry; and the
fine-tuned model on top of each (``--finetune-seeds`` runs each, mean ± std: "within
noise" means the gap between engines is of the order of the seed-to-seed spread).

    python -m benchmarks.spark_equivalence --movielens /work/shared/data/ml-1m
    python -m benchmarks.spark_equivalence --movielens ... --finetune-seeds 0   # quicker

Writes ``benchmarks/results/spark_equivalence.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.linalg import subspace_angles

from ledrec.training.dataset import load_movielens
from ledrec.training.evaluate import evaluate_scores, led_score_fn
from ledrec.training.finetune import FinetuneConfig, finetune
from ledrec.training.jobs import NumpyPretrainer, PretrainConfig, zero_shot
from ledrec.training.pretrain import embeddings_from_svd, pmi_matrix, svd_rank
from ledrec.training.split import Split, strong_generalization_split

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("recall@20", "recall@50", "ndcg@100")


def _test(split: Split, embeddings: npt.NDArray[np.float32], biases: Any) -> dict[str, float]:
    scores = evaluate_scores(led_score_fn(embeddings, biases), split.test_in, split.test_out)
    return {k: float(v) for k, v in scores.items()}


def _angles(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> dict[str, float]:
    """Principal angles (degrees) between the column spaces of two (I, d) embeddings."""
    degrees = np.sort(np.degrees(subspace_angles(a.astype(np.float64), b.astype(np.float64))))
    return {
        "median": float(np.median(degrees)),
        "p90": float(np.percentile(degrees, 90)),
        "max": float(degrees.max()),
        "share_below_1deg": float((degrees < 1.0).mean()),
    }


def _exact_svd_embeddings(split: Split, config: PretrainConfig) -> npt.NDArray[np.float32]:
    """The embeddings of the exact (dense LAPACK) SVD: what both randomized SVDs approximate."""
    pmi = pmi_matrix(split.train_views, config.min_count, config.smoothing)
    u, s, _ = np.linalg.svd(pmi.toarray().astype(np.float64))
    k = svd_rank(pmi.shape[0], config.dim)
    return embeddings_from_svd(u[:, :k], s[:k], np.diff(pmi.indptr) > 0, config.dim)


def _pmi_agreement(
    split: Split, heldout: list[str], events: Any, config: PretrainConfig, block: int
) -> dict[str, Any]:
    """Spark's PMI tiles (the training views of ``events`` without the ``heldout`` users),
    collected here for the comparison only, against the numpy engine's matrix."""
    from ledrec.training.spark.events import training_views
    from ledrec.training.spark.pmi import pmi_tiles

    expected = pmi_matrix(split.train_views, config.min_count, config.smoothing).tocsr()
    n = len(split.item_ids)
    views = training_views(events, split.item_ids.tolist(), heldout)
    tiles = pmi_tiles(views, n, block, config.min_count, config.smoothing)
    got = sp.lil_matrix((n, n), dtype=np.float32)
    for (r, c), tile in tiles.toLocalIterator():
        got[r * block : r * block + tile.shape[0], c * block : c * block + tile.shape[1]] = tile
    tiles.unpersist()
    got = got.tocsr()
    relative = abs(got - expected).multiply(expected.power(-1))  # on numpy's entries
    return {
        "numpy_nnz": int(expected.nnz),
        "spark_nnz": int(got.nnz),
        "same_pattern": ((got > 0) != (expected > 0)).nnz == 0,
        "max_relative_difference": float(relative.max()) if relative.nnz else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--movielens", type=Path, default=Path("/work/shared/data/ml-1m"))
    parser.add_argument("--spark-master", default="local[2]")
    parser.add_argument("--block", type=int, default=1024, help="RSVD tile size (4 × 4 tiles)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--finetune-seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/spark_equivalence.json"
    )
    args = parser.parse_args()

    from ledrec.training.spark.events import read_movielens
    from ledrec.training.spark.pretrain import SparkPretrainer
    from ledrec.training.spark.session import spark_session

    data = load_movielens(args.movielens)
    split = strong_generalization_split(data, n_heldout=600, seed=args.seed)
    assert split.val_users is not None and split.test_users is not None
    heldout = data.user_ids[np.concatenate([split.val_users, split.test_users])].tolist()
    config = PretrainConfig()
    report: dict[str, Any] = {
        "data": str(args.movielens),
        "seed": args.seed,
        "pretrain": asdict(config),
        "spark": {"master": args.spark_master, "block": args.block},
        "machine": {
            "python": platform.python_version(),
            "cores": os.cpu_count(),
            "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
        },
    }
    spark = spark_session(args.spark_master)
    events = read_movielens(spark, args.movielens)
    engines = {
        "numpy": NumpyPretrainer(),
        "spark": SparkPretrainer(spark, events, block=args.block),
    }
    svd: dict[str, npt.NDArray[np.float32]] = {}
    rows: dict[str, dict[str, Any]] = {}
    for name, engine in engines.items():
        t0 = time.perf_counter()
        svd[name] = engine(data, split, config, args.seed)
        seconds = time.perf_counter() - t0
        zero = zero_shot(split, svd[name], config.zero_shot_scales)
        rows[name] = {"pretrain_seconds": round(seconds, 1), "zero_shot_scale": zero.scale,
                      "svd_only": _test(split, zero.embeddings, zero.biases)}  # fmt: skip
        print(f"{name}: pre-training {seconds:.1f}s, SVD-only {rows[name]['svd_only']}", flush=True)
        tuned = []
        for seed in args.finetune_seeds:
            result = finetune(split, FinetuneConfig(dim=config.dim, seed=seed), zero.base)
            tuned.append(_test(split, result.embeddings, result.biases))
            print(f"  fine-tuned (seed {seed}): {tuned[-1]}", flush=True)
        rows[name]["finetuned"] = tuned
        if tuned:
            rows[name]["finetuned_mean"] = {
                k: float(np.mean([t[k] for t in tuned])) for k in METRICS
            }
            rows[name]["finetuned_std"] = {k: float(np.std([t[k] for t in tuned])) for k in METRICS}
    report["engines"] = rows
    report["svd_only_relative_difference"] = {
        k: rows["spark"]["svd_only"][k] / rows["numpy"]["svd_only"][k] - 1 for k in METRICS
    }
    other_seed = NumpyPretrainer()(data, split, config, args.seed + 1)
    exact = _exact_svd_embeddings(split, config)
    report["principal_angles_deg"] = {
        "spark_vs_numpy": _angles(svd["spark"], svd["numpy"]),
        f"numpy_seed{args.seed + 1}_vs_numpy": _angles(other_seed, svd["numpy"]),
        "numpy_vs_exact": _angles(svd["numpy"], exact),
        "spark_vs_exact": _angles(svd["spark"], exact),
    }
    report["pmi"] = _pmi_agreement(split, heldout, events, config, args.block)
    spark.stop()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(render(report))
    print(f"written {args.out}")


def render(report: dict[str, Any]) -> str:
    """The equivalence table, as Markdown."""
    lines = ["| Engine | Model | Recall@20 | Recall@50 | NDCG@100 | Pre-train s |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name, row in report["engines"].items():
        cells = " | ".join(f"{row['svd_only'][k]:.4f}" for k in METRICS)
        lines.append(f"| {name} | SVD-only | {cells} | {row['pretrain_seconds']:.1f} |")
    for name, row in report["engines"].items():
        if "finetuned_mean" in row:
            n = len(row["finetuned"])
            cells = " | ".join(
                f"{row['finetuned_mean'][k]:.4f} ± {row['finetuned_std'][k]:.4f}" for k in METRICS
            )
            lines.append(f"| {name} | fine-tuned (CSS/Train, {n} seeds) | {cells} | |")
    diff = report["svd_only_relative_difference"]
    lines.append("")
    lines.append("SVD-only, Spark / numpy - 1: "
                 + ", ".join(f"{k} {v:+.2%}" for k, v in diff.items()))  # fmt: skip
    for pair, a in report["principal_angles_deg"].items():
        lines.append(f"Principal angles {pair}: median {a['median']:.2f}°, p90 {a['p90']:.2f}°, "
                     f"max {a['max']:.2f}°, {a['share_below_1deg']:.0%} below 1°")  # fmt: skip
    p = report["pmi"]
    lines.append(
        f"PMI: numpy {p['numpy_nnz']} entries, Spark {p['spark_nnz']}, same pattern "
        f"{p['same_pattern']}, max relative difference {p['max_relative_difference']:.1e}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
