"""The ``ledrec`` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import redis
from confluent_kafka import KafkaException
from pydantic import ValidationError

from ledrec.connect import ensure_event_topics, redis_client, resolve_addresses
from ledrec.errors import LedrecError
from ledrec.logs import setup_logging
from ledrec.settings import Settings

log = logging.getLogger(__name__)


# ledrec.training.formats.FORMATS, spelled out: the parser must not import numpy/scipy
DATA_FORMATS = ("lines", "udata", "dat", "csv", "events")


class CliError(LedrecError):
    """A user-facing failure, printed as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, with where to look, instead of the usage dump.
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _settings(args: argparse.Namespace) -> Settings:
    """The settings: environment, then the flags given (validated like the environment)."""
    overrides: dict[str, Any] = {}
    for name in ("kafka_bootstrap", "redis_url", "home", "model_store", "events_topic"):
        value = getattr(args, name, None)
        if value:
            overrides[name] = value
    return Settings(**overrides)


def _stop_on_signals(stop: Callable[[], None]) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop())


def _metrics(port: int | None, host: str = "127.0.0.1") -> None:
    """Prometheus metrics on ``host:port`` (``--metrics-host 0.0.0.0``: every interface, for
    a Prometheus in another container)."""
    if port:
        from prometheus_client import start_http_server

        start_http_server(port, addr=host)
        log.info("metrics exposed", extra={"url": f"http://{host}:{port}/metrics"})


# -- stack ----------------------------------------------------------------------------------
def cmd_stack(args: argparse.Namespace) -> int:
    from ledrec.deploy import cluster, stack

    settings = _settings(args)
    if args.action == "up":
        info = stack.stack_up(
            settings.home, redis_cluster=args.redis_cluster, redis_replicas=args.redis_replicas
        )
        print(f"redis {info.redis_url}\nkafka {info.kafka_bootstrap}\nrecorded in {settings.home}")
    elif args.action == "down":
        stack.stack_down(settings.home)
        print("stack stopped")
    else:
        status = stack.stack_status(settings.home)
        if status is None:
            print("no local stack recorded (ledrec stack up starts one)")
            return 1
        print(f"redis {status.redis_url} {'up' if status.redis_alive else 'DOWN'}")
        healthy = True
        if status.redis_nodes:
            for (port, _), up in zip(status.redis_nodes, status.nodes_alive, strict=True):
                print(f"  node 127.0.0.1:{port} {'up' if up else 'DOWN'}")
            problem = cluster.cluster_health([port for port, _ in status.redis_nodes])
            healthy = problem is None
            print(f"  cluster {'healthy' if healthy else 'NOT healthy: ' + str(problem)}")
        print(f"kafka {status.kafka_bootstrap} {'up' if status.kafka_alive else 'DOWN'}")
        return 0 if status.alive and healthy else 1
    return 0


# -- events ---------------------------------------------------------------------------------
def cmd_publish(args: argparse.Namespace) -> int:
    from ledrec.stream.producer import EventPublisher, events_from_rows, read_rows, sniff_format

    settings = _settings(args)
    # The input first: a wrong path is reported at once, not after reaching (or not) Kafka.
    source = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    with source:
        bootstrap, _ = resolve_addresses(settings)
        ensure_event_topics(settings, bootstrap)
        first = source.readline()
        fmt = args.format or sniff_format(args.file, first)
        import itertools

        lines = itertools.chain([first], source)
        publisher = EventPublisher(settings, bootstrap)
        bad = 0
        for line, event, error in events_from_rows(read_rows(lines, fmt), publisher.codec):  # type: ignore[arg-type]
            if event is None:
                bad += 1
                print(f"line {line}: {error}", file=sys.stderr)
                if args.on_error == "stop":
                    publisher.flush()
                    raise CliError(
                        f"stopped at line {line} ({publisher.report.delivered} published)"
                    )
                continue
            publisher.publish(event)
        report = publisher.flush()
    print(f"published {report.delivered} events to {settings.events_topic}; {bad} bad rows skipped")
    return 1 if bad and args.on_error == "stop" else 0


