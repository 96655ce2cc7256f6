"""Gateway: requests/s and p50/p99 through the HTTP gateway against the bare RPC, same run.

A private redis-server, one scorer process (``ledrec serve``: a clustered synthetic model,
its IVF index built here as ``benchmarks.serving`` builds it, users' states written from
the synthetic world) and one gateway process (``ledrec gateway``: uvicorn, one worker, on
a free loopback port) in front of that scorer. This process is the load generator, one
asyncio loop, and takes turns on the same scorer:

* bare: the library's ``AsyncRecommenderClient`` (``request(user_id=..., k=10)``);
* gateway: ``httpx.AsyncClient`` (keep-alive pool) on
  ``GET /v1/users/{id}/recommendations?k=10``, answers parsed as JSON;

each closed loop (``--clients`` callers, each asking again when answered: throughput) and
open loop (Poisson arrivals at ``--rate`` requests/s, latency from each request's due
time: latency below saturation). Reported: answered/s, p50/p99, errors by type, the
replies' sources, CPU per request of each process, and gateway/bare ratios. No broker:
the gateway needs one only for ``POST /v1/events`` (its producer connects lazily).

    python -m benchmarks.gateway                          # 10^5 items, 10 s per point
    python -m benchmarks.gateway --seconds 3 --profile    # + pyinstrument of the gateway
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS,
    bench_settings,
    clustered_model,
    connect,
    percentiles,
    private_stack,
    redis_cpu_s,
    synthetic_world,
    write_result,
)
from benchmarks.serving import _populate

NAME = "gateway"
SETTLE_S = 1.0  # idle between load points: what one left queued is not the next one's
GATEWAY_LIBRARIES = ("fastapi", "starlette", "uvicorn", "h11", "httptools", "uvloop", "httpx")

# One request: the user asked for, and back the error's name (None: answered) and the
# reply's source (state, popularity...).
Call = Callable[[str], Awaitable[tuple[str | None, str]]]


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Meter:
    """CPU seconds of every process taking part, read at the start and end of a window."""

    def __init__(self, pids: dict[str, int], redis: Any) -> None:
        self.pids, self.redis = pids, redis

    def read(self) -> dict[str, float]:
        cpu = {name: _process_cpu_s(pid) for name, pid in self.pids.items()}
        return {"load_generator": time.process_time(), **cpu, "redis": redis_cpu_s(self.redis)}


class _Tally:
    """Latencies, errors and sources of the requests due inside the measured window."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.sources: dict[str, int] = {}

    def record(self, error: str | None, source: str, latency_s: float) -> None:
        if error is not None:
            self.errors[error] = self.errors.get(error, 0) + 1
        else:
            self.latencies.append(latency_s)
            self.sources[source] = self.sources.get(source, 0) + 1


async def _closed(
    call: Call, users: list[str], clients: int, warmup: float, seconds: float
) -> tuple[_Tally, float]:
    """``clients`` callers, each asking again as soon as it is answered; the tally of the
    requests sent in the window after ``warmup``, and its length."""
    rng, tally = random.Random(0), _Tally()
    measure_from = time.perf_counter() + warmup
    end = measure_from + seconds

    async def caller() -> None:
        while (sent := time.perf_counter()) < end:
            error, source = await call(rng.choice(users))
            if sent >= measure_from:
                tally.record(error, source, time.perf_counter() - sent)

    await asyncio.gather(*(caller() for _ in range(clients)))
    return tally, seconds


async def _open(
    call: Call, users: list[str], rate: float, warmup: float, seconds: float
) -> tuple[_Tally, float]:
    """Poisson arrivals at ``rate``/s, each sent when due whatever is in flight; latency
    runs from the due time, so queueing (and this loop's own lateness) is not hidden."""
    rng, tally = random.Random(0), _Tally()
    start = time.perf_counter()
    measure_from, end = start + warmup, start + warmup + seconds
    in_flight: set[asyncio.Task[None]] = set()

    async def one(user: str, due: float) -> None:
        error, source = await call(user)
        if due >= measure_from:
            tally.record(error, source, time.perf_counter() - due)

    due = start
    while due < end:
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(rng.choice(users), due))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        due += rng.expovariate(rate)
    await asyncio.gather(*in_flight)
    return tally, seconds


