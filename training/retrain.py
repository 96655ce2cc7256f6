"""Periodic retraining: replay recent events, train, publish, activate through the gate.

    ledrec trainer --every 30m --window 7d        # on a clock
    ledrec trainer --after-events 100000          # when that many new events arrived
    ledrec trainer --once                         # one cycle (tests, cron)

Each cycle replays the window of the events topic (``stream.replay``), builds
Interactions, trains with ``training.jobs.run_train`` (the parent is the active version),
registers the new version and activates it with the full swap (``stream.swap``). A
version the quality gate refuses stays ``staged``; any failure is logged and leaves the
active version serving.

Metrics (``ledrec trainer --metrics-port``): ``ledrec_trainer_cycles_total{outcome}``
(activated, not_activated, skipped: too few events, failed),
``ledrec_trainer_last_success_timestamp_seconds`` (the last cycle that activated a version)
and ``ledrec_trainer_gate_refusals_total``; the swaps' own counters (``stream.swap``) too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import redis
from prometheus_client import Counter, Gauge

from ledrec.errors import LedrecError
from ledrec.settings import Settings
from ledrec.stream.artifact import ArtifactError, load_model
from ledrec.stream.model_store import ModelStores
from ledrec.stream.prune import prune
from ledrec.stream.registry import Registry, RegistryError
from ledrec.stream.replay import Replay, consumed_total, replay_events
from ledrec.stream.swap import GateRefused, Swapper
from ledrec.training.dataset import from_events
from ledrec.training.jobs import Pretrainer, TrainConfig, run_train

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

OUTCOMES = ("activated", "not_activated", "skipped", "failed")
CYCLES = Counter("ledrec_trainer_cycles_total", "Retraining cycles, by outcome", ["outcome"])
for _outcome in OUTCOMES:
    CYCLES.labels(_outcome)
LAST_SUCCESS = Gauge(
    "ledrec_trainer_last_success_timestamp_seconds",
    "When a retraining cycle last activated a new version (Unix time; 0: never)",
)
GATE_REFUSALS = Counter(
    "ledrec_trainer_gate_refusals_total", "Trained versions the quality gate refused"
)


class RetrainError(LedrecError, RuntimeError):
    """A cycle that cannot train (too little data...)."""


@dataclass
class RetrainConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    window_s: float | None = None  # replay events of the last window_s seconds (event time)
    max_per_partition: int | None = None  # and at most this many per partition
    min_events: int = 1000  # fewer than this in the window: skip the cycle
    force: bool = False  # activate past the quality gate
    spark_master: str | None = None  # pre-train on Spark there (local[N], a cluster URL)


@dataclass
class CycleResult:
    version: str | None  # the version trained (None: no training happened)
    activated: bool
    reason: str = ""  # why not activated
    gate_refused: bool = False  # the quality gate refused it


def parse_duration(text: str) -> float:
    """Seconds in ``"90"``, ``"90s"``, ``"30m"``, ``"6h"`` or ``"7d"``."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    text = text.strip().lower()
    scale = units.get(text[-1:])
    number = text[:-1] if scale is not None else text
    try:
        value = float(number) * (scale or 1.0)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (e.g. 90s, 30m, 6h, 7d)") from None
    if value <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return value