def cmd_consume(args: argparse.Namespace) -> int:
    from ledrec.stream.consumer import StateUpdater

    settings = _settings(args)
    setup_logging(args.log_level, "consumer")
    bootstrap, url = resolve_addresses(settings)
    ensure_event_topics(settings, bootstrap)
    _metrics(args.metrics_port, args.metrics_host)
    updater = StateUpdater(settings, bootstrap, redis_client(url))
    _stop_on_signals(updater.stop_event.set)
    totals = updater.run(max_idle_s=args.max_idle)
    log.info("consumer stopped", extra=vars(totals))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ledrec.stream.server import RecommendServer

    settings = _settings(args)
    setup_logging(args.log_level, "scorer")
    _, url = resolve_addresses(settings)
    _metrics(args.metrics_port, args.metrics_host)
    server = RecommendServer(settings, redis_client(url))
    _stop_on_signals(server.stop_event.set)
    totals = server.run()
    log.info("scorer stopped", extra=vars(totals))
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    """The newest ``-n`` dead letters of each partition, one JSON line each."""
    from ledrec.stream.dead_letters import NoDeadLetterTopic, newest_dead_letters

    settings = _settings(args)
    bootstrap, _ = resolve_addresses(settings)
    try:
        letters = newest_dead_letters(settings, bootstrap, args.n)
    except NoDeadLetterTopic as e:
        print(f"ledrec dlq: {e}", file=sys.stderr)
        return 1
    for letter in letters:
        shown = {k: v for k, v in letter.items() if k not in ("partition", "offset")}
        print(json.dumps(shown))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """The deployment at a glance: the active version, consumers, scorers, queue depths."""
    from ledrec.stream.status import deployment_status

    settings = _settings(args)
    _, url = resolve_addresses(settings)
    report = deployment_status(redis_client(url), settings)
    if args.json:
        report.pop("versions")  # ``ledrec models list`` shows them
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    now, consumers, scorers = report["at"], report["consumers"], report["scorers"]
    live = ", ".join(report["live"]) or "(none)"
    print(f"active version  {report['active'] or '(none)'}  live: {live}")
    print(f"consumers       {len(consumers)}")
    for name, s in sorted(consumers.items()):
        fresh = s.get("freshness_p50_s")
        print(
            f"  {name}  partitions {s.get('partitions')}  applied {int(s['applied'])}  "
            f"lag {s.get('lag', '?')}  dead-lettered {int(s['dead_lettered'])}  "
            f"freshness p50 {'-' if fresh is None else f'{fresh:.3f}s'}  "
            f"({now - s['updated_at']:.1f}s ago)"
        )
    print(f"scorers         {len(scorers)}")
    for name, status in sorted(scorers.items()):
        p50 = status.get("latency_p50_ms")
        print(
            f"  {name}  serving {status.get('serving')}  prepared {status.get('prepared')}  "
            f"answered {status.get('answered', 0)}  "
            f"latency p50 {'-' if p50 is None else f'{p50:.2f}ms'}"
        )
    queues = report["queues"]
    print(f"request queues  {len(queues)}, {sum(queues.values())} waiting")
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    import uvicorn

    from ledrec.stream.gateway import create_app

    settings = _settings(args)
    setup_logging(args.log_level, "gateway")
    _metrics(args.metrics_port, args.metrics_host)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_config=None)
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 if the service answers as a healthy one does (the compose healthchecks)."""
    from ledrec.health import Unhealthy, check

    try:
        print(check(args.role, args.host, args.port, args.max_age, args.timeout))
    except Unhealthy as e:
        print(f"ledrec health {args.role}: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from ledrec.stream.client import RecommenderClient

    settings = _settings(args)
    _, url = resolve_addresses(settings)
    client = RecommenderClient(
        redis_client(url),
        settings.request_queue,
        settings.key_prefix,
        args.timeout,
        settings.max_queue_length,
    )
    items = [i for i in args.items.split(",") if i] if args.items else None
    if (args.user is None) == (items is None):
        raise CliError("give a user id or --items, not both")
    rec = client.request(user_id=args.user, items=items, k=args.k, request_id=args.request_id)
    if args.json:
        print(json.dumps({"version": rec.version, "source": rec.source, "items": rec.items,
                          "request_id": rec.request_id}))  # fmt: skip
    else:
        print(f"# model {rec.version}, from {rec.source}, request {rec.request_id}")
        for rank, (item, score) in enumerate(rec.items, start=1):
            print(f"{rank:>3}  {item}  {score:.4f}")
    return 0


# -- training and models --------------------------------------------------------------------
def _load_data(args: argparse.Namespace) -> tuple[Any, str]:
    from ledrec.training import dataset

    if args.movielens:
        return dataset.load_movielens(Path(args.movielens)), f"movielens:{args.movielens}"
    if args.events:
        return dataset.load_events_file(Path(args.events)), f"events:{args.events}"
    if getattr(args, "data", None):
        from ledrec.training.formats import detect_format, read_interactions

        fmt = args.format or detect_format(Path(args.data))
        return read_interactions(Path(args.data), fmt), f"{fmt}:{args.data}"
    from ledrec.training.synthetic import SyntheticConfig, synthetic_interactions

    config = SyntheticConfig(
        n_users=args.synthetic_users, n_items=args.synthetic_items, seed=args.seed
    )
    return synthetic_interactions(config), f"synthetic:{config}"


def _n_heldout(args: argparse.Namespace, data: Any) -> int:
    """``--n-heldout``, or the default for this data; one line if the data is too small."""
    from ledrec.training.split import default_n_heldout, eligible_users

    if args.n_heldout is None:
        return default_n_heldout(data)
    eligible = eligible_users(data)
    if args.n_heldout < 1 or 2 * args.n_heldout >= eligible:
        raise CliError(
            f"--n-heldout {args.n_heldout}: the data has {eligible} users with >= 5 clicks; "
            f"hold out between 1 and {max(0, (eligible - 1) // 2)} (2 x N must stay below it)"
        )
    return int(args.n_heldout)


def _finetune_config(args: argparse.Namespace) -> Any:
    if args.svd_only:
        return None
    from ledrec.training.finetune import FinetuneConfig

    overrides = {} if args.epochs is None else {"epochs": args.epochs}
    variant = "train" if args.variant == "both" else args.variant
    return FinetuneConfig(
        loss=args.loss, variant=variant, dim=args.dim, seed=args.seed, **overrides
    )


VARIANTS = ["train", "proj", "both"]
VARIANT_HELP = (
    "fine-tune every embedding (train), only a d x d projection of the frozen SVD "
    "embeddings and the biases (proj: d^2 + I parameters), or both, publishing the one "
    "with the better validation NDCG@100"
)


def _extra_candidates(args: argparse.Namespace, first: Any) -> tuple[Any, ...]:
    """``--variant both``: the Project variant (P and the biases on the frozen SVD
    embeddings) beside Train, the published one chosen on validation."""
    if first is None or args.variant != "both":
        return ()
    from dataclasses import replace

    return (replace(first, variant="proj", init="svd"),)


def _min_steps(args: argparse.Namespace) -> int:
    """The small-data step floor unless ``--epochs`` fixes the schedule."""
    from ledrec.training.selection import DEFAULT_MIN_STEPS

    return DEFAULT_MIN_STEPS if args.epochs is None else 0


@contextmanager
def _pretrainer(args: argparse.Namespace) -> Iterator[Any]:
    """The ``--engine``'s pre-trainer (None: numpy, run_train's default). Spark's reads the
    same events (``--movielens`` / ``--events``; synthetic data: the views matrix) on a
    SparkSession on ``--spark-master``."""
    if args.engine == "numpy":
        yield None
        return
    try:
        from ledrec.training.spark import events
        from ledrec.training.spark.pretrain import spark_engine
    except ImportError as e:
        raise CliError(f"--engine spark needs pyspark: pip install 'ledrec[spark]' ({e})") from e

    def read(spark: Any) -> Any:
        if args.movielens:
            return events.read_movielens(spark, args.movielens)
        return events.read_events(spark, args.events) if args.events else None

    with spark_engine(args.spark_master, read) as pretrainer:
        yield pretrainer


def cmd_train(args: argparse.Namespace) -> int:
    from ledrec.stream.artifact import load_model
    from ledrec.stream.model_store import ModelStores
    from ledrec.stream.registry import Registry
    from ledrec.training.jobs import PretrainConfig, TrainConfig, run_train

    settings = _settings(args)
    if args.unless_active:  # a bootstrap that ran before: nothing to do
        _, url = resolve_addresses(settings)
        active = Registry(redis_client(url), settings.key_prefix).active()
        if active is not None:
            print(f"{active} is active; not training (--unless-active)")
            return 0
    if args.movielens and args.or_synthetic:
        found = [n for n in ("ratings.csv", "ratings.dat") if (Path(args.movielens) / n).is_file()]
        if not found:
            print(f"no MovieLens ratings in {args.movielens}: synthetic data (--or-synthetic)")
            args.movielens = None
    args.dim = args.dim or PretrainConfig().dim  # the one default (also the trainer's)
    data, source = _load_data(args)
    finetune = _finetune_config(args)
    config = TrainConfig(
        pretrain=PretrainConfig(dim=args.dim),
        finetune=finetune,
        n_heldout=_n_heldout(args, data),
        seed=args.seed,
        extra_candidates=_extra_candidates(args, finetune),
        min_steps=_min_steps(args),
    )
    with _pretrainer(args) as pretrainer:
        path = run_train(
            data,
            settings.model_store_path,
            config,
            progress=print,
            source=source,
            exact_index_max_items=settings.exact_index_max_items,
            pretrainer=pretrainer,
        )
    model = load_model(path)
    location = ModelStores(settings).publish(path)  # an s3:// store: uploaded, manifest last
    print(f"model saved: {location}")
    if args.register or args.activate:
        _, url = resolve_addresses(settings)
        registry = Registry(redis_client(url), settings.key_prefix)
        registry.register(model, location=location)
        if args.activate:
            registry.activate(model.version)
            print(f"activated {model.version}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ledrec.training.jobs import (
        PretrainConfig,
        default_finetune_configs,
        default_scarce_configs,
        headline_finetune_configs,
        run_evaluate,
    )

    args.dim = args.dim or PretrainConfig().dim
    if args.protocol != "weak" and (args.train or args.test or args.valid):
        raise CliError("--train/--test/--valid are the weak protocol's: add --protocol weak")
    if args.protocol != "time" and args.cutoff is not None:
        raise CliError("--cutoff is the time protocol's: add --protocol time")
    if args.protocol != "strong" and args.variants != "default":
        raise CliError(f"--variants is the strong protocol's, not the {args.protocol} one's")
    model = _saved_model(args) if args.model else None  # an unknown version: before any work
    if args.protocol == "weak":
        return _evaluate_weak(args, model)
    if args.protocol == "time":
        return _evaluate_time(args, model)
    data, source = _load_data(args)
    if model is not None:
        return _evaluate_saved_strong(args, model, data, source)
    overrides = {} if args.epochs is None else {"epochs": args.epochs}
    grid, scarce = [], []
    if not args.svd_only and args.variants == "all":
        grid = default_finetune_configs(args.dim, args.seed, **overrides)
        scarce = default_scarce_configs(args.dim, args.seed, **overrides)
    elif not args.svd_only:
        grid = headline_finetune_configs(args.dim, args.seed, **overrides)
    with _pretrainer(args) as pretrainer:
        run_evaluate(
            data,
            Path(args.out),
            grid,
            scarce,
            pretrain=PretrainConfig(dim=args.dim),
            n_heldout=_n_heldout(args, data),
            seed=args.seed,
            source=source,
            progress=print,
            pretrainer=pretrainer,
            workers=args.workers,
        )
    print(f"report written to {args.out}/report.md and {args.out}/report.json")
    return 0


def _saved_model(args: argparse.Namespace) -> Any:
    """``--model V``: the version V of the deployment's model store (or a version directory)."""
    from ledrec.stream.model_store import ModelStores

    stores = ModelStores(_settings(args))
    return stores.load(stores.locate(args.model))


