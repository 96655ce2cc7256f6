"""Training at growing scale on synthetic data: seconds and peak memory per stage.

Each size runs in its own subprocess so its memory high-water mark is its own. Per stage
we report wall seconds, the tracemalloc peak (numpy/scipy array allocations made during
the stage) and the process's ru_maxrss after the stage (high-water mark so far).

    python benchmarks/train_scale.py --max-events 1000000
    python benchmarks/train_scale.py               # up to 10^7 events, 10^6 users, 10^5 items
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = [  # (users, items, events)
    (10_000, 1_000, 100_000),
    (100_000, 10_000, 1_000_000),
    (1_000_000, 100_000, 10_000_000),
]
T = TypeVar("T")


def _stage(report: dict[str, Any], name: str, fn: Callable[[], T]) -> T:
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    report["stages"][name] = {
        "seconds": round(seconds, 2),
        "traced_peak_mb": round(peak / 2**20, 1),
        "maxrss_mb": round(rss_mb, 1),
    }
    print(f"  {name:10s} {seconds:8.2f}s  traced peak {peak / 2**20:8.1f} MB  "
          f"maxrss {rss_mb:8.1f} MB", flush=True)  # fmt: skip
    return out


def run_size(
    users: int, items: int, events: int, dim: int, epochs: int, seed: int
) -> dict[str, Any]:
    """One size, in this process: generate, split, PMI, SVD, a short fine-tune."""
    from ledrec.training.finetune import FinetuneConfig, finetune
    from ledrec.training.pretrain import pmi_matrix, svd_embeddings
    from ledrec.training.split import strong_generalization_split
    from ledrec.training.synthetic import SyntheticConfig, synthetic_interactions

    report: dict[str, Any] = {"users": users, "items": items, "target_events": events, "stages": {}}
    config = SyntheticConfig(n_users=users, n_items=items, n_events=events, seed=seed)
    data = _stage(report, "generate", lambda: synthetic_interactions(config))
    # ~10 events per user leave few users with 5 clicks: hold out users with >= 3
    split = _stage(
        report,
        "split",
        lambda: strong_generalization_split(data, n_heldout=600, seed=seed, min_positives=3),
    )
    pmi = _stage(report, "pmi", lambda: pmi_matrix(split.train_views))
    emb = _stage(report, "svd", lambda: svd_embeddings(pmi, dim, seed))
    ft = FinetuneConfig(loss="bpr", variant="train", init="svd", dim=dim, epochs=epochs, seed=seed)
    result = _stage(report, "finetune", lambda: finetune(split, ft, emb))
    report.update(
        views=int(data.views.nnz),
        clicks=int(data.clicks.nnz),
        items_kept=int(split.item_ids.shape[0]),
        pmi_nnz=int(pmi.nnz),
        dim=dim,
        finetune_epochs=epochs,
        val_metrics=result.val_metrics,
        total_seconds=round(sum(s["seconds"] for s in report["stages"].values()), 2),
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-events", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/train_scale.json")
    parser.add_argument("--one", nargs=3, type=int, help=argparse.SUPPRESS)  # child: U I E
    args = parser.parse_args()
    if args.one:
        print(
            json.dumps(
                run_size(args.one[0], args.one[1], args.one[2], args.dim, args.epochs, args.seed)
            )
        )
        return
    results = []
    for users, items, events in SIZES:
        if events > args.max_events:
            continue
        print(f"{users} users, {items} items, {events} events", flush=True)
        cmd = [sys.executable, __file__, "--one", str(users), str(items), str(events)]
        cmd += ["--dim", str(args.dim), "--epochs", str(args.epochs), "--seed", str(args.seed)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
        *lines, last = proc.stdout.rstrip().splitlines()
        print("\n".join(lines), flush=True)
        results.append(json.loads(last))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {
        "python": platform.python_version(),
        "cpus": len(__import__("os").sched_getaffinity(0)),
    }
    args.out.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