async def _measure(
    name: str,
    call: Call,
    users: list[str],
    mode: str,
    amount: float,
    warmup: float,
    seconds: float,
    meter: _Meter,
) -> dict[str, Any]:
    """One load point: closed (``amount`` callers) or open (``amount`` requests/s)."""
    marks: list[dict[str, float]] = []

    async def mark_after_warmup() -> None:
        await asyncio.sleep(warmup)
        marks.append(meter.read())

    marker = asyncio.create_task(mark_after_warmup())
    if mode == "closed":
        tally, window = await _closed(call, users, int(amount), warmup, seconds)
    else:
        tally, window = await _open(call, users, amount, warmup, seconds)
    await marker
    cpu1 = meter.read()
    answered = len(tally.latencies)
    point: dict[str, Any] = {
        "client": name,
        "mode": mode,
        **({"concurrency": int(amount)} if mode == "closed" else {"offered_per_s": amount}),
        "seconds": window,
        "answered": answered,
        "answered_per_s": round(answered / window),
        "latency": percentiles(tally.latencies),
        "errors": tally.errors,
        "sources": tally.sources,
        "cpu_us_per_request": {
            proc: round(1e6 * (cpu1[proc] - marks[0][proc]) / answered, 1) if answered else None
            for proc in cpu1
        },
    }
    print(f"    {name:8s} {mode} {amount:g}: {_line(point)}", flush=True)
    return point


def _line(point: dict[str, Any]) -> str:
    lat = point["latency"]
    if not lat.get("n"):
        return f"no answers, errors {point['errors']}"
    cpu = ", ".join(f"{k} {v:,.0f}" for k, v in point["cpu_us_per_request"].items())
    return (
        f"{point['answered_per_s']:>6,}/s  p50 {lat['p50_us']:,.0f} µs  p99 {lat['p99_us']:,.0f}"
        f" µs  errors {point['errors']}  CPU µs/request: {cpu}"
    )


def _ratios(bare: dict[str, Any], gateway: dict[str, Any]) -> dict[str, float | None]:
    """gateway / bare: throughput and latency percentiles (None: a side answered nothing)."""
    b, g = bare["latency"], gateway["latency"]
    if not (b.get("n") and g.get("n")):
        return {"answered_per_s": None, "p50": None, "p99": None, "added_p50_us": None}
    return {
        "answered_per_s": round(gateway["answered_per_s"] / bare["answered_per_s"], 3),
        "p50": round(g["p50_us"] / b["p50_us"], 2),
        "p99": round(g["p99_us"] / b["p99_us"], 2),
        "added_p50_us": round(g["p50_us"] - b["p50_us"], 1),
    }


class _LeanHTTP:
    """A minimal keep-alive HTTP/1.1 GET client on asyncio streams (a pool of connections,
    one request in flight on each): the gateway's cost without most of httpx's own CPU,
    which on a shared 2-core machine is taken from the gateway it measures."""

    def __init__(self, port: int, timeout_s: float) -> None:
        self.port, self.timeout_s = port, timeout_s
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self, path: str) -> tuple[int, bytes]:
        """(status, body) of ``GET path``. A kept-alive connection the server has closed
        meanwhile (uvicorn closes one idle for 5 s) is dropped and the request sent on the
        next, or a new one, as httpx does; any other failure is the caller's."""
        async with asyncio.timeout(self.timeout_s):
            while self.idle:
                reader, writer = self.idle.pop()
                try:
                    return await self._exchange(reader, writer, path)
                except (asyncio.IncompleteReadError, ConnectionError) as e:
                    writer.close()
                    if isinstance(e, asyncio.IncompleteReadError) and e.partial:
                        raise  # the server had started answering: a real failure
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            return await self._exchange(reader, writer, path)

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
    ) -> tuple[int, bytes]:
        writer.write(b"GET %b HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path.encode())
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length)
        self.idle.append((reader, writer))
        return int(head[9:12]), body

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


def _http_error(status: int, body: bytes) -> str:
    """An error answer's name: its status and the start of the gateway's message."""
    try:
        message = str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = body[:60].decode(errors="replace")
    return f"HTTP {status}: {message[:60]}"