def _report_saved(args: argparse.Namespace, model: Any, protocol: str, item_ids: Any,
                  score: Callable[[Any], dict[str, float]], **context: Any) -> int:  # fmt: skip
    """Score the saved ``model``, write the report, print its table."""
    from ledrec.training.saved_model import render_model_markdown, run_model_evaluate

    report = run_model_evaluate(model, protocol, item_ids, score, Path(args.out), **context)
    print(render_model_markdown(report))
    print(f"report written to {args.out}/report.md and {args.out}/report.json")
    return 0


def _evaluate_saved_strong(args: argparse.Namespace, model: Any, data: Any, source: str) -> int:
    """``evaluate --model V`` on the strong protocol's test users: the split ``ledrec
    train`` makes with the same data, ``--seed`` and ``--n-heldout``."""
    from ledrec.training.evaluate import evaluate_scores
    from ledrec.training.split import strong_generalization_split

    n_heldout = _n_heldout(args, data)
    trained = model.provenance.get("config", {})
    for name, value in (("seed", args.seed), ("n_heldout", n_heldout)):
        if name in trained and trained[name] != value:
            print(f"note: {model.version} was trained with {name} {trained[name]}, not "
                  f"{value}: some test users here may have been its training users")  # fmt: skip
    if model.provenance.get("source", source) != source:
        print(f"note: {model.version} was trained on {model.provenance['source']}")
    split = strong_generalization_split(data, n_heldout=n_heldout, seed=args.seed)
    definition = (
        f"Strong generalization (Mult-VAE protocol), seed {args.seed}: {n_heldout} test "
        "users held out of training, encoded from 80% of their clicks (the fold-in), "
        "ranking every catalog item but those; Recall@20/50 and NDCG@100 on the rest."
    )
    counts = {"test_users": int(split.test_in.shape[0]), "items": int(split.item_ids.shape[0])}
    return _report_saved(
        args, model, "strong", split.item_ids,
        lambda fn: evaluate_scores(fn, split.test_in, split.test_out),
        data=counts, source=source, definition=definition,
    )  # fmt: skip


