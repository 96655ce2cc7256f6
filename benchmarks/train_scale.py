"""Training at growing scale on synthetic data: seconds and peak memory per stage.

Each size runs in its own subprocess so its memory high-water mark is its own. Per stage
we report wall seconds, the tracemalloc peak (numpy/scipy array allocations made during
the stage) and the process's ru_maxrss after the stage (high-water mark so far).

    python benchmarks/train_scale.py --max-events 1000000
    python benchmarks/train_scale.py               # up to 10^7 events, 10^6 users, 10^5 items
    python benchmarks/train_scale.py --items 10000 100000 1000000   # the catalog sweep
    python benchmarks/train_scale.py --engine spark --max-events 1000000   # Spark, local[2]

``--engine spark`` (or ``both``) runs the pre-training on Spark (``training.spark``,
``--spark-master``, default local[2]): the same generated data and split, then the stages
``spark_start`` (the session and its JVM), ``views_to_spark`` (the driver's views matrix
made a cached DataFrame), ``pmi`` and ``svd``. Fine-tuning is the same numpy code on
either engine's embeddings, so it is timed in the numpy rows only. Every stage also
reports ``tree_peak_mb``: the peak RSS of this process and all its descendants (the JVM
and its Python workers), sampled every 0.1 s while the stage runs. The Spark rows go to
the ``spark_results`` section.

``--items`` is the catalog sweep (#16): the same events and users, growing catalogs, and
one default fine-tuning epoch (+ its validation) timed on its own. Its world clicks every
view, with flat popularity, so that nearly every generated item gets a training click and
stays in the catalog (with the default funnel, 10^6 events keep at most ~10^5 items). It
fine-tunes from random embeddings: at fixed events a large catalog has almost no item
viewed by ``min_count`` users, so the PMI is empty. ``--profile DIR`` writes a
pyinstrument profile of each size's fine-tuning there. The results go to the
``items_sweep`` section of the same JSON file; each sweep keeps the other's section.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import platform
import resource
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = [  # (users, items, events)
    (10_000, 1_000, 100_000),
    (100_000, 10_000, 1_000_000),
    (1_000_000, 100_000, 10_000_000),
]
T = TypeVar("T")


class _TreePeak:
    """The peak RSS of this process and all its descendants (Spark's JVM and its Python
    workers), sampled every ``interval`` seconds on a thread while the block runs:
    ru_maxrss sees neither a child that is still alive nor one stage apart from another."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            # a worker may exit between the listing and the reading
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        self.peak = max(self.peak, total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> _TreePeak:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _stage(report: dict[str, Any], name: str, fn: Callable[[], T]) -> T:
    tracemalloc.start()
    t0 = time.perf_counter()
    with _TreePeak() as tree:
        out = fn()
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    report["stages"][name] = {
        "seconds": round(seconds, 2),
        "traced_peak_mb": round(peak / 2**20, 1),
        "maxrss_mb": round(rss_mb, 1),
        "tree_peak_mb": round(tree.peak / 2**20, 1),
    }
    print(f"  {name:14s} {seconds:8.2f}s  traced peak {peak / 2**20:8.1f} MB  "
          f"maxrss {rss_mb:8.1f} MB  tree peak {tree.peak / 2**20:8.1f} MB",
          flush=True)  # fmt: skip
    return out


def run_size(
    users: int, items: int, events: int, dim: int, epochs: int, seed: int
) -> dict[str, Any]:
    """One size, in this process: generate, split, PMI, SVD, a short fine-tune."""
    from ledrec.training.finetune import FinetuneConfig, finetune
    from ledrec.training.pretrain import pmi_matrix, svd_embeddings

    report, data, split = _generated_split(users, items, events, seed)
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


def _generated_split(users: int, items: int, events: int, seed: int) -> tuple[Any, Any, Any]:
    """A size's report, its synthetic data and split, both stages timed (either engine)."""
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
    return report, data, split


def run_size_spark(
    users: int, items: int, events: int, dim: int, seed: int, master: str
) -> dict[str, Any]:
    """One size on the Spark engine, in this process: the numpy rows' data and split, then
    the pre-training on a SparkSession on ``master``, each of its stages timed apart."""
    import numpy as np

    from ledrec.training.jobs import PretrainConfig
    from ledrec.training.pretrain import embeddings_from_svd, svd_rank
    from ledrec.training.spark.events import views_from_matrix
    from ledrec.training.spark.pmi import pmi_tiles
    from ledrec.training.spark.pretrain import _nonempty_rows
    from ledrec.training.spark.rsvd import DEFAULT_BLOCK, block_matrix, randomized_svd
    from ledrec.training.spark.session import spark_session

    pre = PretrainConfig(dim=dim)
    report, data, split = _generated_split(users, items, events, seed)
    n = len(split.item_ids)
    spark = _stage(report, "spark_start", lambda: spark_session(master))
    try:

        def load() -> Any:
            views = views_from_matrix(spark, split.train_views).cache()
            views.count()  # materialised here, so that the PMI stage starts from it
            return views

        views = _stage(report, "views_to_spark", load)

        def pmi() -> Any:
            tiles = pmi_tiles(views, n, DEFAULT_BLOCK, pre.min_count, pre.smoothing)
            # as spark_pretrain_embeddings: the rows with a PMI value, which materialises
            # the tiles (cached) inside this stage
            rows = tiles.flatMap(lambda t: _nonempty_rows(t[0][0], t[1], DEFAULT_BLOCK))
            has_signal = np.zeros(n, dtype=bool)
            has_signal[np.asarray(rows.collect(), dtype=np.int64)] = True
            nnz = tiles.map(lambda t: t[1].nnz).sum()
            return tiles, has_signal, int(nnz)

        tiles, has_signal, pmi_nnz = _stage(report, "pmi", pmi)

        def svd() -> Any:
            matrix = block_matrix(tiles, (n, n), DEFAULT_BLOCK)
            try:
                return randomized_svd(matrix, svd_rank(n, dim), n_iter=pre.n_iter, seed=seed)
            finally:
                matrix.unpersist()

        blocks, s = _stage(report, "svd", svd)
        u = np.zeros((n, s.shape[0]), dtype=np.float64)
        for b, values in blocks.items():
            u[b * DEFAULT_BLOCK : b * DEFAULT_BLOCK + values.shape[0]] = values
        emb = embeddings_from_svd(u, s, has_signal, dim)
    finally:
        spark.stop()
    report.update(
        engine="spark",
        master=master,
        views=int(data.views.nnz),
        clicks=int(data.clicks.nnz),
        items_kept=n,
        pmi_nnz=pmi_nnz,
        dim=dim,
        embedding_rows_with_signal=int((np.abs(emb).sum(axis=1) > 0).sum()),
        total_seconds=round(sum(s["seconds"] for s in report["stages"].values()), 2),
    )
    return report


ITEMS_WORLD = dict(zipf_exponent=0.0, click_in_taste=1.0, click_off_taste=1.0)


def run_items(
    items: int, users: int, events: int, dim: int, epochs: int, seed: int, profile: Path | None
) -> dict[str, Any]:
    """One catalog size of the items sweep, in this process: generate, split, fine-tune."""
    from ledrec.training.finetune import FinetuneConfig, finetune
    from ledrec.training.split import strong_generalization_split
    from ledrec.training.synthetic import SyntheticConfig, synthetic_interactions

    report: dict[str, Any] = {"users": users, "items": items, "target_events": events, "stages": {}}
    world = SyntheticConfig(n_users=users, n_items=items, n_events=events, seed=seed, **ITEMS_WORLD)
    data = _stage(report, "generate", lambda: synthetic_interactions(world))
    split = _stage(
        report,
        "split",
        lambda: strong_generalization_split(data, n_heldout=600, seed=seed, min_positives=3),
    )
    config = FinetuneConfig(init="random", dim=dim, epochs=epochs, patience=epochs + 1, seed=seed)
    profiler = None
    if profile is not None:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.005)
        profiler.start()
    # wall and CPU clocks at each epoch's end (its validation line), to time epochs apart
    # from the run's setup and final evaluation; CPU time is steadier on a shared machine
    marks: list[tuple[float, float]] = [(time.perf_counter(), time.process_time())]

    def mark(line: str) -> None:
        if line.startswith("epoch "):
            marks.append((time.perf_counter(), time.process_time()))

    result = _stage(report, "finetune", lambda: finetune(split, config, None, mark))
    done = time.perf_counter()
    if profiler is not None and profile is not None:
        profiler.stop()
        profile.mkdir(parents=True, exist_ok=True)
        path = profile / f"finetune_items_{items}.txt"
        path.write_text(profiler.output_text(unicode=True, color=False))
        print(f"  profile written to {path}", flush=True)
    report.update(
        views=int(data.views.nnz),
        clicks=int(data.clicks.nnz),
        train_clicks=int(split.train_clicks.nnz),
        items_kept=int(split.item_ids.shape[0]),
        dim=config.dim,
        loss=config.loss,
        n_negatives=config.n_negatives,
        finetune_epochs=epochs,
        setup_and_initial_validation_seconds=round(marks[1][0] - marks[0][0], 2),
        epoch_seconds=[round(b[0] - a[0], 2) for a, b in itertools.pairwise(marks[1:])],
        epoch_cpu_seconds=[round(b[1] - a[1], 2) for a, b in itertools.pairwise(marks[1:])],
        final_evaluation_seconds=round(done - marks[-1][0], 2),
        val_metrics=result.val_metrics,
    )
    print(
        f"  epoch (training + validation): {report['epoch_seconds']} s, "
        f"CPU {report['epoch_cpu_seconds']} s",
        flush=True,
    )
    return report


