"""The training jobs: ``run_evaluate`` (the paper's Table 2 on one split) and
``run_train`` (pre-train, fine-tune, publish a model version).

Both report progress as one line per stage with elapsed seconds through ``progress``.
The command line is ``ledrec evaluate`` and ``ledrec train`` (ledrec/cli.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from ledrec.stream.artifact import Model, save_model
from ledrec.training.baselines import EASE_LAMBDAS, ease_score_fn, popularity_score_fn, tune_ease
from ledrec.training.dataset import Interactions
from ledrec.training.evaluate import evaluate_scores, led_score_fn
from ledrec.training.item_knn import tune_item_knn
from ledrec.training.pretrain import popularity_biases, pretrain_embeddings
from ledrec.training.report import write_report
from ledrec.training.saved_model import catalog_score_fn
from ledrec.training.selection import Candidate, choose, selection_record, step_floor
from ledrec.training.split import Split, strong_generalization_split

if TYPE_CHECKING:
    from ledrec.training.finetune import FinetuneConfig

Progress = Callable[[str], None]
Array = npt.NDArray[np.float32]

# scores are <u, v> + b with unit-norm v and log-popularity b: the zero-shot SVD model needs
# a weight between the two, folded into the embeddings (v * sqrt(scale)) and tuned on validation
ZERO_SHOT_SCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)


@dataclass
class PretrainConfig:
    dim: int = 256
    min_count: int = 10
    smoothing: float = 0.75
    n_iter: int = 5
    zero_shot_scales: tuple[float, ...] = ZERO_SHOT_SCALES


class Pretrainer(Protocol):
    """Pre-trains the split's (I, d) item embeddings from its training views: the numpy
    engine (``NumpyPretrainer``, the default) or Spark's (``training.spark.pretrain``)."""

    @property
    def engine(self) -> str: ...

    def __call__(
        self, data: Interactions, split: Split, config: PretrainConfig, seed: int
    ) -> Array: ...


@dataclass(frozen=True)
class NumpyPretrainer:
    """PMI and randomized SVD in this process (``training.pretrain``)."""

    engine: str = "numpy"

    def __call__(
        self, data: Interactions, split: Split, config: PretrainConfig, seed: int
    ) -> Array:
        return pretrain_embeddings(
            split.train_views, config.dim, seed, config.min_count, config.smoothing, config.n_iter
        )


@dataclass
class TrainConfig:
    """``finetune=None`` publishes the pre-trained (SVD-only, zero-shot) model."""

    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig | None = None
    n_heldout: int = 600
    seed: int = 0
    # more fine-tuning candidates (e.g. the Proj variant), judged beside SVD-only and
    # ``finetune`` on the same validation users; ignored when ``finetune`` is None
    extra_candidates: tuple[FinetuneConfig, ...] = ()
    # fine-tuning takes at least this many optimizer steps (epochs and patience scaled up on
    # small data, ``selection.step_floor``); 0: the configs' epochs as given
    min_steps: int = 0