def _finetune_default(args: argparse.Namespace) -> Any:
    """The weak and time protocols' one fine-tuned LED: the default loss and variant."""
    if args.svd_only:
        return None
    from ledrec.training.finetune import FinetuneConfig

    overrides = {} if args.epochs is None else {"epochs": args.epochs}
    return FinetuneConfig(dim=args.dim, seed=args.seed, **overrides)


def _evaluate_weak(args: argparse.Namespace, model: Any) -> int:
    """``evaluate --protocol weak``: train/test files, or a seeded 80/20 split of one source."""
    from ledrec.training.jobs import PretrainConfig
    from ledrec.training.weak_protocol import (
        run_weak_evaluate,
        split_from_files,
        split_one_source,
        weak_metrics,
    )

    if args.train or args.test or args.valid:
        if not (args.train and args.test):
            raise CliError(
                "the weak protocol takes --train FILE and --test FILE (--valid optional)"
            )
        if args.movielens or args.events or args.data:
            raise CliError("give --train/--test files or one source to split, not both")
        from ledrec.training.formats import read_ratings

        parts = [read_ratings(Path(f), args.format) if f else None
                 for f in (args.train, args.test, args.valid)]  # fmt: skip
        assert parts[0] is not None and parts[1] is not None
        split = split_from_files(parts[0], parts[1], parts[2], args.n_heldout, args.seed)
        source = f"train:{args.train} test:{args.test}" + (
            f" valid:{args.valid}" if args.valid else ""
        )
    else:
        data, source = _load_data(args)
        split = split_one_source(data, seed=args.seed, n_val=args.n_heldout)
        source += f" (per-user 80/20 split of the clicks, seed {args.seed})"
    if model is not None:
        definition = (
            "Weak generalization (LightGCN protocol): each test user encoded from their "
            "train clicks, ranking every item but their training items; Recall@20 = hits / "
            "the user's test items, NDCG@20 binary. The model must not have learned from "
            "the test interactions."
        )
        counts = {
            "test_users": int((split.n_test > 0).sum()),
            "items": int(split.item_ids.shape[0]),
        }
        return _report_saved(
            args, model, "weak", split.item_ids, lambda fn: weak_metrics(fn, split),
            data=counts, source=source, definition=definition,
        )  # fmt: skip
    run_weak_evaluate(
        split,
        Path(args.out),
        _finetune_default(args),
        pretrain=PretrainConfig(dim=args.dim),
        seed=args.seed,
        source=source,
        progress=print,
    )
    print(f"report written to {args.out}/report.md and {args.out}/report.json")
    return 0


