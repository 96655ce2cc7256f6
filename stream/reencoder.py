"""The re-encoder: back-fills every existing user's running sum for a new model version.

While a version is ``warming`` the consumers maintain its sum for every user they write;
the re-encoder computes it for everyone else from their stored timeline. It walks the
users with SCAN (never blocking Redis), ``backfill_batch`` keys per round trip:

1. pipelined ``HMGET seq, w:<version>``: users who already have the sum (written by a
   consumer, or by an earlier run) are left alone;
2. pipelined ``HMGET ti, tw, seq, vs`` of the others, their window sum computed exactly as the
   consumer would (``encoder.window_sum``);
3. pipelined compare-and-set writes (``UserStateStore.set_sums``): a user written since
   step 2 is read again and retried.

A write is the whole window sum, never an increment, so redoing any part of the work is
harmless: after a crash the run resumes from the SCAN cursor saved in Redis after every
batch, and nothing is ever added twice. A first pass writes the sums; a verification pass
finds any a consumer dropped (a consumer still on the old live set drops the sums it does
not carry, see ``stream.state``); passes repeat until one writes nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
import redis

from ledrec.keyspace import Keyspace
from ledrec.stream._cluster import scan_step
from ledrec.stream.artifact import Model
from ledrec.stream.encoder import window_sum
from ledrec.stream.state import UserState, UserStateStore

MAX_PASSES = 5  # past this, what remains is encoded from the timeline on demand
MAX_ATTEMPTS = 10  # CAS retries of one user within a batch before leaving it to the next pass


@dataclass
class BackfillProgress:
    """Where a version's back-fill stands; saved in Redis after every batch."""

    version: str
    cursor: int = 0  # SCAN cursor of the current pass (0: pass not started or finished)
    passes: int = 0  # completed passes
    scanned: int = 0  # users visited, all passes
    written: int = 0  # sums written by the re-encoder
    present: int = 0  # users who already had the sum
    empty: int = 0  # users without a timeline
    retries: int = 0  # compare-and-set races lost to a consumer, then retried
    pass_written: int = 0  # sums written in the current pass
    started_at: float = 0.0
    updated_at: float = 0.0
    seconds: float = 0.0  # time spent working, all runs
    done: bool = False

    @property
    def users_per_s(self) -> float:
        return self.scanned / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        state = "done" if self.done else f"pass {self.passes + 1}"
        return (
            f"backfill {self.version}: {state}, {self.scanned} users scanned, "
            f"{self.written} written, {self.present} already had it, {self.retries} retried, "
            f"{self.users_per_s:.0f} users/s"
        )


def progress_key(client: redis.Redis, prefix: str, version: str) -> str:
    return Keyspace.of(client, prefix).backfill(version)


def read_progress(client: redis.Redis, prefix: str, version: str) -> BackfillProgress | None:
    raw = client.get(progress_key(client, prefix, version))
    return BackfillProgress(**json.loads(raw)) if raw is not None else None


def clear_progress(client: redis.Redis, prefix: str, version: str) -> None:
    """Forget a back-fill (the version left the live set: its sums are no longer kept)."""
    client.delete(progress_key(client, prefix, version))


class Reencoder:
    """Back-fills one model version's sums over every stored user; resumable."""

    def __init__(self, store: UserStateStore, model: Model, batch: int = 500) -> None:
        self.store = store
        self.client = store.client
        self.model = model
        self.batch = batch
        self.key = progress_key(store.client, store.prefix, model.version)

    def progress(self) -> BackfillProgress:
        saved = read_progress(self.client, self.store.prefix, self.model.version)
        return saved or BackfillProgress(self.model.version, started_at=time.time())

    def run(
        self,
        on_progress: Callable[[BackfillProgress], None] | None = None,
        max_rate: float | None = None,
    ) -> BackfillProgress:
        """Back-fill until complete (resuming a previous run); returns the final progress.

        ``max_rate`` caps users per second, to bound the load on Redis.
        """
        progress = self.progress()
        keys = Keyspace.of(self.client, self.store.prefix)
        run_started, run_scanned = time.perf_counter(), 0
        while not progress.done:
            t0 = time.perf_counter()
            cursor, found = scan_step(self.client, progress.cursor, keys.users, self.batch)
            users = [keys.user_id(k) for k in found]
            self._fill(users, progress)
            progress.cursor = cursor
            progress.scanned += len(users)
            run_scanned += len(users)
            if progress.cursor == 0:  # a pass ended
                progress.passes += 1
                clean = progress.passes > 1 and progress.pass_written == 0
                progress.done = clean or progress.passes >= MAX_PASSES
                progress.pass_written = 0
            progress.seconds += time.perf_counter() - t0
            progress.updated_at = time.time()
            # Saved only after the batch's writes succeeded: a crash redoes at most a batch.
            self.client.set(self.key, json.dumps(asdict(progress)))
            if on_progress is not None:
                on_progress(progress)
            if max_rate:
                ahead = run_scanned / max_rate - (time.perf_counter() - run_started)
                if ahead > 0:
                    time.sleep(ahead)
        return progress

    def _fill(self, users: Sequence[str], progress: BackfillProgress) -> None:
        """Give every user in ``users`` this version's sum (unless they have it already)."""
        v = self.model.version
        pending = list(users)
        for _attempt in range(MAX_ATTEMPTS):
            if not pending:
                return
            pipe = self.client.pipeline(transaction=False)
            for user in pending:
                pipe.hmget(self.store.key(user), ["seq", f"w:{v}"])
            missing = []
            for user, (seq, weight) in zip(pending, pipe.execute(), strict=True):
                if seq is None:
                    continue  # expired since SCAN returned it
                if weight is not None:
                    progress.present += 1
                else:
                    missing.append(user)
            if not missing:
                return
            writes: list[tuple[str, UserState, npt.NDArray[np.float64], float]] = []
            for user, state in zip(missing, self.store.read_many(missing, []), strict=True):
                if state is None:
                    continue  # expired since
                if not state.size:
                    progress.empty += 1
                total, weight = window_sum(self.model, state.timeline)
                writes.append((user, state, total, weight))
            ok = self.store.set_sums(self.model, writes)
            n_ok = sum(ok)
            progress.written += n_ok
            progress.pass_written += n_ok
            pending = [user for (user, *_), done in zip(writes, ok, strict=True) if not done]
            progress.retries += len(pending)