def _write(out: Path, section: str, rows: list[dict[str, Any]]) -> None:
    """Write one sweep's rows to ``out``, keeping the other sweep's section."""
    previous = json.loads(out.read_text()) if out.exists() else {}
    machine = {
        "python": platform.python_version(),
        "cpus": len(__import__("os").sched_getaffinity(0)),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**previous, "machine": machine, section: rows}, indent=2) + "\n")
    print(f"written {out}")


def _items_child(args: argparse.Namespace, items: int) -> dict[str, Any]:
    """One size of the items sweep in a subprocess of its own (its own memory high-water)."""
    print(f"{args.items_users} users, {items} items, {args.items_events} events", flush=True)
    cmd = [sys.executable, __file__, "--one-items", str(items), "--epochs", str(args.epochs)]
    cmd += ["--items-users", str(args.items_users), "--items-events", str(args.items_events)]
    cmd += ["--dim", str(args.dim), "--seed", str(args.seed)]
    cmd += ["--profile", str(args.profile)] if args.profile else []
    return _child(cmd)


def _child(cmd: list[str]) -> dict[str, Any]:
    """Run one size's subprocess, echoing its stage lines as they come (a Spark stage at
    10^7 events takes minutes); its last line is its JSON report."""
    lines: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if lines:
                print(lines[-1], flush=True)
            lines.append(line.rstrip("\n"))
    if proc.returncode != 0 or not lines:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-events", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/train_scale.json")
    parser.add_argument("--items", nargs="+", type=int, help="catalog sweep: these item counts")
    parser.add_argument("--items-users", type=int, default=200_000)
    parser.add_argument("--items-events", type=int, default=4_000_000)
    parser.add_argument("--profile", type=Path, help="catalog sweep: pyinstrument profiles here")
    parser.add_argument(
        "--engine", choices=["numpy", "spark", "both"], default="numpy",
        help="the events sweep's pre-training engine(s)",
    )  # fmt: skip
    parser.add_argument("--spark-master", default="local[2]")
    parser.add_argument("--one", nargs=3, type=int, help=argparse.SUPPRESS)  # child: U I E
    parser.add_argument("--one-items", type=int, help=argparse.SUPPRESS)  # child of --items
    args = parser.parse_args()
    if args.one_items:
        report = run_items(
            args.one_items, args.items_users, args.items_events, args.dim, args.epochs,
            args.seed, args.profile,
        )  # fmt: skip
        print(json.dumps(report))
        return
    if args.items:
        _write(args.out, "items_sweep", [_items_child(args, items) for items in args.items])
        return
    if args.one:
        users, items, events = args.one
        if args.engine == "spark":
            one = run_size_spark(users, items, events, args.dim, args.seed, args.spark_master)
        else:
            one = run_size(users, items, events, args.dim, args.epochs, args.seed)
        print(json.dumps(one))
        return
    engines = ["numpy", "spark"] if args.engine == "both" else [args.engine]
    for engine in engines:
        results = []
        for users, items, events in SIZES:
            if events > args.max_events:
                continue
            print(f"{engine}: {users} users, {items} items, {events} events", flush=True)
            cmd = [sys.executable, __file__, "--one", str(users), str(items), str(events)]
            cmd += ["--dim", str(args.dim), "--epochs", str(args.epochs), "--seed", str(args.seed)]
            cmd += ["--engine", engine, "--spark-master", args.spark_master]
            results.append(_child(cmd))
        _write(args.out, "results" if engine == "numpy" else "spark_results", results)


if __name__ == "__main__":
    main()