def _timed_events(args: argparse.Namespace) -> tuple[Any, str]:
    """The source's events with their times (``--movielens``, ``--data``, ``--events`` or
    the synthetic generator's)."""
    from ledrec.training.formats import read_timed_events

    if args.movielens:
        return read_timed_events(Path(args.movielens)), f"movielens:{args.movielens}"
    if args.events:
        return read_timed_events(Path(args.events), "events"), f"events:{args.events}"
    if args.data:
        return read_timed_events(Path(args.data), args.format), f"{args.data}"
    from ledrec.training.synthetic import SyntheticConfig, synthetic_timed_events

    config = SyntheticConfig(
        n_users=args.synthetic_users, n_items=args.synthetic_items, seed=args.seed
    )
    return synthetic_timed_events(config), f"synthetic:{config}"


def _evaluate_time(args: argparse.Namespace, model: Any) -> int:
    """``evaluate --protocol time``: the global time split at the ``--cutoff`` quantile."""
    from ledrec.training.jobs import PretrainConfig
    from ledrec.training.time_protocol import DEFAULT_CUTOFF_QUANTILE, time_metrics, time_split
    from ledrec.training.weak_protocol import run_weak_evaluate

    events, source = _timed_events(args)
    quantile = DEFAULT_CUTOFF_QUANTILE if args.cutoff is None else args.cutoff
    timed = time_split(events, quantile, n_val=args.n_heldout, seed=args.seed)
    split = timed.split
    if model is not None:
        counts = {"test_users": int((split.n_test > 0).sum()), **timed.counts()}
        return _report_saved(
            args, model, "time", split.item_ids, lambda fn: time_metrics(fn, split),
            data=counts, source=source, definition=timed.definition(),
        )  # fmt: skip
    run_weak_evaluate(
        split,
        Path(args.out),
        _finetune_default(args),
        pretrain=PretrainConfig(dim=args.dim),
        seed=args.seed,
        source=source,
        progress=print,
        protocol="time",
        metrics=time_metrics,
        definition=timed.definition(),
        data=timed.counts(),
    )
    print(f"report written to {args.out}/report.md and {args.out}/report.json")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ledrec.stream.artifact import load_model
    from ledrec.stream.model_store import ModelStores
    from ledrec.stream.reencoder import read_progress
    from ledrec.stream.registry import Registry
    from ledrec.stream.swap import Swapper

    settings = _settings(args)
    setup_logging(args.log_level, "models")
    _, url = resolve_addresses(settings)
    client = redis_client(url)
    registry = Registry(client, settings.key_prefix)
    swapper = Swapper(settings, client)
    if args.action in ("register", "activate", "backfill", "retire") and not args.version:
        raise CliError(f"models {args.action} needs a version")
    if args.action == "list":
        active = registry.active()
        for version, info in sorted(registry.versions().items()):
            marker = "*" if version == active else " "
            metrics = " ".join(f"{k}={v:.4f}" for k, v in sorted(info.get("metrics", {}).items()))
            print(f"{marker} {version}  {info['state']:<9} items={info['n_items']} d={info['dim']}")
            if metrics:
                print(f"      metrics  {metrics}")
            if info.get("source") or info.get("parent"):
                print(f"      data     {info.get('source', '')}  parent={info.get('parent')}")
            progress = read_progress(client, settings.key_prefix, version)
            if progress is not None:
                print(f"      {progress.line()}")
        for name, status in sorted(registry.scorers().items()):
            ready = ",".join(status["prepared"]) or "-"
            print(f"scorer {name}: serving {status['serving']}, prepared {ready}")
        return 0
    if args.action == "prune":
        from ledrec.stream.prune import prune

        keep = settings.model_store_keep if args.keep is None else args.keep
        removed = prune(registry, keep, ModelStores(settings))
        print(f"pruned {len(removed)} version directories (kept the newest {keep} staged/retired)")
        return 0
    if args.action == "register":
        model = load_model(Path(args.version))
        location = ModelStores(settings).publish(Path(args.version))
        registry.register(model, location=location)
        print(f"registered {model.version} ({location})")
        return 0
    if args.action == "activate":
        report = swapper.activate(args.version, force=args.force, progress=print)
        print(f"activated {report.version} (previous: {report.previous})")
        return 0
    if args.action == "rollback":
        report = swapper.rollback(progress=print)
        print(f"rolled back to {report.version} (previous: {report.previous})")
        return 0
    if args.action == "backfill":
        done = swapper.backfill(args.version, progress=print, max_rate=args.max_rate)
        print(done.line())
        return 0
    if args.action == "retire":
        swapper.retire(args.version, progress=print)
        return 0
    raise CliError(f"unknown models action {args.action}")


