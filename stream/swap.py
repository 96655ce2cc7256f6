"""Zero-downtime model swaps: activate (through the quality gate), roll back, retire.

Activating a version:

1. **Gate.** Refused (``RegistryError`` saying why) if its validation metrics are worse
   than the active version's, unless forced. Its artifacts are loaded and validated.
2. **Warm.** The version becomes ``warming``, i.e. live: consumers maintain its sum for
   every user they write from now on, and scorers load its index in the background.
3. **Back-fill.** The re-encoder computes every other user's sum from their timeline
   (resumable; a retained version needs none: its sums were maintained all along).
4. **Prepared.** Wait until every running scorer reports the version loaded and warm.
5. **Flip.** The active pointer moves in one transaction and is announced over pub/sub;
   each scorer switches between two batches and reports what it serves. The call returns
   when all of them do (``SwapReport.flip_started`` .. ``serving_at``: the only window in
   which both versions answer).
6. **Retire.** Retained versions beyond ``settings.retained_versions`` leave the live set
   and their sums are dropped.

One activation at a time: a lock in Redis, held (and kept alive) for the whole call.

Metrics (of the process that swaps: the trainer, the gateway): ``ledrec_model_swaps_total``
(activations that flipped), ``ledrec_model_rollbacks_total``, and
``ledrec_model_swaps_refused_total{reason}`` (gate, busy, scorers, artifact, other).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis
from prometheus_client import Counter
from redis.exceptions import LockError
from redis.lock import Lock

from ledrec.keyspace import Keyspace
from ledrec.settings import Settings
from ledrec.stream.artifact import ArtifactError
from ledrec.stream.model_store import ModelStores
from ledrec.stream.reencoder import BackfillProgress, Reencoder, clear_progress
from ledrec.stream.registry import Registry, RegistryError
from ledrec.stream.state import UserStateStore

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
LOCK_TTL_S = 15.0

SWAPS = Counter("ledrec_model_swaps_total", "Model versions activated (the pointer flipped)")
ROLLBACKS = Counter("ledrec_model_rollbacks_total", "Rollbacks to a retained version")
REFUSED = Counter(
    "ledrec_model_swaps_refused_total",
    "Activations or rollbacks that did not happen, by reason",
    ["reason"],
)
REFUSAL_REASONS = ("gate", "busy", "scorers", "artifact", "other")
for _reason in REFUSAL_REASONS:  # every series exists from the start (rate() sees the first)
    REFUSED.labels(_reason)


class GateRefused(RegistryError):
    """The quality gate refused a candidate (worse than the active version)."""


class SwapBusy(RegistryError):
    """Another swap holds the lock."""


class ScorersLagging(RegistryError):
    """Scorers did not report the version prepared or serving in time."""


def _refusal_reason(e: BaseException) -> str:
    if isinstance(e, GateRefused):
        return "gate"
    if isinstance(e, SwapBusy):
        return "busy"
    if isinstance(e, ScorersLagging):
        return "scorers"
    if isinstance(e, ArtifactError):
        return "artifact"
    return "other"


@dataclass
class SwapReport:
    version: str
    previous: str | None
    backfill: BackfillProgress | None  # None: no back-fill needed (retained version)
    activate_started: float  # wall-clock times (time.time())
    flip_started: float
    serving_at: float  # every running scorer serves the version
    retired: list[str]

    @property
    def seconds_to_serving(self) -> float:
        return self.serving_at - self.activate_started


class SwapLock:
    """Mutual exclusion of swaps across processes (redis-py's ``Lock``), renewed while held.

    The token names the holder (what, pid), so a refused swap can say who holds it.
    """

    def __init__(self, client: redis.Redis, prefix: str, what: str) -> None:
        key = Keyspace.of(client, prefix).swap_lock
        self.lock = Lock(client, key, timeout=LOCK_TTL_S, thread_local=False)
        self.token = f"{what}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> SwapLock:
        if not self.lock.acquire(blocking=False, token=self.token):
            holder = self.lock.redis.get(self.lock.name)
            raise SwapBusy(f"another model swap is in progress ({holder!r}); try again")
        return self

    def renew(self) -> None:
        """Reset the lock's time to live (a swap calls this as it makes progress)."""
        try:
            self.lock.reacquire()
        except LockError as e:
            raise RegistryError("lost the model swap lock (expired while held)") from e

    def __exit__(self, *_: object) -> None:
        with contextlib.suppress(LockError):  # expired meanwhile: nothing of ours to release
            self.lock.release()


class Swapper:
    """Drives the lifecycle of model versions for one deployment."""

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        self.client = client
        self.registry = Registry(client, settings.key_prefix)
        self.stores = ModelStores(settings)
        self.store = UserStateStore(
            client, settings.key_prefix, settings.timeline_max, settings.user_ttl_seconds
        )

    def backfill(
        self,
        version: str,
        progress: Progress | None = None,
        max_rate: float | None = None,
        lock: SwapLock | None = None,
    ) -> BackfillProgress:
        """Make ``version`` live (warming) and back-fill its sums; resumes an interrupted run."""
        info = self.registry.info(version)
        model = self.stores.load(self.registry.location(version))  # checksummed, validated
        if info["state"] in ("staged", "retired"):
            self.registry.set_state(version, "warming")
        last_report = [0.0]

        def report(p: BackfillProgress) -> None:
            if lock is not None:
                lock.renew()
            if progress is not None and (p.done or time.monotonic() - last_report[0] > 1.0):
                last_report[0] = time.monotonic()
                progress(p.line())

        reencoder = Reencoder(self.store, model, self.settings.backfill_batch)
        result = reencoder.run(report, max_rate)
        log.info("backfill complete", extra={"version": version, "users_per_s": result.users_per_s})
        return result

    def activate(
        self, version: str, force: bool = False, progress: Progress | None = None
    ) -> SwapReport:
        """Gate, warm, back-fill, wait for the scorers, flip, retire (see the module doc)."""
        try:
            report = self._activate(version, force, progress)
        except Exception as e:
            REFUSED.labels(_refusal_reason(e)).inc()
            raise
        if report.previous != report.version:
            SWAPS.inc()
        return report

    def rollback(self, progress: Progress | None = None) -> SwapReport:
        """Flip back to the most recently retained version (its sums are up to date)."""
        try:
            report = self._rollback(progress)
        except Exception as e:
            REFUSED.labels(_refusal_reason(e)).inc()
            raise
        ROLLBACKS.inc()
        return report

    def _activate(self, version: str, force: bool, progress: Progress | None) -> SwapReport:
        started = time.time()
        say = progress or (lambda _: None)
        with SwapLock(self.client, self.settings.key_prefix, f"activate {version}") as lock:
            info = self.registry.info(version)
            active = self.registry.active()
            if version == active:
                say(f"{version} is already active")
                return SwapReport(version, active, None, started, started, started, [])
            if not force:
                try:
                    self.registry.check_gate(
                        version, self.settings.gate_metrics, self.settings.gate_tolerance
                    )
                except RegistryError as e:
                    raise GateRefused(str(e)) from None
            backfill = None
            if info["state"] != "retained":
                backfill = self.backfill(version, say, lock=lock)
            return self._flip(version, started, backfill, lock, say)

    def _rollback(self, progress: Progress | None) -> SwapReport:
        started = time.time()
        say = progress or (lambda _: None)
        with SwapLock(self.client, self.settings.key_prefix, "rollback") as lock:
            retained = self.registry.retained()
            if not retained:
                raise RegistryError("no retained version to roll back to")
            return self._flip(retained[0], started, None, lock, say)

    def retire(self, version: str, progress: Progress | None = None) -> int:
        """Take a version out of the live set and drop its sums; returns users cleaned."""
        if version == self.registry.active():
            raise RegistryError(f"{version} is active; activate another version first")
        self.registry.set_state(version, "retired")
        clear_progress(self.client, self.settings.key_prefix, version)
        cleaned, batch = 0, []
        for user in self.store.scan_users(self.settings.backfill_batch):
            batch.append(user)
            if len(batch) >= self.settings.backfill_batch:
                self.store.drop_version(batch, version)
                cleaned, batch = cleaned + len(batch), []
        if batch:
            self.store.drop_version(batch, version)
            cleaned += len(batch)
        if progress is not None:
            progress(f"retired {version}: sums dropped for {cleaned} users")
        return cleaned

    # -- steps ---------------------------------------------------------------------------
    def _flip(
        self,
        version: str,
        started: float,
        backfill: BackfillProgress | None,
        lock: SwapLock,
        say: Progress,
    ) -> SwapReport:
        self._wait_scorers(version, "prepared", lock)
        say(f"scorers have {version} loaded; flipping the active pointer")
        flip_started = time.time()
        previous = self.registry.activate(version)
        self._wait_scorers(version, "serving", lock)
        serving_at = time.time()
        say(f"{version} is serving, {serving_at - started:.2f}s after activate (was {previous})")
        log.info(
            "model activated",
            extra={"version": version, "previous": previous, "seconds": serving_at - started},
        )
        retired = []
        for old in self.registry.retained()[self.settings.retained_versions :]:
            self.retire(old, say)
            retired.append(old)
        return SwapReport(version, previous, backfill, started, flip_started, serving_at, retired)

    def _wait_scorers(self, version: str, what: str, lock: SwapLock) -> None:
        """Wait until every live scorer has ``version`` prepared (or serving).

        A scorer that dies meanwhile stops counting when its heartbeat expires; one that
        does not get there in time is an error (the version stays where it is).
        """
        deadline = time.monotonic() + self.settings.scorer_ack_timeout_s
        while True:
            lagging = [
                name
                for name, s in self.registry.scorers().items()
                if s.get("serving") != version
                and (what == "serving" or version not in s.get("prepared", []))
            ]
            if not lagging:
                return
            if time.monotonic() > deadline:
                raise ScorersLagging(
                    f"scorers {', '.join(sorted(lagging))} did not report {version} {what} "
                    f"within {self.settings.scorer_ack_timeout_s:.0f}s (see their logs)"
                )
            lock.renew()
            time.sleep(0.01)
