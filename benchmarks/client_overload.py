"""The library clients at twice their capacity: what they answer and what they raise.

A scorer whose every request costs a fixed ``--service-us`` of wall time (the server's own
loop with a sleep instead of the search: a known capacity, whatever the machine's load)
serves one private redis-server; the client under test first runs closed loop (its
capacity against that scorer), then offers twice that, Poisson arrivals, then normal load
(half of capacity) again. Every exception a call raises is counted by its qualified class
name, so an undocumented one (a raw redis-py or asyncio error) shows as such.

    python -m benchmarks.client_overload --client asyncio sync --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import random
import threading
import time
import traceback
from collections import Counter
from typing import Any

from benchmarks.common import bench_settings, connect, percentiles, private_stack

DOCUMENTED = {"Overloaded", "Timeout", "Unavailable", "BadRequest"}


def _slow_echo(settings: Any, stop: Any, service_s: float) -> None:  # child: the scorer
    """The server's loop answering every request empty after ``service_s`` per request."""
    from ledrec.stream import protocol
    from ledrec.stream.server import RecommendServer

    class SlowEcho(RecommendServer):
        def _read_plan(self) -> tuple[str | None, tuple[bytes, ...]]:
            return None, ()

        def _states(self, requests: list[Any], read: Any, read_version: Any) -> list[Any]:
            return []

        def _score(self, scorer: Any, requests: list[Any], states: Any) -> list[tuple[str, bytes]]:
            time.sleep(service_s * len(requests))
            return [(r.reply_to, protocol.encode_reply(r.id, [], "echo", "echo")) for r in requests]

    server = SlowEcho(settings, connect(settings.redis_url))
    server.versions.serving = object()  # type: ignore[assignment]  # no model needed
    while not stop.is_set():
        server.serve_once(block_s=0.2)


def _name(e: BaseException) -> str:
    kind = type(e)
    return (
        kind.__name__
        if kind.__module__.startswith("ledrec")
        else f"{kind.__module__}.{kind.__qualname__}"
    )


class _Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.tracebacks: Counter[str] = Counter()  # where an undocumented error came from

    def failed(self, e: BaseException) -> None:
        name = _name(e)
        self.errors[name] += 1
        if type(e).__name__ not in DOCUMENTED:
            frames = traceback.extract_tb(e.__traceback__)
            self.tracebacks[f"{name}: {e!s:.80} at {frames[-1].filename}:{frames[-1].lineno}"] += 1

    def summary(self, seconds: float) -> dict[str, Any]:
        return {
            "answered_per_s": round(len(self.latencies) / seconds),
            "latency": percentiles(self.latencies),
            "errors": dict(self.errors),
            "undocumented": dict(self.tracebacks.most_common(8)),
        }