def cmd_trainer(args: argparse.Namespace) -> int:
    from ledrec.training.finetune import FinetuneConfig
    from ledrec.training.jobs import PretrainConfig, TrainConfig
    from ledrec.training.retrain import RetrainConfig, Retrainer, parse_duration

    settings = _settings(args)
    setup_logging(args.log_level, "trainer")
    if sum(bool(x) for x in (args.every, args.after_events, args.once)) != 1:
        raise CliError("give one of --every, --after-events, --once")
    bootstrap, url = resolve_addresses(settings)
    defaults = TrainConfig(pretrain=PretrainConfig(), finetune=FinetuneConfig())
    assert defaults.finetune is not None
    dim = args.dim or defaults.pretrain.dim
    finetune = None
    if not args.svd_only:
        epochs = args.epochs or defaults.finetune.epochs
        variant = "train" if args.variant == "both" else args.variant
        finetune = FinetuneConfig(
            loss=args.loss, variant=variant, dim=dim, epochs=epochs, seed=args.seed
        )
    min_count = defaults.pretrain.min_count if args.min_count is None else args.min_count
    config = RetrainConfig(
        train=TrainConfig(
            pretrain=PretrainConfig(dim=dim, min_count=min_count),
            finetune=finetune,
            n_heldout=args.n_heldout,
            seed=args.seed,
            extra_candidates=_extra_candidates(args, finetune),
            min_steps=_min_steps(args),
        ),
        window_s=parse_duration(args.window) if args.window else None,
        max_per_partition=args.max_per_partition,
        spark_master=args.spark_master if args.engine == "spark" else None,
        min_events=args.min_events,
        force=args.force,
    )
    _metrics(args.metrics_port, args.metrics_host)
    trainer = Retrainer(settings, bootstrap, redis_client(url), config, progress=print)
    if args.once:
        result = trainer.run_once()
        if result.activated:
            print(f"activated {result.version}")
            return 0
        print(f"not activated: {result.reason}", file=sys.stderr)
        return 1
    _stop_on_signals(trainer.stop_event.set)
    trainer.run(parse_duration(args.every) if args.every else None, args.after_events)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ledrec.demo import run_demo

    return run_demo(args)


def cmd_bench(args: argparse.Namespace) -> int:
    """One speed benchmark (or all), on its own private Redis + Tansu; see benchmarks/."""
    root = Path(__file__).resolve().parents[1]
    if (root / "benchmarks" / "run_all.py").is_file() and str(root) not in sys.path:
        sys.path.insert(0, str(root))  # benchmarks/ ships with the source tree, not the wheel
    try:
        from benchmarks import run_all
        from benchmarks.common import RESULTS
    except ImportError as e:
        raise CliError("benchmarks/ not found: run `ledrec bench` from a source checkout") from e
    quick = ["--quick"] if args.quick else []
    if args.part == "all":
        return run_all.main([*quick, *args.extra])
    run_all.PARTS[args.part]([*(run_all.QUICK[args.part] if args.quick else []), *args.extra])
    print(f"wrote {run_all.write_summary(RESULTS)}")
    return 0