def _start_gateway(env: dict[str, str], port: int, log: Path, args: argparse.Namespace) -> Any:
    """``ledrec gateway`` on ``port`` (under pyinstrument with ``--profile``)."""
    cli = ["-m", "ledrec.cli", "--log-level", args.gateway_log_level, "gateway",
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    if args.profile:
        profile = args.out / "profiles" / f"{NAME}_gateway_process.txt"
        profile.parent.mkdir(parents=True, exist_ok=True)
        # library frames shown (they are where the time goes), frames under 2% left out
        cli = ["-m", "pyinstrument", "--interval", "0.001", "-r", "text", "--no-color",
               "--show-regex", ".*/(fastapi|starlette|uvicorn|h11|redis|pydantic)/.*",
               "-p", "processor_options.filter_threshold=0.02", "-o", str(profile),
               *cli]  # fmt: skip
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, *cli], env=env, stdout=out, stderr=out)


def _wait(check: Callable[[], bool], what: str, procs: list[Any], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise RuntimeError(f"timed out (or a process died) waiting for {what}")
        time.sleep(0.05)


async def _load_points(
    settings: Any, port: int, users: list[str], args: argparse.Namespace, meter: _Meter
) -> dict[str, Any]:
    """Every load point, bare then gateway, against the same scorer."""
    import httpx

    from ledrec.stream.client import AsyncRecommenderClient

    rpc = AsyncRecommenderClient.from_url(
        settings.redis_url,
        timeout_s=settings.request_timeout_s,
        prefix=settings.key_prefix,
        max_queue_length=settings.max_queue_length,
        queues=settings.request_queues,
    )
    http = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        timeout=settings.request_timeout_s + 1.0,
        limits=httpx.Limits(max_connections=max(args.clients, 64), max_keepalive_connections=64),
    )

    async def bare(user: str) -> tuple[str | None, str]:
        try:
            rec = await rpc.request(user_id=user, k=10)
        except Exception as e:  # every failure is counted by its type, none stops the run
            return f"{type(e).__name__}: {str(e)[:60]}", ""
        return None, rec.source

    async def gateway(user: str) -> tuple[str | None, str]:
        try:
            response = await http.get(f"/v1/users/{user}/recommendations?k=10")
        except httpx.HTTPError as e:
            return type(e).__name__, ""
        if response.status_code != 200:
            return _http_error(response.status_code, response.content), ""
        return None, str(response.json()["source"])

    lean = _LeanHTTP(port, settings.request_timeout_s + 1.0)

    async def gateway_lean(user: str) -> tuple[str | None, str]:
        try:
            status, body = await lean.get(f"/v1/users/{user}/recommendations?k=10")
        except (OSError, EOFError, TimeoutError, ValueError) as e:
            return type(e).__name__, ""
        if status != 200:
            return _http_error(status, body), ""
        return None, str(json.loads(body)["source"])

    # httpx last: when it falls behind it can take seconds to drain (see NOTES.md)
    calls: dict[str, Call] = {"bare": bare, "gateway_lean": gateway_lean, "gateway": gateway}
    result: dict[str, Any] = {}
    try:
        for call in calls.values():  # connections opened and code paths warm before any point
            await asyncio.gather(*(call(u) for u in users[: args.clients]))
        loads = [("closed", float(args.clients))] + [("open", float(r)) for r in args.rate]
        for mode, amount in loads:
            key = f"closed_{int(amount)}_clients" if mode == "closed" else f"open_{amount:g}_per_s"
            points = {}
            for name, call in calls.items():
                await asyncio.sleep(SETTLE_S)
                points[name] = await _measure(
                    name, call, users, mode, amount, args.warmup, args.seconds, meter
                )
            ratios = {
                f"{name}_over_bare": _ratios(points["bare"], points[name])
                for name in ("gateway", "gateway_lean")
            }
            result[key] = {**points, **ratios}
    finally:
        await http.aclose()
        lean.close()
        await rpc.aclose()
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ledrec.deploy.stack import free_port
    from ledrec.stream.artifact import save_model
    from ledrec.stream.index import build_index, serialize
    from ledrec.stream.registry import Registry

    with private_stack(kafka=False) as stack:
        settings = bench_settings(stack, key_prefix="gw", request_queue="gw:rpc:requests")
        settings = settings.model_copy(
            update={
                # nothing listens there: the gateway's producer connects only to publish
                "kafka_bootstrap": f"127.0.0.1:{free_port()}",
                "ivf_nprobe": args.nprobe,
                "exact_index_max_items": 0,  # the IVF index built below
            }
        )
        t0 = time.perf_counter()
        _, events = synthetic_world(args.items, args.users, args.users * 30, seed=2)
        model = clustered_model(events, args.items, args.dim, version="gw-v1")
        nlist = max(16, min(1024, args.items // 1000))
        save_model(model, settings.model_store_path, serialize(build_index(model, 0, nlist)))
        client = connect(settings.redis_url)
        registry = Registry(client, settings.key_prefix)
        registry.register(model)
        registry.activate(model.version)
        users = _populate(settings, events, [model], args.users)
        print(f"model ({args.items:,} items, d={args.dim}, nlist {nlist}) and {len(users):,}"
              f" users' states in {time.perf_counter() - t0:.0f}s", flush=True)  # fmt: skip

        env = settings.environment()
        log = stack.home / "processes.log"
        port = free_port()
        with open(log, "ab") as out:
            scorer = subprocess.Popen([sys.executable, "-m", "ledrec.cli", "serve"], env=env,
                                      stdout=out, stderr=out)  # fmt: skip
        gateway = _start_gateway(env, port, log, args)
        procs = [scorer, gateway]
        try:
            _wait(lambda: any(s.get("serving") for s in registry.scorers().values()),
                  "the scorer's heartbeat", procs)  # fmt: skip
            _wait(lambda: _healthy(port), "the gateway's /healthz", procs)
            print(f"scorer (pid {scorer.pid}) and gateway (pid {gateway.pid}, port {port}) up",
                  flush=True)  # fmt: skip
            meter = _Meter({"gateway": gateway.pid, "scorer": scorer.pid}, client)
            points = asyncio.run(_load_points(settings, port, users, args, meter))
        except BaseException:
            print(log.read_text()[-4000:], file=sys.stderr)
            raise
        finally:
            gateway.send_signal(signal.SIGINT)  # uvicorn stops cleanly; pyinstrument writes
            scorer.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        client.close()
    return {
        "what": "requests/s and latency through the HTTP gateway vs the bare RPC, same run,"
        " same scorer",
        "processes": (
            "redis-server; one scorer (ledrec serve, default settings: serve_batch_size 64,"
            f" IVF nlist {nlist} nprobe {args.nprobe}); one gateway (ledrec gateway: FastAPI"
            f" on uvicorn, one worker, log level {args.gateway_log_level}); this process as"
            " the load generator (one asyncio loop): bare = stream.client."
            "AsyncRecommenderClient.request(user_id, k=10), gateway = httpx.AsyncClient GET"
            " /v1/users/{id}/recommendations?k=10 (keep-alive pool, JSON parsed),"
            " gateway_lean = the same GET from a minimal keep-alive HTTP/1.1 client on"
            " asyncio streams (JSON parsed) — all on this machine's cores, shared with other"
            " work"
        ),
        "config": {
            "items": args.items,
            "dim": args.dim,
            "users_with_state": len(users),
            "clients": args.clients,
            "rates": args.rate,
            "seconds_per_point": args.seconds,
            "warmup_s": args.warmup,
            "profiled": args.profile,
        },
        "gateway_libraries": {name: _version(name) for name in GATEWAY_LIBRARIES},
        "points": points,
    }


def _healthy(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--users", type=int, default=2000, help="users with a state in Redis")
    p.add_argument("--nprobe", type=int, default=1, help="as benchmarks.serving serves 10^5")
    p.add_argument("--clients", type=int, default=8, help="closed loop: concurrent callers")
    p.add_argument(
        "--rate", type=float, nargs="*", default=[200.0], help="open loop: Poisson requests/s"
    )
    p.add_argument("--seconds", type=float, default=10.0, help="measured, per load point")
    p.add_argument("--warmup", type=float, default=1.0, help="before each load point")
    p.add_argument(
        "--gateway-log-level", default="INFO", help="the gateway's --log-level (INFO: shipped)"
    )
    p.add_argument("--profile", action="store_true", help="pyinstrument the gateway process")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    result = run(args)
    out = args.out / "profiles" if args.profile else args.out  # figures under a profiler
    print(f"wrote {write_result(NAME, result, out)}")
    return result


if __name__ == "__main__":
    main()