async def _async_point(
    client: Any, mode: str, n: float, seconds: float, stall_s: float = 0.0
) -> dict[str, Any]:
    """Closed loop at ``n`` concurrent calls, or open loop at ``n`` calls/s (Poisson);
    ``stall_s``: the event loop is blocked that long every second (a machine so loaded
    that the client's process is not scheduled: its timers fire late)."""
    tally = _Tally()
    end = time.monotonic() + seconds

    async def staller() -> None:
        while time.monotonic() < end:
            await asyncio.sleep(1.0)
            time.sleep(stall_s)

    stalls = asyncio.create_task(staller()) if stall_s else None

    async def one(due: float) -> None:
        try:
            await client.request(user_id="u", k=10)
        except Exception as e:  # every kind is counted: that is the point
            tally.failed(e)
            return
        tally.latencies.append(time.monotonic() - due)

    if mode == "closed":

        async def worker() -> None:
            while time.monotonic() < end:
                await one(time.monotonic())

        await asyncio.gather(*(worker() for _ in range(int(n))))
    else:
        rng, tasks = random.Random(0), set()
        due = time.monotonic()
        while due < end:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            task = asyncio.create_task(one(due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            due += rng.expovariate(n)
        if tasks:
            await asyncio.wait(tasks, timeout=client.timeout_s + 3)
        if tasks:
            tally.errors["unanswered"] += len(tasks)
    if stalls is not None:
        await stalls
    return tally.summary(seconds)


def _sync_point(client: Any, mode: str, n: float, seconds: float, threads: int) -> dict[str, Any]:
    """As ``_async_point``, with ``threads`` threads (open loop: each its share of ``n``/s,
    a call that comes due while the thread is busy leaves late, measured from its due time)."""
    tally, lock = _Tally(), threading.Lock()
    end = time.monotonic() + seconds

    def worker(i: int) -> None:
        rng = random.Random(i)
        due = time.monotonic()
        while due < end:
            if mode == "open":
                time.sleep(max(0.0, due - time.monotonic()))
            start = due if mode == "open" else time.monotonic()
            try:
                client.request(user_id="u", k=10)
                with lock:
                    tally.latencies.append(time.monotonic() - start)
            except Exception as e:
                with lock:
                    tally.failed(e)
            due = due + rng.expovariate(n / threads) if mode == "open" else time.monotonic()

    pool = [
        threading.Thread(target=worker, args=(i,))
        for i in range(threads if mode == "open" else int(n))
    ]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return tally.summary(seconds)


def _connections(url: str) -> int:
    client = connect(url)
    n = len(client.client_list())
    client.close()
    return n


def run(
    kind: str, settings: Any, seconds: float, concurrency: int, threads: int, stall_s: float
) -> dict[str, Any]:
    from ledrec import AsyncRecommenderClient, RecommenderClient

    url = settings.redis_url
    base = _connections(url)
    out: dict[str, Any] = {}
    if kind == "asyncio":

        async def main() -> None:
            client = AsyncRecommenderClient.from_settings(settings)
            out["closed"] = await _async_point(client, "closed", concurrency, seconds)
            capacity = out["closed"]["answered_per_s"]
            out["normal_before"] = await _async_point(client, "open", capacity / 2, seconds)
            out["overload"] = await _async_point(client, "open", 2 * capacity, seconds, stall_s)
            out["connections_after_overload"] = _connections(url) - base
            out["normal_after"] = await _async_point(client, "open", capacity / 2, seconds)
            await client.aclose()

        asyncio.run(main())
    else:
        client = RecommenderClient.from_settings(settings)
        out["closed"] = _sync_point(client, "closed", concurrency, seconds, threads)
        capacity = out["closed"]["answered_per_s"]
        out["normal_before"] = _sync_point(client, "open", capacity / 2, seconds, threads)
        out["overload"] = _sync_point(client, "open", 2 * capacity, seconds, threads)
        out["connections_after_overload"] = _connections(url) - base
        out["normal_after"] = _sync_point(client, "open", capacity / 2, seconds, threads)
        client.close()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--client", nargs="+", choices=["asyncio", "sync"], default=["asyncio", "sync"])
    p.add_argument("--seconds", type=float, default=3.0, help="per load point")
    p.add_argument("--service-us", type=float, default=500.0, help="scorer's time per request")
    p.add_argument("--concurrency", type=int, default=16, help="closed-loop calls in flight")
    p.add_argument("--threads", type=int, default=64, help="sync client: open-loop threads")
    p.add_argument("--timeout", type=float, default=0.5, help="each call's timeout_s")
    p.add_argument("--stall-ms", type=float, default=0.0, help="asyncio: loop stalls, 1/s")
    p.add_argument("--max-queue", type=int, default=200, help="max_queue_length (the bound)")
    args = p.parse_args(argv)
    results: dict[str, Any] = {}
    with private_stack(kafka=False) as stack:
        settings = bench_settings(
            stack, key_prefix="ovl", serve_batch_size=8, request_timeout_s=args.timeout,
            max_queue_length=args.max_queue,
        )  # fmt: skip
        ctx = mp.get_context("spawn")
        stop = ctx.Event()
        scorer = ctx.Process(target=_slow_echo, args=(settings, stop, args.service_us / 1e6))
        scorer.start()
        try:
            time.sleep(3.0)  # the spawned interpreter imports
            for kind in args.client:
                results[kind] = run(
                    kind,
                    settings,
                    args.seconds,
                    args.concurrency,
                    args.threads,
                    args.stall_ms / 1e3,
                )
                print(kind, json.dumps(results[kind], indent=1), flush=True)
        finally:
            stop.set()
            scorer.join(10)
    return results


if __name__ == "__main__":
    main()