# -- parser ---------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (argparse turns the error into one line)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} < 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    from ledrec import __version__

    parser = _Parser(prog="ledrec", description=__doc__)
    parser.add_argument("-V", "--version", action="version", version=f"ledrec {__version__}")
    parser.add_argument("--home", help="state directory (stack record, models); env LEDREC_HOME")
    parser.add_argument("--kafka-bootstrap", help="Kafka bootstrap servers; env KAFKA_BOOTSTRAP")
    parser.add_argument("--redis-url", help="Redis URL (redis:// or rediss://); env REDIS_URL")
    parser.add_argument(
        "--model-store",
        help="model store: a directory or s3://bucket/prefix; env LEDREC_MODEL_STORE",
    )
    parser.add_argument("--events-topic", help="events topic; env LEDREC_EVENTS_TOPIC")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("stack", help="start/stop/inspect the local Redis + Kafka-protocol broker")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument(
        "--redis-cluster", type=int, default=0, metavar="N",
        help="up: a Redis Cluster of N primaries (N >= 3) instead of one Redis",
    )  # fmt: skip
    p.add_argument("--redis-replicas", type=int, default=0, metavar="R",
                   help="up, with --redis-cluster: replicas per primary")  # fmt: skip
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("publish", help="publish events from CSV or JSON lines (file or -)")
    p.add_argument("file", nargs="?", default="-")
    p.add_argument("--format", choices=["csv", "jsonl"])
    p.add_argument("--on-error", choices=["skip", "stop"], default="skip")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("consume", help="run a state-updater consumer")
    p.add_argument("--max-idle", type=float, help="exit after this many idle seconds")
    p.add_argument("--metrics-port", type=int)
    p.add_argument("--metrics-host", default="127.0.0.1", help="metrics bind address")
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser("serve", help="run a scorer answering recommendation requests")
    p.add_argument("--metrics-port", type=int)
    p.add_argument("--metrics-host", default="127.0.0.1", help="metrics bind address")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("dlq", help="the dead-letter topic: `dlq tail` prints the newest")
    p.add_argument("action", choices=["tail"])
    p.add_argument("-n", type=int, default=20, help="newest dead letters per partition")
    p.set_defaults(func=cmd_dlq)

    p = sub.add_parser("status", help="active version, consumers, scorers, queue depths")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("gateway", help="the HTTP gateway: recommendations, events, models")
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--metrics-port", type=int)
    p.add_argument("--metrics-host", default="127.0.0.1", help="metrics bind address")
    p.set_defaults(func=cmd_gateway)

    p = sub.add_parser("health", help="check a running service (consumer, scorer, gateway...)")
    p.add_argument("role", choices=["consumer", "scorer", "gateway", "trainer"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True, help="its metrics port (gateway: HTTP)")
    p.add_argument("--max-age", type=float, default=60.0, help="consumer: last poll at most")
    p.add_argument("--timeout", type=float, default=3.0)
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("recommend", help="ask the running scorers for recommendations")
    p.add_argument("user", nargs="?")
    p.add_argument("--items", help="comma-separated timeline instead of a user id")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--request-id", help="this call's id in the scorer's logs (default: fresh)")
    p.set_defaults(func=cmd_recommend)

    for name, func, helptext in (
        ("train", cmd_train, "train a model version and save it to the model store"),
        ("evaluate", cmd_evaluate, "compare LED variants and baselines on one split"),
    ):
        p = sub.add_parser(name, help=helptext)
        src = p.add_mutually_exclusive_group()
        src.add_argument("--movielens", help="MovieLens directory (ratings.csv or ratings.dat)")
        src.add_argument(
            "--events", help="events file: CSV (user_id,item_id,type header) or .parquet"
        )
        src.add_argument(
            "--data", metavar="FILE",
            help="interactions in a common format: `u i1 i2 ...` lines, u.data, ratings.dat, "
            "ratings.csv, user,item[,rating][,ts] CSV (ratings >= 4 are clicks)",
        )  # fmt: skip
        p.add_argument(
            "--format", choices=DATA_FORMATS,
            help="format of --data/--train/--test/--valid (default: from the name or first line)",
        )  # fmt: skip
        p.add_argument("--synthetic-users", type=int, default=10_000)
        p.add_argument("--synthetic-items", type=int, default=2_000)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--dim", type=int, help="embedding dimension (default 256)")
        p.add_argument(
            "--epochs", type=int,
            help="fine-tuning epochs (default: the config's, scaled up on small data to at "
            "least 400 optimizer steps)",
        )  # fmt: skip
        p.add_argument("--svd-only", action="store_true", help="pre-training only, no fine-tuning")
        p.add_argument(
            "--n-heldout", type=int, metavar="N",
            help="N validation and N test users left out of training (evaluate --protocol "
            "weak: N validation users lend 20%% of their train clicks); default 600, or 10%% "
            "of the users with >= 5 clicks on smaller data",
        )  # fmt: skip
        p.add_argument(
            "--engine", choices=["numpy", "spark"], default="numpy",
            help="pre-training (PMI + SVD): in this process, or on Spark (ledrec[spark])",
        )  # fmt: skip
        p.add_argument(
            "--spark-master", default="local[2]",
            help="--engine spark: local[N] or a cluster URL (spark://..., yarn, k8s://...)",
        )  # fmt: skip
        p.set_defaults(func=func)
    train = sub.choices["train"]
    train.add_argument("--loss", default="css", choices=["bpr", "ns", "css", "mult"])
    train.add_argument("--variant", default="train", choices=VARIANTS, help=VARIANT_HELP)
    train.add_argument("--register", action="store_true", help="register the version in Redis")
    train.add_argument("--activate", action="store_true", help="register and activate it")
    train.add_argument("--force", action="store_true", help="activate past the quality gate")
    train.add_argument(
        "--unless-active", action="store_true",
        help="do nothing if a version is already active (a bootstrap run again)",
    )  # fmt: skip
    train.add_argument(
        "--or-synthetic", action="store_true",
        help="with --movielens: synthetic data when that directory holds no ratings file",
    )  # fmt: skip
    evaluate = sub.choices["evaluate"]
    evaluate.add_argument("--out", default="reports/evaluate")
    evaluate.add_argument(
        "--protocol", choices=["strong", "weak", "time"], default="strong",
        help="strong: held-out users (Mult-VAE, the paper's Table 2); weak: every user "
        "trains, Recall/NDCG@20 on each user's test items (LightGCN's protocol); time: "
        "train on the events before a cutoff, predict each user's later clicks",
    )  # fmt: skip
    evaluate.add_argument(
        "--model", metavar="VERSION",
        help="score this saved version of the model store (or a version directory) on the "
        "protocol's test users, without training",
    )  # fmt: skip
    evaluate.add_argument(
        "--cutoff", type=float, metavar="Q",
        help="time: the cutoff, a quantile of the event times (default 0.8)",
    )  # fmt: skip
    evaluate.add_argument(
        "--variants", choices=["default", "all"], default="default",
        help="strong: LED's default model and its Project variant beside the baselines "
        "(default), or every loss and init and the click-scarce table too (all: the "
        "paper's Tables 2-3, several minutes)",
    )  # fmt: skip
    evaluate.add_argument(
        "--workers", type=_positive_int, metavar="N",
        help="strong: fine-tune N models side by side, in processes of one BLAS thread "
        "each (default: one per core; 1: in this process, one after the other)",
    )  # fmt: skip
    evaluate.add_argument("--train", metavar="FILE", help="weak: the train interactions")
    evaluate.add_argument("--test", metavar="FILE", help="weak: the test interactions")
    evaluate.add_argument(
        "--valid", metavar="FILE",
        help="weak: validation interactions for model selection (default: 20%% of the "
        "train clicks of --n-heldout users)",
    )  # fmt: skip

    p = sub.add_parser("models", help="list, register, activate, roll back model versions")
    p.add_argument(
        "action",
        choices=["list", "register", "activate", "rollback", "backfill", "retire", "prune"],
    )
    p.add_argument("version", nargs="?", help="version name (register: its directory)")
    p.add_argument("--force", action="store_true", help="activate: skip the quality gate")
    p.add_argument("--max-rate", type=float, help="backfill: at most this many users/s")
    p.add_argument(
        "--keep", type=int, help="prune: staged/retired versions to keep (default: settings)"
    )
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("trainer", help="retrain periodically from the events topic and activate")
    p.add_argument("--every", help="retrain on a clock: 90s, 30m, 6h, 1d")
    p.add_argument("--after-events", type=int, help="retrain when this many new events arrived")
    p.add_argument("--once", action="store_true", help="one cycle, then exit (1 if not activated)")
    p.add_argument("--window", help="replay the events of this last duration (default: all)")
    p.add_argument("--max-per-partition", type=int, help="replay at most this many per partition")
    p.add_argument("--min-events", type=int, default=1000, help="skip a cycle with fewer events")
    # no defaults here: train's and trainer's come from one place, ledrec.training.jobs
    p.add_argument("--dim", type=int, help="embedding dimension (default: train's)")
    p.add_argument("--min-count", type=int, help="items with fewer views are left out")
    p.add_argument("--n-heldout", type=int, default=600, help="validation + test users")
    p.add_argument("--svd-only", action="store_true", help="publish the pre-trained model")
    p.add_argument("--loss", default="css", choices=["bpr", "ns", "css", "mult"])
    p.add_argument("--variant", default="train", choices=VARIANTS, help=VARIANT_HELP)
    p.add_argument("--epochs", type=int, help="fine-tuning epochs (default: train's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="activate past the quality gate")
    p.add_argument(
        "--engine",
        choices=["numpy", "spark"],
        default="numpy",
        help="pre-training: in this process, or on Spark over the replayed events",
    )
    p.add_argument("--spark-master", default="local[2]", help="--engine spark: where")
    p.add_argument("--metrics-port", type=int)
    p.add_argument("--metrics-host", default="127.0.0.1", help="metrics bind address")
    p.set_defaults(func=cmd_trainer)

    p = sub.add_parser("demo", help="the whole system on one machine, end to end")
    p.add_argument("--movielens", help="MovieLens-1M directory (default: search known places)")
    p.add_argument("--synthetic", action="store_true", help="use the synthetic generator")
    p.add_argument("--users", type=int, default=600, help="held-out users replayed online")
    p.add_argument("--dim", type=int, default=256, help="embedding dimension")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "bench",
        help="speed benchmarks (ingest, serving, freshness, gateway) on a private stack",
        description="Extra arguments go to the part, e.g. `ledrec bench serving --items 100000`.",
    )
    p.add_argument("part", choices=["ingest", "serving", "freshness", "gateway", "all"])
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="flags passed to the benchmark")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ledrec.stream.artifact import ArtifactError
    from ledrec.stream.client import RecommendError
    from ledrec.stream.events import EventError
    from ledrec.stream.producer import PublishError
    from ledrec.stream.registry import RegistryError

    expected = (
        LedrecError, ArtifactError, RecommendError, EventError, RegistryError,
        PublishError, KafkaException, redis.RedisError, OSError, ValueError,
    )  # fmt: skip
    try:
        return int(args.func(args) or 0)
    except ValidationError as e:  # a bad LEDREC_* variable: one line naming each
        where = "; ".join(
            f"LEDREC_{'_'.join(map(str, err['loc'])).upper()}: {err['msg']}" for err in e.errors()
        )
        print(f"ledrec {args.command}: invalid settings: {where}", file=sys.stderr)
        return 1
    except expected as e:
        print(f"ledrec {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ledrec {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
