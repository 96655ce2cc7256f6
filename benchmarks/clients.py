"""Load through the library clients, as a user calls them: the sync ``RecommenderClient``
(one thread per caller) and the ``AsyncRecommenderClient`` (one task per call).

A load point (``LoadSpec``) is a closed loop at N concurrent callers (each asks again when
answered: throughput) or an open loop at a rate (Poisson or evenly spaced arrivals; each
call's latency runs from its due time, so neither queueing nor the caller's own lateness
is hidden). ``drive`` runs a sequence of points on one client, so what a point leaves
behind (an overload) shows in the next. Every exception a call raises is counted under
its class name (qualified when it is not ours), so an undocumented one shows as such.

Used by ``benchmarks.serving`` (against the real scorer, beside its lean generator) and
``benchmarks.client_overload`` (against a scorer of known capacity).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

# what the clients document (stream.client); anything else counted is a bug
DOCUMENTED = frozenset({"Overloaded", "Timeout", "Unavailable", "BadRequest"})
# a sync caller's due calls still unsent when the point ends (every thread was in a call)
UNSENT = "unsent (every caller thread busy)"
UNANSWERED = "unanswered"  # an asyncio call still pending well past its timeout


@dataclass(frozen=True)
class LoadSpec:
    """One load generator's share of a load point."""

    mode: str  # "closed" (concurrency callers) or "open" (rate requests/s)
    concurrency: int
    rate: float
    offset: float  # open loop: this process's arrivals, shifted to interleave with the others
    arrivals: str  # "uniform" or "poisson"
    start_at: float  # epoch s: all generators start together
    warmup: float
    seconds: float
    threads: int = 64  # sync client, open loop: caller threads (its pool's 64 connections)
    pause_s: float = 0.0  # in a sequence: idle this long after the point before ends

    @property
    def measure_from(self) -> float:
        return self.start_at + self.warmup

    @property
    def end(self) -> float:
        return self.start_at + self.warmup + self.seconds


def synchronized(
    specs: Iterable[LoadSpec], barrier: Any, start: Any, started: list[LoadSpec]
) -> Iterator[LoadSpec]:
    """``specs`` in turn, each starting (``start_at``) once every load process has finished
    the one before (``barrier``: a multiprocessing barrier of them all; ``start``: a shared
    double through which the first to arrive tells the others when); ``started`` gets each.
    No fixed gaps: an overloaded point's stragglers cannot overlap the next point."""
    for spec in specs:
        if barrier.wait(timeout=600) == 0:
            start.value = time.time() + 0.2 + spec.pause_s
        barrier.wait(timeout=600)
        started.append(dataclasses.replace(spec, start_at=start.value))
        yield started[-1]


def error_name(e: BaseException) -> str:
    """Our exceptions by name; anything else qualified (``redis.exceptions.ConnectionError``)."""
    kind = type(e)
    if kind.__module__.startswith("ledrec"):
        return kind.__name__
    return f"{kind.__module__}.{kind.__qualname__}"


class Tally:
    """Latencies and errors of the calls due in the measured window."""

    def __init__(self, measure_from: float = 0.0) -> None:
        self.measure_from = measure_from
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.tracebacks: Counter[str] = Counter()  # where an undocumented error came from
        self.lock = threading.Lock()  # sync callers are threads

    def answered(self, due: float) -> None:
        if due >= self.measure_from:
            latency = time.time() - due
            with self.lock:
                self.latencies.append(latency)

    def failed(self, e: BaseException, due: float) -> None:
        if due < self.measure_from:
            return
        name = error_name(e)
        with self.lock:
            self.errors[name] += 1
            if type(e).__name__ not in DOCUMENTED:
                frames = traceback.extract_tb(e.__traceback__)
                where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
                self.tracebacks[f"{name}: {e!s:.80} at {where}"] += 1

    def raw(self, cpu_s: float) -> dict[str, Any]:
        """What a load process reports (merged across processes by the caller)."""
        return {
            "latencies": self.latencies,
            "errors": dict(self.errors),
            "undocumented": dict(self.tracebacks.most_common(8)),
            "cpu_s": cpu_s,
        }


def due_times(spec: LoadSpec, rate: float, rng: random.Random, offset: float) -> Iterator[float]:
    """Open loop: the due times in ``[start_at, end)`` of arrivals at ``rate``/s."""
    due = spec.start_at + offset / rate
    while due < spec.end:
        yield due
        due += rng.expovariate(rate) if spec.arrivals == "poisson" else 1.0 / rate