class Stopwatch:
    """Times named stages and reports ``[stage] <seconds>s`` lines."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(f"{time.perf_counter() - self.start:8.1f}s  {message}")

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.say(f"[{name}] start")
        t0 = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - t0
        self.say(f"[{name}] done in {self.seconds[name]:.1f}s")


@dataclass
class ZeroShot:
    embeddings: Array  # (I, d) SVD embeddings * sqrt(scale)
    biases: Array  # (I,) log popularity
    scale: float
    val_metrics: dict[str, float]
    base: Array  # (I, d) the unit-row SVD embeddings, before scaling


def baseline_metrics(model: Model, split: Split) -> dict[str, float]:
    """``model``'s validation metrics on ``split``'s validation users (another version's
    catalog: its items map by id, ``saved_model.catalog_score_fn``)."""
    score_fn, _ = catalog_score_fn(model, split.item_ids)
    metrics = evaluate_scores(score_fn, split.val_in, split.val_out)
    return {k: float(v) for k, v in metrics.items()}


def zero_shot(split: Split, svd: Array, scales: Sequence[float]) -> ZeroShot:
    """SVD-only LED: biases = log popularity, dot-product weight chosen on validation NDCG."""
    biases = popularity_biases(split.train_clicks)
    best: ZeroShot | None = None
    for scale in scales:
        emb = (svd * np.float32(np.sqrt(scale))).astype(np.float32)
        metrics = evaluate_scores(led_score_fn(emb, biases), split.val_in, split.val_out)
        if best is None or metrics["ndcg@100"] > best.val_metrics["ndcg@100"]:
            best = ZeroShot(emb, biases, scale, metrics, svd)
    if best is None:
        raise ValueError("no zero-shot scale to try")
    return best


def random_embeddings(n_items: int, dim: int, seed: int) -> Array:
    """(I, d) random unit rows: the frozen base of the Random+Proj variant."""
    emb = np.random.default_rng(seed).standard_normal((n_items, dim)).astype(np.float32)
    out: Array = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    return out


def scarce_clicks(split: Split, keep: float, seed: int) -> Split:
    """The click-scarce setting: a random ``keep`` share of the training clicks, all views."""
    clicks = split.train_clicks.tocsr(copy=True)
    rng = np.random.default_rng(seed)
    clicks.data = (rng.random(clicks.nnz) < keep).astype(np.float32)
    clicks.eliminate_zeros()
    return replace(split, train_clicks=clicks)


def _finetune_init(config: FinetuneConfig, zero: ZeroShot, seed: int) -> Array | None:
    if config.init == "svd":
        # The unit-row SVD embeddings, not the zero-shot-scaled ones: the fine-tuning's
        # learning rate was tuned for unit rows, and the scaled start (norm ~10) stalled at
        # the zero-shot model (measured on ML-1M: css/train/svd stayed at R@20 0.291).
        return zero.base
    if config.variant == "proj":
        return random_embeddings(zero.embeddings.shape[0], config.dim, seed)
    return None


def headline_finetune_configs(dim: int, seed: int, **overrides: Any) -> list[FinetuneConfig]:
    """``ledrec evaluate``'s LED rows by default: the default model (Mult-CSS, Train, SVD
    init) and the Project variant on the same frozen SVD embeddings. The whole grid
    (``default_finetune_configs``, ``default_scarce_configs``) is ``--variants all``: about
    300 epochs against these two's 60, several minutes on two cores."""
    from ledrec.training.finetune import FinetuneConfig

    return [
        FinetuneConfig(loss="css", variant=variant, init="svd", dim=dim, seed=seed, **overrides)
        for variant in ("train", "proj")
    ]


def default_finetune_configs(dim: int, seed: int, **overrides: Any) -> list[FinetuneConfig]:
    """Table 2's LED rows: every loss with the Train variant, and SVD vs random init for
    both variants with the default loss."""
    from ledrec.training.finetune import FinetuneConfig

    # BPR's cost grows with pairs × negatives: 256 negatives keep it within minutes.
    rows: list[tuple[str, str, str, dict[str, Any]]] = [
        ("css", "train", "svd", {}),
        ("css", "train", "random", {}),
        ("css", "proj", "svd", {}),
        ("css", "proj", "random", {}),
        ("bpr", "train", "svd", {"n_negatives": 256}),
        ("ns", "train", "svd", {}),
        ("mult", "train", "svd", {}),
    ]
    return [
        FinetuneConfig(
            loss=loss, variant=variant, init=init, dim=dim, seed=seed, **(extra | overrides)
        )
        for loss, variant, init, extra in rows
    ]


def default_scarce_configs(dim: int, seed: int, **overrides: Any) -> list[FinetuneConfig]:
    """Paper Table 3's question: does pre-training help when clicks are scarce?"""
    from ledrec.training.finetune import FinetuneConfig

    return [
        FinetuneConfig(loss="css", variant=v, init=i, dim=dim, seed=seed, **overrides)
        for i in ("svd", "random")
        for v in ("proj", "train")
    ]


def _row(
    model: str, loss: str, variant: str, init: str, seconds: float, **extra: Any
) -> dict[str, Any]:
    return {
        "model": model,
        "loss": loss,
        "variant": variant,
        "init": init,
        "seconds": seconds,
        **extra,
    }


