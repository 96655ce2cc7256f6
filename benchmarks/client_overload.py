"""The library clients at twice their capacity: what they answer and what they raise.

A scorer whose every request costs a fixed ``--service-us`` of wall time (the server's own
loop with a sleep instead of the search: a known capacity, whatever the machine's load)
serves one private redis-server; the client under test first runs closed loop (its
capacity against that scorer), then offers twice that, Poisson arrivals, then normal load
(half of capacity) again. Every exception a call raises is counted by its qualified class
name, so an undocumented one (a raw redis-py or asyncio error) shows as such. The load
points are ``benchmarks.clients``' (as in ``benchmarks.serving``, which also overloads
each client against the real scorer).

    python -m benchmarks.client_overload --client asyncio sync --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import time
from typing import Any

from benchmarks.clients import LoadSpec, async_point, sync_point
from benchmarks.common import bench_settings, connect, percentiles, private_stack

USERS = ["u"]  # no state: every call is answered by popularity (the echo ignores it anyway)


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


def _spec(mode: str, n: float, seconds: float, threads: int) -> LoadSpec:
    """A load point starting now: ``n`` callers (closed) or calls/s (open, Poisson)."""
    return LoadSpec(mode, int(n), n, 0.0, "poisson", time.time() + 0.05, 0.0, seconds, threads)


def _summary(raw: dict[str, Any], seconds: float) -> dict[str, Any]:
    return {
        "answered_per_s": round(len(raw["latencies"]) / seconds),
        "latency": percentiles(raw["latencies"]),
        "errors": raw["errors"],
        "undocumented": raw["undocumented"],
    }


async def _stalled(client: Any, spec: LoadSpec, stall_s: float) -> dict[str, Any]:
    """``async_point`` with the event loop blocked ``stall_s`` every second (a machine so
    loaded that the client's process is not scheduled: its timers fire late)."""

    async def staller() -> None:
        while time.time() < spec.end:
            await asyncio.sleep(1.0)
            time.sleep(stall_s)

    raw, _ = await asyncio.gather(async_point(client, USERS, spec), staller())
    return raw


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

            async def point(mode: str, n: float, stall: float = 0.0) -> dict[str, Any]:
                spec = _spec(mode, n, seconds, threads)
                raw = await (
                    _stalled(client, spec, stall) if stall else async_point(client, USERS, spec)
                )
                return _summary(raw, seconds)

            out["closed"] = await point("closed", concurrency)
            capacity = out["closed"]["answered_per_s"]
            out["normal_before"] = await point("open", capacity / 2)
            out["overload"] = await point("open", 2 * capacity, stall_s)
            out["connections_after_overload"] = _connections(url) - base
            out["normal_after"] = await point("open", capacity / 2)
            await client.aclose()

        asyncio.run(main())
    else:
        client = RecommenderClient.from_settings(settings)

        def point(mode: str, n: float) -> dict[str, Any]:
            return _summary(sync_point(client, USERS, _spec(mode, n, seconds, threads)), seconds)

        out["closed"] = point("closed", concurrency)
        capacity = out["closed"]["answered_per_s"]
        out["normal_before"] = point("open", capacity / 2)
        out["overload"] = point("open", 2 * capacity)
        out["connections_after_overload"] = _connections(url) - base
        out["normal_after"] = point("open", capacity / 2)
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