async def async_point(client: Any, users: list[str], spec: LoadSpec) -> dict[str, Any]:
    """One load point on an ``AsyncRecommenderClient``: a task per call."""
    tally, rng = Tally(spec.measure_from), random.Random()
    loop = asyncio.get_running_loop()
    # errors nobody awaited (a redis-py task's traceback): counted, not just logged
    loop.set_exception_handler(
        lambda _, context: tally.failed(
            context.get("exception") or RuntimeError(context["message"]), time.time()
        )
    )

    async def one(due: float) -> None:
        try:
            await client.request(user_id=rng.choice(users), k=10)
        except Exception as e:  # every kind is counted: that is the point
            tally.failed(e, due)
            return
        tally.answered(due)

    await asyncio.sleep(max(0.0, spec.start_at - time.time()))
    cpu0 = time.process_time()
    if spec.mode == "closed":

        async def caller() -> None:
            while time.time() < spec.end:
                await one(time.time())

        await asyncio.gather(*(caller() for _ in range(spec.concurrency)))
    else:
        tasks: set[asyncio.Task[None]] = set()
        for due in due_times(spec, spec.rate, rng, spec.offset):
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:  # every call ends by its timeout: a call still pending is a bug
            await asyncio.wait(tasks, timeout=client.timeout_s + 3.0)
        if tasks:
            tally.errors[UNANSWERED] += len(tasks)
            for task in tasks:
                task.cancel()
    cpu = time.process_time() - cpu0
    loop.set_exception_handler(None)
    return tally.raw(cpu)


def sync_point(client: Any, users: list[str], spec: LoadSpec) -> dict[str, Any]:
    """One load point on a ``RecommenderClient``: closed loop, a thread per caller; open
    loop, ``spec.threads`` threads each taking its share of the arrivals (a call that comes
    due while its thread is in a call leaves late, measured from its due time; what is
    still unsent at the end of the point is counted, not sent)."""
    tally = Tally(spec.measure_from)

    def one(rng: random.Random, due: float) -> None:
        try:
            client.request(user_id=rng.choice(users), k=10)
        except Exception as e:
            tally.failed(e, due)
            return
        tally.answered(due)

    def closed() -> None:
        rng = random.Random()
        while time.time() < spec.end:
            one(rng, time.time())

    def open_(i: int) -> None:
        rng = random.Random()
        share = spec.rate / spec.threads
        dues = due_times(spec, share, rng, (spec.offset + i) / spec.threads)
        for due in dues:
            if time.time() >= spec.end:  # bounded: a backlog is not worked off after the end
                unsent = sum(1 for d in (due, *dues) if d >= spec.measure_from)
                with tally.lock:
                    tally.errors[UNSENT] += unsent
                return
            time.sleep(max(0.0, due - time.time()))
            one(rng, due)

    time.sleep(max(0.0, spec.start_at - time.time()))
    cpu0 = time.process_time()
    if spec.mode == "closed":
        threads = [threading.Thread(target=closed) for _ in range(spec.concurrency)]
    else:
        threads = [threading.Thread(target=open_, args=(i,)) for i in range(spec.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally.raw(time.process_time() - cpu0)


def drive(
    kind: str, settings: Any, users: list[str], specs: Iterable[LoadSpec]
) -> list[dict[str, Any]]:
    """Run ``specs`` in order on one client of ``kind`` ("sync" or "asyncio") built from
    ``settings`` as a user builds it (``from_settings``), after one warm call (its clock
    measurement and first connections are not requests)."""
    from ledrec import AsyncRecommenderClient, RecommenderClient

    if kind == "sync":
        client = RecommenderClient.from_settings(settings)
        client.request(user_id=users[0], k=10, timeout_s=10.0)
        try:
            return [sync_point(client, users, spec) for spec in specs]
        finally:
            client.close()

    async def main() -> list[dict[str, Any]]:
        client = AsyncRecommenderClient.from_settings(settings)
        await client.request(user_id=users[0], k=10, timeout_s=10.0)
        results, todo = [], iter(specs)
        try:
            # the next spec may wait for the other load processes: in a thread, so the
            # client's own tasks (its reply listener) keep running meanwhile
            while (spec := await asyncio.to_thread(next, todo, None)) is not None:
                results.append(await async_point(client, users, spec))
            return results
        finally:
            await client.aclose()

    return asyncio.run(main())