def run_evaluate(
    data: Interactions,
    out_dir: Path,
    finetune_configs: Sequence[FinetuneConfig] | None = None,
    scarce_configs: Sequence[FinetuneConfig] | None = None,
    *,
    pretrain: PretrainConfig | None = None,
    ease_lambdas: Sequence[float] = EASE_LAMBDAS,
    n_heldout: int = 600,
    scarce_keep: float = 0.1,
    seed: int = 0,
    source: str = "",
    progress: Progress | None = None,
    pretrainer: Pretrainer | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Popularity, EASE, SVD-only LED and fine-tuned LED on one split; test-user metrics.

    Writes ``report.json`` and ``report.md`` to ``out_dir`` and returns the report.
    ``None`` configs mean the defaults; pass ``[]`` to skip fine-tuning. The fine-tunings
    run side by side in ``workers`` processes (None: one per core; 1: here, in turn).
    """
    from ledrec.training.parallel import Finetunes, FinetuneTask, default_workers

    pre = pretrain or PretrainConfig()
    finetune_configs = (
        default_finetune_configs(pre.dim, seed) if finetune_configs is None else finetune_configs
    )
    scarce_configs = (
        default_scarce_configs(pre.dim, seed) if scarce_configs is None else scarce_configs
    )
    clock = Stopwatch(progress)
    with clock.stage("split"):
        split = strong_generalization_split(data, n_heldout=n_heldout, seed=seed)

    def test(score_fn: Callable[[Any], Any]) -> dict[str, float]:
        return evaluate_scores(score_fn, split.test_in, split.test_out)

    # LED's pre-training first: its fine-tunings then run in worker processes while this
    # one fits the baselines (the rows keep the table's order)
    engine: Pretrainer = pretrainer or NumpyPretrainer()
    with clock.stage("pretrain"):
        svd = engine(data, split, pre, seed)
    with clock.stage("zero-shot"):
        zero = zero_shot(split, svd, pre.zero_shot_scales)
    svd_row = _row(
        "LED", "", "SVD-only", "svd", clock.seconds["pretrain"],
        **test(led_score_fn(zero.embeddings, zero.biases)), scale=zero.scale,
    )  # fmt: skip
    tasks = [
        FinetuneTask(f"full {cfg.loss}/{cfg.variant}/{cfg.init}", split, cfg,
                     _finetune_init(cfg, zero, seed))
        for cfg in finetune_configs
    ]  # fmt: skip
    scarce_rows: list[dict[str, Any]] = []
    if scarce_configs:
        scarce = scarce_clicks(split, scarce_keep, seed)
        scarce_zero = zero_shot(scarce, svd, pre.zero_shot_scales)
        scarce_rows.append(
            _row(
                "LED", "", "SVD-only", "svd", clock.seconds["pretrain"],
                **test(led_score_fn(scarce_zero.embeddings, scarce_zero.biases)),
            )
        )  # fmt: skip
        tasks += [
            FinetuneTask(f"scarce {cfg.loss}/{cfg.variant}/{cfg.init}", scarce, cfg,
                         _finetune_init(cfg, scarce_zero, seed))
            for cfg in scarce_configs
        ]  # fmt: skip

    rows: list[dict[str, Any]] = []
    n_workers = default_workers(len(tasks)) if workers is None else workers
    with Finetunes(tasks, n_workers, clock.say) as running:
        with clock.stage("popularity"):
            rows.append(
                _row("Popularity", "", "", "", 0.0, **test(popularity_score_fn(split.train_clicks)))
            )
        with clock.stage("ease"):
            ease = tune_ease(split.train_clicks, split.val_in, split.val_out, ease_lambdas)
        rows.append(
            _row(
                "EASE", "", "", "", clock.seconds["ease"],
                **test(ease_score_fn(ease.weights)), lam=ease.lam,
            )
        )  # fmt: skip
        del ease  # (I, I) dense
        with clock.stage("item-knn"):
            knn = tune_item_knn(split.train_clicks, split.val_in, split.val_out)
        rows.append(
            _row("Item-kNN", "", "", "", clock.seconds["item-knn"], **test(knn.score_fn), k=knn.k)
        )
        del knn
        rows.append(svd_row)
        results = running.results()
    clock.seconds["finetune"] = running.seconds
    for task, result in zip(tasks, results, strict=True):
        clock.seconds[f"finetune {task.name}"] = result.seconds
        cfg = task.config
        pre_seconds = clock.seconds["pretrain"] if cfg.init == "svd" else 0.0
        metrics = evaluate_scores(
            led_score_fn(result.embeddings, result.biases), task.split.test_in,
            task.split.test_out,
        )  # fmt: skip
        row = _row(
            "LED", cfg.loss, cfg.variant.capitalize(), cfg.init, pre_seconds + result.seconds,
            **metrics, val=result.val_metrics, config=asdict(cfg),
        )  # fmt: skip
        (scarce_rows if task.name.startswith("scarce") else rows).append(row)
    for row in rows:
        for k in ("recall@20", "recall@50"):
            row[f"{k} / EASE"] = row[k] / rows[1][k]

    report = {
        "source": source,
        "seed": seed,
        "data": _counts(data, split),
        "pretrain": asdict(pre),
        "pretrain_engine": engine.engine,
        "ease_lambda": rows[1]["lam"],
        "zero_shot_scale": zero.scale,
        "rows": rows,
        "scarce_keep": scarce_keep,
        "scarce_train_clicks": int(scarce.train_clicks.nnz) if scarce_configs else None,
        "scarce_rows": scarce_rows,
        "stage_seconds": clock.seconds,
    }
    write_report(report, out_dir, render_markdown)
    clock.say(f"report written to {out_dir}")
    return report


def _counts(data: Interactions, split: Split) -> dict[str, int]:
    return {
        "users": data.n_users,
        "items": data.n_items,
        "views": int(data.views.nnz),
        "clicks": int(data.clicks.nnz),
        "items_kept": int(split.item_ids.shape[0]),
        "train_users": int(split.train_clicks.shape[0]),
        "train_clicks": int(split.train_clicks.nnz),
        "train_views": int(split.train_views.nnz),
        "val_users": int(split.val_in.shape[0]),
        "test_users": int(split.test_in.shape[0]),
    }


def _table(rows: Sequence[dict[str, Any]], with_ratio: bool) -> list[str]:
    head = "| Model | Loss | Variant | Init | Recall@20 | Recall@50 | NDCG@100 |"
    head += " R@20 / EASE | R@50 / EASE |" if with_ratio else ""
    lines = [head + " Train s |", "|" + "---|" * (head.count("|"))]
    for r in rows:
        cells = [r["model"], r["loss"], r["variant"], r["init"]]
        cells += [f"{r[k]:.3f}" for k in ("recall@20", "recall@50", "ndcg@100")]
        if with_ratio:
            cells += [f"{r['recall@20 / EASE']:.2f}", f"{r['recall@50 / EASE']:.2f}"]
        cells.append(f"{r['seconds']:.1f}")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    d = report["data"]
    lines = [
        f"# LED evaluation — {report['source'] or 'interactions'}",
        "",
        f"Strong generalization (Mult-VAE protocol), seed {report['seed']}: "
        f"{d['train_users']} training users, {d['val_users']} validation and {d['test_users']} "
        f"test users, {d['items_kept']} items. Metrics on the test users; held-out users are "
        "encoded from their fold-in clicks. EASE λ = "
        f"{report['ease_lambda']:g}; item-kNN: cosine, k chosen on validation; "
        f"SVD-only dot-product scale = {report['zero_shot_scale']:g}; "
        f"d = {report['pretrain']['dim']}. Train s = pre-training (SVD init) + fine-tuning "
        "seconds (EASE: fitting every λ of the grid).",
        "",
        *_table(report["rows"], with_ratio=True),
    ]
    if report["scarce_rows"]:
        lines += [
            "",
            f"## Click-scarce: {report['scarce_keep']:.0%} of the training clicks "
            f"({report['scarce_train_clicks']}), all views",
            "",
            *_table(report["scarce_rows"], with_ratio=False),
        ]
    seconds = ", ".join(f"{k} {v:.1f}s" for k, v in report["stage_seconds"].items())
    return "\n".join([*lines, "", f"Stage seconds: {seconds}.", ""])


def _metrics_line(validation: dict[str, float], test: dict[str, float]) -> str:
    """``validation recall@20 0.3658, ...; test recall@20 0.3487, ...``: every figure says
    which held-out users it was measured on."""

    def figures(metrics: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())

    return f"validation {figures(validation)}; test {figures(test)}"


def run_train(
    data: Interactions,
    store: Path,
    config: TrainConfig,
    parent: str | None = None,
    progress: Progress | None = None,
    source: str = "",
    exact_index_max_items: int | None = None,
    baseline: Model | None = None,
    pretrainer: Pretrainer | None = None,
) -> Path:
    """Pre-train (and fine-tune unless ``config.finetune`` is None), then publish a model
    version to ``store`` with validation metrics and provenance; returns its directory.

    ``pretrainer``: the pre-training engine (default: numpy, in this process).

    ``baseline`` (the active version): scored on the same validation users, so that the
    quality gate compares like with like (``provenance["gate"]``, ``Registry.check_gate``).

    With ``exact_index_max_items``, a catalog larger than that ships its ANN index
    (``index.faiss``), so that no scorer builds one while loading the version.
    """
    clock = Stopwatch(progress)
    pre = config.pretrain
    with clock.stage("split"):
        split = strong_generalization_split(data, n_heldout=config.n_heldout, seed=config.seed)
    engine: Pretrainer = pretrainer or NumpyPretrainer()
    with clock.stage("pretrain"):
        svd = engine(data, split, pre, config.seed)
    with clock.stage("zero-shot"):
        zero = zero_shot(split, svd, pre.zero_shot_scales)
    candidates = [
        Candidate("svd_only", zero.embeddings, zero.biases, zero.val_metrics, {"scale": zero.scale})
    ]
    if config.finetune is not None:
        from ledrec.training.finetune import finetune

        n_train = split.train_clicks.shape[0]
        for given in (config.finetune, *config.extra_candidates):
            tuning = step_floor(given, n_train, config.min_steps)
            if tuning.epochs != given.epochs:
                clock.say(
                    f"{n_train} training users: {tuning.epochs} epochs (patience "
                    f"{tuning.patience}) for >= {config.min_steps} optimizer steps"
                )
            if tuning.dim != pre.dim:
                raise ValueError(f"finetune dim {tuning.dim} != pretrain dim {pre.dim}")
            name = f"{tuning.loss}/{tuning.variant}/{tuning.init}"
            with clock.stage(f"finetune {name}"):
                result = finetune(
                    split, tuning, _finetune_init(tuning, zero, config.seed), clock.say
                )
            # epoch 0 is the initial model: "best_epoch" 0 means fine-tuning never helped
            best_epoch = max(result.history, key=lambda h: h["ndcg@100"], default={})
            candidates.append(
                Candidate(
                    name, result.embeddings, result.biases, result.val_metrics,
                    {"epochs_run": len(result.history) - 1,
                     "best_epoch": int(best_epoch.get("epoch", 0)),
                     "epochs": tuning.epochs, "patience": tuning.patience},
                )
            )  # fmt: skip
    with clock.stage("test"):  # every candidate's, for the record; the choice is on validation
        tests = {
            c.name: evaluate_scores(
                led_score_fn(c.embeddings, c.biases), split.test_in, split.test_out
            )
            for c in candidates
        }
    chosen = choose(candidates)
    selection = selection_record(chosen, candidates, tests)
    clock.say(f"selected {chosen.name}: {selection['reason']}")
    embeddings, biases, val_metrics, test = (
        chosen.embeddings, chosen.biases, chosen.val_metrics, tests[chosen.name]
    )  # fmt: skip
    metrics = {**val_metrics, **{f"test_{k}": v for k, v in test.items()}}
    gate = None
    if baseline is not None:
        with clock.stage("gate"):
            gate = {
                "active_version": baseline.version,
                "active": baseline_metrics(baseline, split),
                "candidate": {k: float(v) for k, v in val_metrics.items()},
            }
    model = Model(
        item_ids=split.item_ids.astype(str),
        embeddings=np.ascontiguousarray(embeddings, dtype=np.float32),
        biases=np.ascontiguousarray(biases, dtype=np.float32),
        metrics={k: float(v) for k, v in metrics.items()},
        provenance={
            "source": source,
            "counts": _counts(data, split),
            "config": asdict(config),
            "pretrain_engine": engine.engine,
            "zero_shot_scale": zero.scale,
            "selection": selection,
            "stage_seconds": clock.seconds,
            "metrics_on": "validation users (test_* on test users)",
            **({"gate": gate} if gate is not None else {}),
        },
        parent=parent,
    )
    index_bytes = None
    if exact_index_max_items is not None and model.n_items > exact_index_max_items:
        from ledrec.stream.index import build_index, serialize

        with clock.stage("index"):
            index_bytes = serialize(build_index(model, exact_index_max_items, seed=config.seed))
    path = save_model(model, store, index_bytes)
    clock.say(f"published {path.name}: {_metrics_line(val_metrics, test)}")
    return path