class Retrainer:
    """Runs retraining cycles for one deployment."""

    def __init__(
        self,
        settings: Settings,
        kafka_bootstrap: str,
        client: redis.Redis,
        config: RetrainConfig,
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        self.bootstrap = kafka_bootstrap
        self.client = client
        self.config = config
        self.progress = progress
        self.registry = Registry(client, settings.key_prefix)
        self.stores = ModelStores(settings)
        self.stop_event = threading.Event()

    def cycle(self) -> CycleResult:
        """Replay, train, publish, register, activate (raises on failure)."""
        since = time.time() - self.config.window_s if self.config.window_s else None
        replay = replay_events(self.settings, self.bootstrap, since, self.config.max_per_partition)
        if len(replay.events) < self.config.min_events:
            raise RetrainError(
                f"only {len(replay.events)} events in the window (need {self.config.min_events})"
            )
        data = from_events((e.user_id, e.item_id, e.type) for e in replay.events)
        active = self.registry.active()
        baseline = None
        if active is not None:
            try:
                baseline = self.stores.load(self.registry.location(active))
            except ArtifactError as e:  # the gate then compares each on its own users
                log.warning("active version unreadable", extra={"error": str(e)})
        with self._pretrainer(replay) as pretrainer:
            path = run_train(
                data,
                self.settings.model_store_path,
                self.config.train,
                parent=active,
                progress=self.progress,
                source=replay.describe(self.settings.events_topic),
                exact_index_max_items=self.settings.exact_index_max_items,
                baseline=baseline,
                pretrainer=pretrainer,
            )
        model = load_model(path)
        location = self.stores.publish(path)  # an s3:// store: uploaded, manifest last
        self.registry.register(model, location=location)
        try:
            Swapper(self.settings, self.client).activate(
                model.version, force=self.config.force, progress=self.progress
            )
        except RegistryError as e:  # refused by the gate (or scorers did not follow)
            log.warning(
                "new version not activated", extra={"version": model.version, "reason": str(e)}
            )
            return CycleResult(model.version, False, str(e), isinstance(e, GateRefused))
        log.info("new version active", extra={"version": model.version, "metrics": model.metrics})
        return CycleResult(model.version, True)

    @contextmanager
    def _pretrainer(self, replay: Replay) -> Iterator[Pretrainer | None]:
        """None (numpy), or the Spark engine over the replayed events as a DataFrame."""
        if self.config.spark_master is None:
            yield None
            return
        from ledrec.training.spark.events import events_from_rows
        from ledrec.training.spark.pretrain import spark_engine

        rows = [(e.user_id, e.item_id, e.type) for e in replay.events]
        with spark_engine(self.config.spark_master, lambda s: events_from_rows(s, rows)) as p:
            yield p

    def run_once(self) -> CycleResult:
        """One cycle; a failure is logged and reported, the active version keeps serving."""
        started = time.perf_counter()
        try:
            result = self.cycle()
        except Exception as e:
            # too little data in the window: skipped (nothing to train yet); else failed
            expected = isinstance(e, RetrainError)
            CYCLES.labels("skipped" if expected else "failed").inc()
            # an expected refusal (too little data) is a warning with its reason; anything
            # else is a bug or an outage, logged with its traceback
            log.log(
                logging.WARNING if expected else logging.ERROR,
                "retraining failed; the active version keeps serving",
                extra={"active": self.registry.active(), "error": str(e)},
                exc_info=not expected,
            )
            return CycleResult(None, False, f"{type(e).__name__}: {e}")
        CYCLES.labels("activated" if result.activated else "not_activated").inc()
        if result.activated:
            LAST_SUCCESS.set(time.time())
        if result.gate_refused:
            GATE_REFUSALS.inc()
        log.info(
            "retraining cycle done",
            extra={"seconds": time.perf_counter() - started, **vars(result)},
        )
        try:  # refused candidates and retired versions do not pile up in the store
            prune(self.registry, self.settings.model_store_keep, self.stores)
        except (OSError, redis.RedisError) as e:
            log.warning("model store not pruned", extra={"error": str(e)})
        return result

    def run(self, every_s: float | None = None, after_events: int | None = None) -> None:
        """Cycle every ``every_s`` seconds, or whenever the state updaters have consumed
        ``after_events`` more events (their group's committed offsets)."""
        if (every_s is None) == (after_events is None):
            raise ValueError("give exactly one of every_s and after_events")
        if every_s is not None:
            while not self.stop_event.is_set():
                next_at = time.monotonic() + every_s
                self.run_once()
                self.stop_event.wait(max(0.0, next_at - time.monotonic()))
            return
        assert after_events is not None
        baseline = consumed_total(self.settings, self.bootstrap)
        while not self.stop_event.wait(1.0):
            try:
                total = consumed_total(self.settings, self.bootstrap)
            except Exception as e:
                log.warning("cannot read the consumed offsets", extra={"error": str(e)})
                continue
            if total - baseline >= after_events:
                baseline = total
                self.run_once()
