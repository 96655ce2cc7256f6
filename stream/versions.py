"""The model versions a scorer holds: the one serving, the next one, and the live others.

A background thread follows the registry's active pointer (pub/sub, and a periodic check
as a safety net), loads and warms every live version (the next one while it warms up, a
retained one as a rollback target), so that a flip never loads on the request path. The
serving loop calls ``swap_if_ready`` between two batches: a batch takes ``serving`` once,
so a switch never falls in the middle of one. A heartbeat tells swaps what this scorer
serves and has ready.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from prometheus_client import Gauge

from ledrec.connect import REDIS_UNAVAILABLE
from ledrec.settings import Settings
from ledrec.stream.artifact import ArtifactError
from ledrec.stream.backoff import Backoff
from ledrec.stream.loaded_model import LoadedModel, Query
from ledrec.stream.registry import ModelCache, Registry

log = logging.getLogger(__name__)
SERVING_VERSION = Gauge(
    "ledrec_serving_version",
    "1 for the model version this scorer serves, 0 for the others",
    ["version"],
)

HEARTBEAT_TTL_S = 5.0  # a scorer silent this long no longer counts in a swap


class ServingVersions:
    """The model-version lifecycle of one scorer: watch, prepare, swap, heartbeat."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        models: ModelCache,
        name: str,
        stats: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.stats = stats  # more for the heartbeat (the server's totals and latency)
        self.registry = registry
        self.models = models
        self.name = name  # the scorer's, in its heartbeat
        self.serving: LoadedModel | None = None
        self._next: LoadedModel | None = None
        self._lock = threading.Lock()
        self._refused: str | None = None  # a version that failed to load (artifacts are immutable)
        # The other live versions (warming: the next one; retained: a rollback target).
        self._prepared: dict[str, LoadedModel] = {}
        self._unloadable: set[str] = set()

    def load_active(self) -> bool:
        """Prepare the registry's active version if it is not the one serving."""
        version = self.registry.active()
        current = self._next or self.serving
        if version is None or version == self._refused:
            return False
        if current is not None and current.version == version:
            return False
        with self._lock:
            scorer = self._prepared.pop(version, None)
        if scorer is None:
            try:
                scorer = self._load(version)
            except ArtifactError:
                self._refused = version  # do not re-read and re-hash it every second
                raise
        with self._lock:
            self._next = scorer
        log.info("model prepared", extra={"version": version, "exact": scorer.exact})
        return True

    def watch(self, stop: threading.Event) -> None:
        """Follow the active pointer until ``stop``, resubscribing with backoff while Redis
        is unreachable (the watcher thread's loop)."""
        backoff = Backoff()
        while not stop.is_set():
            try:
                self._follow_active(stop)
            except REDIS_UNAVAILABLE as e:
                log.warning("model watcher: redis unavailable", extra={"error": str(e)})
                backoff.wait(stop)

    def _follow_active(self, stop: threading.Event) -> None:
        """Pub/sub for speed, a periodic check as a safety net."""
        pubsub = self.registry.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call, unused-ignore]
        pubsub.subscribe(self.registry.channel)
        try:
            while not stop.is_set():
                pubsub.get_message(timeout=1.0)
                self.sync_models()
        finally:
            pubsub.close()

    def sync_models(self) -> None:
        """Prepare the live versions, switch to the active one, report (the watcher's round)."""
        try:
            self.prepare_live()
        except REDIS_UNAVAILABLE:
            raise
        except Exception:
            log.exception("could not prepare the live model versions")
        try:
            self.load_active()
        except REDIS_UNAVAILABLE:
            raise
        except Exception:
            log.exception("could not load the active model; still serving the old one")
        # Swap here rather than wait for the serving loop (it may sit in BLMOVE): a batch
        # takes ``self.serving`` once, so the switch still falls between two batches.
        self.swap_if_ready()
        self.heartbeat()

    def prepare_live(self) -> None:
        """Load and warm every live version not loaded yet; forget those no longer live."""
        live = set(self.registry.live())
        with self._lock:
            for gone in set(self._prepared) - live:
                del self._prepared[gone]
            loaded = set(self._prepared) | {s.version for s in (self.serving, self._next) if s}
        for version in sorted(live - loaded - self._unloadable):
            self.heartbeat()  # loading a big index takes a while: stay visible meanwhile
            try:
                scorer = self._load(version)
            except ArtifactError as e:  # refused by its checks: the reason is the message
                self._unloadable.add(version)
                log.error("model version unusable", extra={"version": version, "error": str(e)})
                continue
            with self._lock:
                self._prepared[version] = scorer
            log.info("model prepared", extra={"version": version, "exact": scorer.exact})

    def _load(self, version: str) -> LoadedModel:
        """Load a version, build or read its index, and run a few searches to warm it."""
        model = self.models.get(version)
        scorer = LoadedModel(model, self.settings.exact_index_max_items, self.settings.ivf_nprobe)
        zeros = np.zeros(model.dim, dtype=np.float32)
        scorer.top_k([Query(zeros, frozenset(), 10)] * self.settings.serve_batch_size)
        model.row_of  # noqa: B018  # built here, not by the first request with explicit items
        # The model's million-entry id list and dict live as long as the version: keep the
        # cyclic GC from traversing them again and again on the request path.
        gc.freeze()
        return scorer

    def heartbeat(self) -> None:
        """Tell swaps what this scorer serves and has ready (``Registry.scorers``)."""
        with self._lock:
            serving = self.serving.version if self.serving is not None else None
            prepared = sorted(self._prepared)
        stats = self.stats() if self.stats is not None else {}
        self.registry.report_scorer(self.name, serving, prepared, HEARTBEAT_TTL_S, stats)

    def swap_if_ready(self) -> None:
        if self._next is None:
            return
        with self._lock:
            if self._next is None:  # the other thread swapped first
                return
            old, self.serving, self._next = self.serving, self._next, None
            if old is not None:
                self._prepared[old.version] = old  # a rollback target until it leaves live
                SERVING_VERSION.labels(old.version).set(0)
            SERVING_VERSION.labels(self.serving.version).set(1)
        log.info(
            "model swapped",
            extra={"version": self.serving.version, "previous": old.version if old else None},
        )
        self.heartbeat()
