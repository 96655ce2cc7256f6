"""Serving: latency, throughput, recall and the server-side breakdown through the Redis RPC.

Per catalog size (d=64, clustered model with log-popularity biases):

* recall@10 of the ANN index against exact search on the *same* queries, which are real
  LED queries (means of the item vectors of synthetic users' timelines), per nprobe;
  the smallest nprobe reaching the target serves;
* single-query user-embedding (state read + ``sum / weight``) and kNN times (Table 4);
* one scorer process (``RecommendServer``, faiss at one OpenMP thread) per index kind, and
  load-generator processes, for each client in turn (``--client``): a lean generator
  speaking the RPC's wire protocol on raw sockets (``_LeanLoad``), the sync
  ``RecommenderClient`` (a thread per caller) and the ``AsyncRecommenderClient`` (a task
  per call; ``benchmarks.clients``). Closed loop at N concurrent callers (max throughput)
  and open loop at fixed rates (half, three quarters of and at the 3,200/s target: what
  is queueing and what is the floor), Poisson by default (latency measured from each
  request's due time, so queueing is not hidden);
* per client, on the same load processes and client objects after the open-loop points:
  twice its closed-loop maximum offered (what it answers, every exception it raises),
  then, ``--recovery-s`` later (60 s), normal load again (3,200/s, or half its capacity
  where that is less): does it recover?
* the floor, same run, same load generators: the server's own loop (pop, decode, reply)
  with no state read and no search.

Writes ``serving.json`` (every point) and ``serving_clients.json`` (per client: closed
loop, 3,200/s, its echo floor, the overload and the recovery, ratios to the lean one).

    python -m benchmarks.serving --items 100000 1000000 --seconds 8
    python -m benchmarks.serving --items 100000 --seconds 3 --recovery-s 10   # quick look
    python -m benchmarks.serving --redis-cluster 3   # on a 3-primary Redis Cluster
    python -m benchmarks.cluster                     # single node and cluster, same run

On a cluster the scorer serves every request queue (``Settings.request_queues``; 8 by
default there), and the load generators spread their requests over the queues round
robin, as ``stream.client`` does, each on a connection to the primary owning the queue.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import resource
import select
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.clients import LoadSpec, due_times
from benchmarks.common import (
    RESULTS,
    bench_settings,
    clustered_model,
    connect,
    percentiles,
    pin,
    private_stack,
    redis_cpu_s,
    set_pinning,
    synthetic_world,
    timeline_queries,
    write_result,
)

NAME = "serving"
CLIENTS = {  # --client: how each load generator is described
    "lean": "the lean raw-socket generator (bounded-push script + BLPOP in one round trip,"
    " select loop)",
    "sync": "the sync RecommenderClient (a thread per caller)",
    "asyncio": "the AsyncRecommenderClient (a task per call, multiplexed)",
}
TARGET_RATE = 3200
TARGET_RECALL = 0.95


# --------------------------------------------------------------------------- processes


# --pin: the CPUs of each role (benchmarks.common.pin); a role left out is not pinned.
PINNINGS = {
    "none": {},
    # the scorer alone on one core; Redis and the load generators share the other
    "scorer-alone": {"scorer": "1", "redis": "0", "load": "0"},
    # the load generators (the users: other machines in a deployment) on one core; Redis
    # and the scorer, which hand each request to each other, on the other
    "clients-apart": {"scorer": "1", "redis": "1", "load": "0"},
    "split": {"scorer": "1", "load": "0"},  # Redis wherever the kernel puts it
}


def _echo(settings: Any, stop: Any) -> None:  # child: the floor, no work per request
    """The server's own loop (pop, decode, reply over its connection) with no state read
    and no search: every request gets an empty reply."""
    pin("scorer")
    from ledrec.stream import protocol
    from ledrec.stream.server import RecommendServer

    class EchoServer(RecommendServer):
        def _read_plan(self) -> tuple[str | None, tuple[bytes, ...]]:
            return None, ()  # take requests without their states

        def _states(self, requests: list[Any], read: Any, read_version: Any) -> list[Any]:
            return []

        def _score(self, scorer: Any, requests: list[Any], states: Any) -> list[tuple[str, bytes]]:
            return [(r.reply_to, protocol.encode_reply(r.id, [], "echo", "echo")) for r in requests]

    server = EchoServer(settings, connect(settings.redis_url))
    server.versions.serving = object()  # type: ignore[assignment]  # no model: no work
    while not stop.is_set():
        server.serve_once(block_s=0.2)


def _serve(
    settings: Any, stop: Any, out: Any, profile_path: str
) -> None:  # child: the real scorer, timed
    pin("scorer")

    from ledrec.stream.server import BatchTiming, RecommendServer

    # per batch: n, answer, read, search, score (wall seconds); the whole batch and its
    # reply + take round trip (thread CPU seconds, polling for the next request left out:
    # that is waiting, not work), and when
    batches: list[tuple[int, float, float, float, float, float, float, float]] = []

    def observe(t: BatchTiming) -> None:
        batches.append(
            (t.requests, t.answer_s, t.read_s, t.search_s, t.score_s, t.cpu_s, t.reply_cpu_s,
             t.at)
        )  # fmt: skip

    server = RecommendServer(settings, connect(settings.redis_url), observe=observe)

    def relay() -> None:
        stop.wait()
        server.stop_event.set()

    threading.Thread(target=relay, daemon=True).start()
    profiler = None
    if profile_path:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001)
        profiler.start()
    server.run()
    if profiler is not None:
        profiler.stop()
        Path(profile_path).write_text(profiler.output_text(unicode=True, color=False))
    out.put(batches)


def _pack(*args: bytes) -> bytes:
    """One command in RESP."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


class _LeanLoad:
    """A load generator speaking the RPC's wire protocol on raw sockets, one thread, no
    asyncio: per request, the bounded-push script and the BLOCKing pop of the reply go out
    in one write (one round trip), replies are parsed by hiredis and decoded by the
    library's own ``read_reply``. Same request/reply bytes as ``stream.client``, at a
    fraction of its CPU, so the load generator does not starve the scorer on 2 cores.

    Open loop: request ``n`` of this process is due at ``start + (n + offset) / rate``
    (processes interleave through ``offset``; ``poisson`` draws exponential gaps instead),
    sent when due whatever is in flight, and its latency runs from that due time, so
    neither queueing nor the generator's own lateness is hidden. It waits in ``select``
    on an epoll descriptor: a microsecond timeout (epoll's own is whole milliseconds,
    which sent requests in bursts) and no limit on sockets (an overloaded server leaves
    thousands in flight), with a 1 ns timer slack (the default 50 µs made every send
    ~100 µs late here).

    Waking up costs ~30 µs of CPU on this VM, so a socket reports readable only once
    ``SO_RCVLOWAT`` bytes are in (more than the push's short integer reply, less than any
    recommendation reply): one wakeup per request instead of two. A reply too short to
    wake it (a nil pop after a client timeout) is found by ``expire`` and counted.
    """

    def __init__(self, settings: Any, sha: bytes) -> None:
        from urllib.parse import urlparse

        from benchmarks.common import is_cluster_client

        client = connect(settings.redis_url)
        self.keys = settings.keyspace_of(client)
        # per queue (lane): its name and the address of the server that holds it; requests
        # go to the lanes in turn (round robin, as stream.client spreads them)
        self.lanes: list[tuple[bytes, tuple[str, int]]] = []
        for queue in self.keys.request_queues:
            if is_cluster_client(client):
                node = client.get_node_from_key(queue)
                address = (node.host, int(node.port))
            else:
                url = urlparse(settings.redis_url)
                address = (url.hostname or "127.0.0.1", url.port or 6379)
            self.lanes.append((queue.encode(), address))
        client.close()
        self._turn = 0
        self.settings, self.sha = settings, sha
        self.timeout_s = settings.request_timeout_s
        # each queue holds its share of the deployment's bound, as in stream.client
        self.bound = b"%d" % max(1, -(-settings.max_queue_length // len(self.lanes)))
        self.epoll = select.epoll()
        self.idle: list[list[Any]] = [[] for _ in self.lanes]
        # fd -> (socket, reply reader, replies so far, due time, lane)
        self.busy: dict[int, tuple[Any, Any, list[Any], float, int]] = {}
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.measure_from = self.end = 0.0

    def open(self, n: int) -> None:
        for j in range(max(n, len(self.lanes))):
            lane = j % len(self.lanes)
            self.idle[lane].append(self._connect(lane))

    @property
    def n_idle(self) -> int:
        return sum(len(idle) for idle in self.idle)

    def _connect(self, lane: int) -> Any:
        import socket

        sock = socket.create_connection(self.lanes[lane][1])
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, _REPLY_LOWAT)
        # registered for good (two syscalls fewer per request than per-request
        # registration); an idle socket never turns readable, a closed one leaves the set
        self.epoll.register(sock.fileno(), select.EPOLLIN)
        return sock

    def send(self, user_id: str, due: float) -> None:
        import hiredis

        from ledrec.stream import protocol

        timeout_s = self.timeout_s
        if len(self.busy) >= _MAX_IN_FLIGHT:  # an overload must not exhaust Redis's clients
            if due >= self.measure_from:
                self.errors[_AT_CAP] = self.errors.get(_AT_CAP, 0) + 1
            return
        lane = self._turn % len(self.lanes)
        self._turn += 1
        queue = self.lanes[lane][0]
        req = protocol.new_request(
            self.settings.key_prefix, 10, timeout_s, user_id, None, True, None, self.keys, lane
        )
        idle = self.idle[lane]
        sock = idle.pop() if idle else self._connect(lane)
        sock.sendall(
            _pack(b"EVALSHA", self.sha, b"1", queue, protocol.encode_request(req), self.bound)
            + _pack(b"BLPOP", req.reply_to.encode(), b"%d" % max(1, round(timeout_s)))
        )
        self.busy[sock.fileno()] = (sock, hiredis.Reader(), [], due, lane)

    def poll(self, timeout: float) -> None:
        """Wait up to ``timeout`` for replies; record every request they complete."""
        from ledrec.stream.client import Overloaded, RecommendError, Timeout, read_reply

        if not self.busy:
            time.sleep(timeout)
            return
        if not select.select([self.epoll], [], [], timeout)[0]:
            return
        for fd, _ in self.epoll.poll(0):
            sock, reader, replies, due, lane = self.busy[fd]
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("redis closed the connection")
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                replies.append(reply)
            if len(replies) < 2:
                continue
            self._done(fd)
            self.idle[lane].append(sock)
            pushed, raw = replies
            error = None
            try:
                if pushed == -1:
                    raise Overloaded("request queue is full")
                if raw is None:
                    raise Timeout(f"no reply within {self.timeout_s}s")
                read_reply(raw[1])
            except RecommendError as e:
                error = type(e).__name__
            if due < self.measure_from:
                continue
            if error is not None:
                self.errors[error] = self.errors.get(error, 0) + 1
            else:
                self.latencies.append(time.time() - due)

    def _done(self, fd: int) -> None:
        del self.busy[fd]

    def expire(self) -> None:
        """Count and drop the requests with no complete reply a second past their timeout."""
        late = time.time() - self.timeout_s - 1.0
        for fd, (sock, _, _, due, _) in list(self.busy.items()):
            if due < late:
                self._done(fd)
                sock.close()  # its reply (if any) was too short to wake us: start afresh
                if due >= self.measure_from:
                    self.errors["Timeout"] = self.errors.get("Timeout", 0) + 1

    def close(self) -> None:
        for sock in [*(s for idle in self.idle for s in idle), *(e[0] for e in self.busy.values())]:
            sock.close()
        self.epoll.close()


# Requests in flight per load process, at most (2x capacity offered leaves rate x timeout
# in flight, each on a socket: far past redis-server's 10,000 clients); a request due
# beyond it is not sent, and counted.
_MAX_IN_FLIGHT = 4096
_AT_CAP = "unsent (lean generator at its in-flight cap)"

# An answered request's two replies (":<queue length>" then a BLPOP array holding the key
# and a msgpack reply with id, version and source) are well over 64 bytes; an overloaded
# push (":-1", 5 bytes) or a timed-out pop ("*-1", 5 bytes) alone never reach it.
_REPLY_LOWAT = 64


def _fine_timer_slack() -> None:
    """Ask Linux for 1 ns timer slack (PR_SET_TIMERSLACK): sends leave when due."""
    import ctypes
    import sys

    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(29, 1, 0, 0, 0)


def _lean_load(settings: Any, users: list[str], spec: LoadSpec) -> dict[str, Any]:
    mode, concurrency, rate, start_at = spec.mode, spec.concurrency, spec.rate, spec.start_at
    warmup, seconds = spec.warmup, spec.seconds
    from ledrec.stream.protocol import ENQUEUE_SCRIPT

    _fine_timer_slack()
    client = connect(settings.redis_url)
    sha = client.script_load(ENQUEUE_SCRIPT)  # on a cluster: on every primary
    sha = (sha if isinstance(sha, str) else next(iter(sha.values()))).encode()
    client.close()
    load = _LeanLoad(settings, sha)
    load.measure_from, load.end = start_at + warmup, start_at + warmup + seconds
    load.open(concurrency if mode == "closed" else 64)  # connects are not requests
    rng = random.Random()
    while time.time() < start_at:
        time.sleep(0.001)
    cpu0 = time.process_time()
    sys0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    if mode == "closed":
        for _ in range(concurrency):
            load.send(rng.choice(users), time.time())
        while time.time() < load.end:
            before = len(load.busy)  # == concurrency: at most that many ever in flight
            load.poll(0.05)
            load.expire()
            for _ in range(before - len(load.busy)):  # each answered client asks again
                load.send(rng.choice(users), time.time())
    else:
        dues = due_times(spec, rate, rng, spec.offset)
        due = next(dues, None)
        while due is not None:
            now = time.time()
            while due is not None and due <= now:
                load.send(rng.choice(users), due)
                due = next(dues, None)
            load.poll(max(0.0, (due or now) - time.time()))
            load.expire()
    # every reply comes within its BLPOP timeout
    unanswered_by = time.time() + load.timeout_s + 3.0
    while load.busy and time.time() < unanswered_by:
        load.poll(0.05)
        load.expire()
    cpu = time.process_time() - cpu0
    kernel = resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys0
    if load.busy:
        load.errors["unanswered"] = len(load.busy)
    load.close()
    return {"latencies": load.latencies, "errors": load.errors, "cpu_s": cpu, "sys_s": kernel}


def _load(
    settings: Any,
    users: list[str],
    specs: list[LoadSpec],
    client_kind: str,
    out: Any,
    barrier: Any,
    start: Any,
    first: bool,
) -> None:  # child: a load generator (lean RPC client, or one of the library clients)
    """Run ``specs`` in turn, together with the other load processes (``synchronized``),
    on one library client, so what an overload leaves behind shows in the next point.
    The ``first`` process also measures redis-server's CPU over each measured window."""
    from benchmarks.clients import drive, synchronized

    pin("load")
    started: list[LoadSpec] = []
    redis_cpu: list[dict[str, float]] = []
    samplers: list[threading.Thread] = []

    def sampled() -> Any:
        for spec in synchronized(specs, barrier, start, started):
            if first:
                redis_cpu.append({})
                window = (settings.redis_url, spec.measure_from, spec.end, redis_cpu[-1])
                samplers.append(threading.Thread(target=_redis_cpu_between, args=window))
                samplers[-1].start()
            yield spec

    if client_kind == "lean":
        results = [_lean_load(settings, users, spec) for spec in sampled()]
    else:
        results = drive(client_kind, settings, users, sampled())
    for t in samplers:
        t.join(10)
    for j, (r, spec) in enumerate(zip(results, started, strict=True)):
        r["window"] = [spec.measure_from, spec.end]
        if first:
            r["redis_cpu_s"] = redis_cpu[j].get("s", 0.0)
    out.put(results)


def _redis_cpu_between(url: str, start: float, end: float, out: dict[str, float]) -> None:
    """redis-server's CPU seconds (user + sys) between epoch times ``start`` and ``end``
    (summed over a cluster's primaries)."""
    client = connect(url)
    time.sleep(max(0.0, start - time.time()))
    before = redis_cpu_s(client)
    time.sleep(max(0.0, end - time.time()))
    out["s"] = redis_cpu_s(client) - before
    client.close()


@dataclass(frozen=True)
class Point:
    """A load point: closed loop at ``total`` callers or open loop at ``total`` requests/s,
    ``pause_s`` after the one before it in its sequence (the processes stay up)."""

    mode: str
    total: float
    pause_s: float = 0.0


def _run_load(
    settings: Any,
    users: list[str],
    mode: str,
    total: int,
    procs: int,
    seconds: float,
    client_kind: str,
    arrivals: str = "uniform",
    threads: int = 64,
) -> dict[str, Any]:
    """Run ``procs`` load generators; ``total`` = concurrency (closed) or req/s (open)."""
    point = Point(mode, total)
    return _run_loads(settings, users, [point], procs, seconds, client_kind, arrivals, threads)[0]


def _run_loads(
    settings: Any,
    users: list[str],
    points: list[Point],
    procs: int,
    seconds: float,
    client_kind: str,
    arrivals: str = "poisson",
    threads: int = 64,
) -> list[dict[str, Any]]:
    """Run ``points`` in turn on the same ``procs`` load-generator processes (and, for a
    library client, the same client objects), each point once all have ended the last."""
    ctx = mp.get_context("spawn")
    out, barrier, start = ctx.Queue(), ctx.Barrier(procs), ctx.Value("d", 0.0)
    specs = [
        [
            LoadSpec(
                p.mode,
                max(1, int(p.total) // procs),
                p.total / procs,
                i / procs,  # open loop: the processes' arrivals interleave
                arrivals,
                0.0,  # set when every process is ready (clients.synchronized)
                1.0,  # warmup
                seconds,
                threads,
                p.pause_s,
            )
            for p in points
        ]
        for i in range(procs)
    ]
    children = [
        ctx.Process(
            target=_load,
            args=(settings, users, specs[i], client_kind, out, barrier, start, i == 0),
            daemon=True,  # none outlives the benchmark, even interrupted
        )
        for i in range(procs)
    ]
    for c in children:
        c.start()
    # bounded: spawning, then each point, its pause and its drain (a call ends by its timeout)
    budget = 120 + sum(p.pause_s + seconds + settings.request_timeout_s + 10 for p in points)
    per_child = sorted(
        (out.get(timeout=budget) for _ in children), key=lambda r: "redis_cpu_s" not in r[0]
    )
    for c in children:
        c.join(10)
    return [
        _merge([child[j] for child in per_child], point, seconds, procs, client_kind, arrivals)
        for j, point in enumerate(points)
    ]


def _merge(
    results: list[dict[str, Any]],
    point: Point,
    seconds: float,
    procs: int,
    client_kind: str,
    arrivals: str,
) -> dict[str, Any]:
    """One load point's figures from its load processes' raw results (the first's with
    redis-server's CPU)."""
    redis_cpu = results[0]["redis_cpu_s"]
    lat = np.concatenate([np.asarray(r["latencies"]) for r in results])
    errors: dict[str, int] = {}
    undocumented: dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
        for k, v in r.get("undocumented", {}).items():
            undocumented[k] = undocumented.get(k, 0) + v
    cpu = sum(r["cpu_s"] for r in results)
    kernel = sum(r.get("sys_s", 0.0) for r in results)
    total = int(point.total) if point.total == int(point.total) else round(point.total)
    return {
        "load_generator_cpu_us_per_request": round(1e6 * cpu / max(1, lat.size), 1),
        **(
            {"load_generator_kernel_cpu_us_per_request": round(1e6 * kernel / max(1, lat.size), 1)}
            if client_kind == "lean"
            else {}
        ),
        # redis-server's CPU over the measured window, per request answered in it
        "redis_cpu_us_per_request": round(1e6 * redis_cpu / max(1, lat.size), 1),
        "mode": point.mode,
        ("concurrency" if point.mode == "closed" else "offered_per_s"): total,
        "load_processes": procs,
        "client": client_kind,
        **({"arrivals": arrivals} if point.mode == "open" else {}),
        "window": results[0]["window"],
        "answered_per_s": round(lat.size / seconds),
        "errors": errors,
        **({"undocumented": undocumented} if undocumented else {}),
        "latency": percentiles(lat),
    }


# --------------------------------------------------------------------------- measurements


def _recall_sweep(
    model: Any, index: Any, queries: Any, nprobes: list[int]
) -> tuple[list[dict[str, Any]], Any]:
    import faiss

    from ledrec.stream.index import augmented, set_nprobe

    x = np.hstack([queries, np.ones((len(queries), 1), np.float32)])
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(augmented(model))
    faiss.omp_set_num_threads(2)
    _, truth = flat.search(x, 10)
    faiss.omp_set_num_threads(1)
    exact_t = []
    for j in range(min(50, len(x))):
        t0 = time.perf_counter()
        flat.search(x[j : j + 1], 10)
        exact_t.append(time.perf_counter() - t0)
    sweep = []
    for nprobe in nprobes:
        set_nprobe(index, nprobe)
        found = np.empty_like(truth)
        times = []
        for j in range(len(x)):
            t0 = time.perf_counter()
            _, found[j : j + 1] = index.search(x[j : j + 1], 10)
            times.append(time.perf_counter() - t0)
        recall = float(
            np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, found, strict=True)])
        )
        sweep.append({"nprobe": nprobe, "recall_at_10": round(recall, 4),
                      "search_1_query": percentiles(times)})  # fmt: skip
    return sweep, {"exact_search_1_query": percentiles(exact_t)}


def _table4(settings: Any, model: Any, index: Any, users: list[str], nprobe: int) -> dict[str, Any]:
    """Single-request user-embedding and kNN times, in this process, one thread."""
    from ledrec.stream.loaded_model import LoadedModel, Query
    from ledrec.stream.state import UserStateStore

    client = connect(settings.redis_url)
    store = UserStateStore(client, settings.key_prefix, settings.timeline_max, 3600)
    scorer = LoadedModel(model, settings.exact_index_max_items, nprobe, index=index)
    rng = random.Random(0)
    enc, knn, topk = [], [], []
    for _ in range(500):
        t0 = time.perf_counter()
        state = store.read_many([rng.choice(users)], [model.version])[0]
        assert state is not None
        u = scorer.encode_sum(state.sums[model.version], state.weights[model.version])
        t1 = time.perf_counter()
        seen = frozenset(i for i, _ in state.timeline)
        x = np.append(u, np.float32(1.0))[None, :]
        t2 = time.perf_counter()
        index.search(x, 10 + len(seen))
        t3 = time.perf_counter()
        scorer.top_k([Query(u, seen, 10)])
        t4 = time.perf_counter()
        enc.append(t1 - t0)
        knn.append(t3 - t2)
        topk.append(t4 - t3)
    client.close()
    return {
        "user_embedding_incl_state_read": percentiles(enc),
        "knn_search_k_plus_seen": percentiles(knn),
        "top_k_incl_seen_filter": percentiles(topk),
    }


def _server_breakdown(
    batches: list[tuple[int, float, float, float, float, float, float, float]],
    window: tuple[float, float] = (-np.inf, np.inf),
) -> dict[str, Any]:
    a = np.asarray(batches, dtype=np.float64).reshape(-1, 8)
    a = a[(a[:, 7] >= window[0]) & (a[:, 7] <= window[1])]
    if not a.size:
        return {}
    n = a[:, 0]
    per = {
        "total": (a[:, 1] + a[:, 6]) / n,
        "state_read": a[:, 2] / n,
        "search_top_k": a[:, 3] / n,
        "encode_other": (a[:, 4] - a[:, 2] - a[:, 3]) / n,
        "decode_and_reply": (a[:, 1] - a[:, 4] + a[:, 6]) / n,
        "reply_and_pop_thread_cpu": a[:, 6] / n,
        "total_thread_cpu": a[:, 5] / n,
    }
    return {
        "how": "wall per request, except the reply + next-pop round trip (its wall includes"
        " waiting for the next request): its thread CPU is counted in decode_and_reply and"
        " total; total_thread_cpu is all of serve_once, pops included",
        "batches": int(n.size),
        "requests": int(n.sum()),
        "batch_size_mean": round(float(n.mean()), 2),
        "batch_size_p99": float(np.percentile(n, 99)),
        "per_request_amortised": {k: percentiles(v) for k, v in per.items()},
        "batch_total": percentiles(a[:, 1] + a[:, 6]),
        # CPU per request falls with the batch size: compare runs at equal batch sizes
        "thread_cpu_us_per_request_by_batch_size": {
            f"{lo}-{hi}" if hi > lo else f"{lo}": round(
                1e6 * float(a[sel, 5].sum() / n[sel].sum()), 1
            )
            for lo, hi in ((1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (17, 64))
            if (sel := (n >= lo) & (n <= hi)).any()
        },
    }


def _with_server(
    settings: Any, kind: str, fn: Any, profile_path: str = ""
) -> tuple[Any, dict[str, Any]]:
    """Start the scorer (or the echo floor), wait until it answers, run ``fn``, stop it."""
    from ledrec.stream.client import RecommenderClient, RecommendError

    ctx = mp.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    target = _echo if kind == "echo" else _serve
    args = (settings, stop) if kind == "echo" else (settings, stop, out, profile_path)
    child = ctx.Process(target=target, args=args, daemon=True)  # gone with us, even on errors
    child.start()
    client = RecommenderClient.from_url(
        settings.redis_url,
        queue=settings.request_queue,
        prefix=settings.key_prefix,
        queues=settings.request_queues,
    )
    deadline = time.time() + 180
    while True:
        try:
            client.request(user_id="warm", k=10, timeout_s=1.0)
            break
        except RecommendError:
            if time.time() > deadline or not child.is_alive():
                stop.set()
                raise RuntimeError(f"{kind} server did not answer") from None
    try:
        result = fn()
    finally:
        stop.set()
    batches = out.get(timeout=60) if kind != "echo" else []
    child.join(20)
    for point in result:  # the scorer's figures during each load point's measured window
        point["server"] = _server_breakdown(batches, point.pop("window"))
    return result, _server_breakdown(batches)


def _populate(settings: Any, events: Any, models: list[Any], n_users: int) -> list[str]:
    """Apply the world's events of the first ``n_users`` users to their Redis states."""
    from ledrec.stream.state import StateWriter, TimelineEvent, UserStateStore
    from ledrec.training.synthetic import EVENT_TYPES

    client = connect(settings.redis_url)
    store = UserStateStore(client, settings.key_prefix, settings.timeline_max, 24 * 3600)
    keep = events.user < n_users
    users, items, kinds = events.user[keep].tolist(), events.item[keep].tolist(), events.kind[keep]
    weights = [settings.event_weights[EVENT_TYPES[k]] for k in kinds.tolist()]
    chunk = 20_000
    for lo in range(0, len(users), chunk):
        by_user: dict[str, list[TimelineEvent]] = {}
        for off in range(lo, min(lo + chunk, len(users))):
            by_user.setdefault(f"u{users[off]}", []).append(
                TimelineEvent(0, off, f"i{items[off]}", weights[off])
            )
        StateWriter(store).apply(by_user, models)
    client.close()
    return sorted({f"u{u}" for u in users})


def run_size(stack: Any, args: argparse.Namespace, n_items: int) -> dict[str, Any]:
    from ledrec.stream.artifact import save_model
    from ledrec.stream.index import build_index, serialize
    from ledrec.stream.registry import Registry

    tag = f"i{n_items}"
    settings = bench_settings(stack, key_prefix=f"s{tag}", request_queue=f"s{tag}:rpc:requests")
    settings = settings.model_copy(
        update={
            "serve_batch_size": args.batch_size,
            "serve_spin_us": args.spin_us,
            "request_queues": args.request_queues,
        }
    )
    t0 = time.perf_counter()
    _, events = synthetic_world(n_items, args.users, args.users * 30, seed=2)
    model = clustered_model(events, n_items, args.dim)
    queries, _ = timeline_queries(events, model, args.queries, settings.timeline_max)
    nlist = args.nlist or max(16, min(1024, n_items // 1000))
    index = build_index(model, 0, nlist=nlist)
    build_s = time.perf_counter() - t0
    sweep, exact_single = _recall_sweep(model, index, queries, args.nprobes)
    ok = [s for s in sweep if s["recall_at_10"] >= TARGET_RECALL]
    nprobe = ok[0]["nprobe"] if ok else sweep[-1]["nprobe"]
    print(f"  {n_items:>9,} items: built in {build_s:.0f}s; recall@10 "
          + ", ".join(f"nprobe {s['nprobe']}: {s['recall_at_10']}" for s in sweep)
          + f" -> nprobe {nprobe}", flush=True)  # fmt: skip

    client = connect(settings.redis_url)
    pin("redis", stack.redis_pids)
    registry = Registry(client, settings.key_prefix)
    versions = {}
    for kind in ("exact", "ivf"):
        m = clustered_model(events, n_items, args.dim, version=f"{tag}-{kind}")
        save_model(m, settings.model_store_path, serialize(index) if kind == "ivf" else None)
        registry.register(m)
        registry.set_state(m.version, "warming")
        versions[kind] = m
    users = _populate(settings, events, list(versions.values()), args.users)
    table4 = _table4(settings, versions["ivf"], index, users, nprobe)

    runs: dict[str, Any] = {}
    kinds = ["echo", "ivf", "exact"] if n_items <= args.exact_max_items_served else ["echo", "ivf"]
    for kind in kinds:
        s = settings.model_copy(
            update={"ivf_nprobe": nprobe, "exact_index_max_items": 10**9 if kind == "exact" else 0}
        )
        if kind != "echo":  # only the served version live: scorers prepare every live one
            registry.activate(versions[kind].version)
            for other, m in versions.items():
                if other != kind:
                    registry.set_state(m.version, "retired")

        def loads(s: Any = s, kind: str = kind) -> list[dict[str, Any]]:
            clients = args.client if kind != "exact" else args.client[:1]

            def run(who: str, seq: list[Point], turn: int = 0) -> list[dict[str, Any]]:
                got = _run_loads(
                    s, users, seq, args.procs, args.seconds, who, args.arrivals, args.sync_threads
                )
                for p in got:
                    p["round"] = turn
                    load = f"closed {p['concurrency']:3d} callers" if p["mode"] == "closed" \
                        else f"open {p['offered_per_s']}/s"  # fmt: skip
                    print(f"    {kind:5s} {who:7s} {load}: {_line(p)}", flush=True)
                return got

            # The clients take turns at each point, for --rounds rounds: a machine whose
            # load drifts (a shared one) shifts them alike, and the medians over rounds
            # are what compare.
            points: list[dict[str, Any]] = []
            for turn in range(args.rounds):
                for c in args.clients:
                    points += [run(who, [Point("closed", c)], turn)[0] for who in clients]
            closed_max = {
                who: max((p["answered_per_s"] for p in points if p["client"] == who), default=0)
                for who in clients
            }
            for turn in range(args.rounds):
                for rate in args.rate:
                    for who in clients:
                        if kind != "exact" or closed_max[who] > rate:  # else: all time out
                            points += run(who, [Point("open", rate)], turn)
            if kind != "ivf" or args.recovery_s < 0:
                return points
            for who in clients:  # normal load, twice the client's capacity, normal again
                # normal: the target rate, or half the capacity where that is less (a loaded
                # machine): past capacity the recovery could not show
                normal = min(max(args.rate), closed_max[who] // 2)
                seq = [
                    Point("open", normal),
                    Point("open", 2 * closed_max[who]),
                    Point("open", normal, args.recovery_s),
                ]
                before, over, after = run(who, seq) if closed_max[who] else ({}, {}, {})
                before["phase"], over["phase"], after["phase"] = "before", "overload", "after"
                after["recovery_wait_s"] = args.recovery_s
                points += [p for p in (before, over, after) if "client" in p]
            return points

        profile = str(args.out / f"serving_profile_{tag}_{kind}.txt") if args.profile else ""
        points, breakdown = _with_server(s, kind, loads, profile)
        runs[kind] = {"load": [p for p in points if "phase" not in p], "server": breakdown}
        if any("phase" in p for p in points):
            runs[kind]["overload"] = _overload_by_client(points)
    client.close()
    return {
        "redis": stack.kind,
        "request_queues": settings.keyspace_of(client).queue_count,
        "items": n_items,
        "dim": args.dim,
        "users_with_state": len(users),
        "index": {
            "kind": "HeadTailIndex: IVFFlat(IP) + an always-probed list of the 2,048"
            " highest-bias items",
            "nlist": nlist,
            "nprobe_served": nprobe,
            "build_seconds_incl_model": round(build_s, 1),
            "recall_queries": len(queries),
            "recall_sweep": sweep,
            **exact_single,
        },
        "table4_single_request": table4,
        "runs": runs,
    }


def _overload_by_client(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Per client: normal load before, twice its capacity, normal load again after a wait."""
    out: dict[str, Any] = {}
    for p in points:
        if "phase" in p:
            out.setdefault(p["client"], {})[p["phase"]] = p
    return out


def clients_digest(size: dict[str, Any], rate: int = TARGET_RATE) -> dict[str, Any]:
    """Per client (lean generator, sync, asyncio), from one size's runs: closed-loop
    throughput, the open loop at ``rate``, the echo floor measured through the same client,
    the overload point and the recovery, and the ratios to the lean generator."""
    from benchmarks.clients import DOCUMENTED

    def brief(ps: list[dict[str, Any]]) -> dict[str, Any]:
        """A point's figures: medians over its rounds (and each round's), errors summed."""
        if not ps:  # not run (exact search past what it sustains)
            return {}
        each = [
            {
                "answered_per_s": p["answered_per_s"],
                "p50_us": p["latency"].get("p50_us"),
                "p99_us": p["latency"].get("p99_us"),
            }
            for p in ps
        ]
        errors: dict[str, int] = {}
        for p in ps:
            for k, v in p["errors"].items():
                errors[k] = errors.get(k, 0) + v

        def median(key: str) -> float | None:
            got = [e[key] for e in each if e[key] is not None]
            return round(float(np.median(got)), 1) if got else None

        out: dict[str, Any] = {key: median(key) for key in ("answered_per_s", "p50_us", "p99_us")}
        out["errors"] = errors
        if len(each) > 1:
            out["rounds"] = each
        return out

    def of(kind: str, who: str, mode: str, total: int | None = None) -> list[dict[str, Any]]:
        load = size["runs"].get(kind, {}).get("load", [])
        return [
            p
            for p in load
            if p["client"] == who
            and p["mode"] == mode
            and total in (None, p.get("concurrency", p.get("offered_per_s")))
        ]

    def closed_loop(kind: str, who: str) -> dict[str, Any]:
        callers = dict.fromkeys(p["concurrency"] for p in of(kind, who, "closed"))
        return {str(c): brief(of(kind, who, "closed", c)) for c in callers}

    clients: dict[str, Any] = {}
    for who in dict.fromkeys(p["client"] for p in size["runs"]["ivf"]["load"]):
        closed = closed_loop("ivf", who)
        entry: dict[str, Any] = {
            "closed_loop": closed,
            "closed_loop_max_per_s": max((c["answered_per_s"] for c in closed.values()), default=0),
            f"open_{rate}": brief(of("ivf", who, "open", rate)),
            "echo_floor": {
                "closed_loop": closed_loop("echo", who),
                f"open_{rate}": brief(of("echo", who, "open", rate)),
            },
        }
        over = size["runs"]["ivf"].get("overload", {}).get(who)
        if over:
            seen = {**over["overload"]["errors"], **over["after"]["errors"]}
            p50s = [over[k]["latency"].get("p50_us") for k in ("before", "after")]
            entry["overload"] = {
                "offered_per_s": over["overload"]["offered_per_s"],
                "answered_per_s": over["overload"]["answered_per_s"],
                "p50_us": over["overload"]["latency"].get("p50_us"),
                "errors": over["overload"]["errors"],
                "undocumented": over["overload"].get("undocumented", {}),
                # the lean generator's own bookkeeping ("unsent...", "unanswered") aside
                "only_documented_errors": all(
                    e in DOCUMENTED or e.startswith("unsent") for e in seen
                ),
            }
            entry["recovery"] = {
                "normal_per_s": over["after"]["offered_per_s"],
                "wait_s": over["after"]["recovery_wait_s"],
                "p50_before_us": p50s[0],
                "p50_after_us": p50s[1],
                "answered_per_s_before_after": [
                    over[k]["answered_per_s"] for k in ("before", "after")
                ],
                "errors_after": over["after"]["errors"],
                "p50_after_over_before": round(p50s[1] / p50s[0], 2) if all(p50s) else None,
                "within_20_percent": bool(all(p50s) and p50s[1] <= 1.2 * p50s[0]),
            }
        clients[who] = entry

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a and b else None

    lean = clients.get("lean")
    for who, entry in clients.items():
        here, floor = entry[f"open_{rate}"] or {}, entry["echo_floor"][f"open_{rate}"] or {}
        entry["p50_over_echo_floor"] = ratio(here.get("p50_us"), floor.get("p50_us"))
        entry["p99_minus_echo_floor_us"] = (
            round(here["p99_us"] - floor["p99_us"], 1)
            if here.get("p99_us") and floor.get("p99_us")
            else None
        )
        if lean and who != "lean":
            entry["vs_lean"] = _vs_lean(size, who, rate)
            # the no-work echo: the clients' own costs, whatever the scorer sustains
            entry["vs_lean_on_echo_floor"] = _vs_lean(size, who, rate, "echo")
    targets: dict[str, Any] = {}
    if lean and "asyncio" in clients:
        vs = clients["asyncio"]["vs_lean"]
        closed, p50 = vs["closed_loop_max"], vs[f"p50_at_{rate}"]
        targets = {
            "asyncio_closed_loop_at_least_0.8x_lean": closed is not None and closed >= 0.8,
            # None: no round where both sustained the rate (past the scorer's capacity)
            "asyncio_p50_at_most_1.5x_lean": None if p50 is None else p50 <= 1.5,
        }
    return {"items": size["items"], "clients": clients, "targets": targets}


def _vs_lean(size: dict[str, Any], who: str, rate: int, kind: str = "ivf") -> dict[str, Any]:
    """``who``'s figures over the lean generator's, round by round (the clients took turns
    within each round, so a round compares them under about the same machine load), and
    the median over rounds. Latencies only from rounds where the scorer's capacity (the
    lean closed loop) reached ``rate`` and both clients answered it in full."""
    load = size["runs"][kind]["load"]

    def point(client: str, mode: str, turn: int, total: int) -> dict[str, Any] | None:
        key = "concurrency" if mode == "closed" else "offered_per_s"
        return next(
            (
                p
                for p in load
                if p["client"] == client
                and p["mode"] == mode
                and p.get("round", 0) == turn
                and p[key] == total
            ),
            None,
        )

    def sustained(p: dict[str, Any] | None) -> bool:
        return bool(p and p["answered_per_s"] >= 0.95 * rate and not p["errors"])

    rounds = sorted({p.get("round", 0) for p in load})
    callers = sorted({p["concurrency"] for p in load if p["mode"] == "closed"})
    per_round: list[dict[str, Any]] = []
    for turn in rounds:
        row: dict[str, Any] = {"round": turn}
        mine = [point(who, "closed", turn, c) for c in callers]
        lean = [point("lean", "closed", turn, c) for c in callers]
        top = [max((p["answered_per_s"] for p in ps if p), default=0) for ps in (mine, lean)]
        row["closed_loop_max"] = round(top[0] / top[1], 2) if top[1] else None
        here, there = point(who, "open", turn, rate), point("lean", "open", turn, rate)
        # past the scorer's capacity (the lean generator's closed loop this round) a p50 is
        # the length of the queue, not the client's cost
        if here and there and top[1] >= rate and sustained(here) and sustained(there):
            for q in ("p50", "p99"):
                a, b = here["latency"][f"{q}_us"], there["latency"][f"{q}_us"]
                row[f"{q}_at_{rate}"] = round(a / b, 2)
        per_round.append(row)

    def median(key: str) -> float | None:
        got = [r[key] for r in per_round if r.get(key) is not None]
        return round(float(np.median(got)), 2) if got else None

    return {
        "how": "per round (the clients take turns within one), then the median over rounds;"
        f" latencies only from rounds where the lean closed loop reached {rate}/s and both"
        f" answered {rate}/s in full",
        "closed_loop_max": median("closed_loop_max"),
        f"p50_at_{rate}": median(f"p50_at_{rate}"),
        f"p99_at_{rate}": median(f"p99_at_{rate}"),
        "rounds": per_round,
    }


def _line(point: dict[str, Any]) -> str:
    lat = point["latency"]
    if not lat.get("n"):
        return f"no answers, errors {point['errors']}"
    return (
        f"{point['answered_per_s']:>6,}/s  p50 {lat['p50_us']:,.0f} µs  p99 {lat['p99_us']:,.0f}"
        f" µs  p99.9 {lat['p999_us']:,.0f} µs  errors {point['errors']}"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--users", type=int, default=5000, help="users with a state in Redis")
    p.add_argument("--queries", type=int, default=300, help="recall queries")
    p.add_argument("--nlist", type=int, default=0, help="default: items / 1000, in [16, 1024]")
    p.add_argument("--nprobes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--seconds", type=float, default=8.0, help="per load point")
    p.add_argument("--clients", type=int, nargs="+", default=[4, 16])
    p.add_argument(
        "--rate",
        type=int,
        nargs="+",
        default=[TARGET_RATE // 2, 3 * TARGET_RATE // 4, TARGET_RATE],
        help="open-loop requests/s, one load point each (below the target: how p99 falls"
        " with load, i.e. what is queueing and what is the floor's own tail)",
    )
    p.add_argument("--procs", type=int, default=2, help="load-generator processes")
    p.add_argument(
        "--client",
        nargs="+",
        choices=[*CLIENTS, "library"],
        default=list(CLIENTS),
        help="load generators, each through every load point in turn: the lean raw-socket"
        " RPC client, the sync RecommenderClient (threads), the AsyncRecommenderClient"
        " (library: the asyncio one)",
    )
    p.add_argument(
        "--arrivals",
        choices=["uniform", "poisson"],
        default="poisson",
        help="open loop: a Poisson process, or evenly spaced requests of the same rate"
        " (they understate queueing)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="the closed-loop and open-loop points this many times, the clients taking turns"
        " at each (serving_clients.json compares their medians)",
    )
    p.add_argument(
        "--sync-threads",
        type=int,
        default=64,
        help="sync client, open loop: caller threads per load process (its pool's size)",
    )
    p.add_argument(
        "--recovery-s",
        type=float,
        default=60.0,
        help="after the open-loop points, each client offers twice its closed-loop maximum,"
        " then, this long later, normal load again (the top --rate, or half the closed-loop"
        " maximum where that is less; the issue's one minute); < 0: skip",
    )
    p.add_argument("--batch-size", type=int, default=64, help="scorer's serve_batch_size")
    p.add_argument(
        "--spin-us",
        type=int,
        default=0,
        help="scorer's serve_spin_us (poll before sleeping; give it a core: --pin scorer-alone)",
    )
    p.add_argument("--exact-max-items-served", type=int, default=10**6)
    p.add_argument("--profile", action="store_true", help="pyinstrument the scorer process")
    p.add_argument(
        "--pin",
        choices=sorted(PINNINGS),
        default="none",
        help="CPU affinity of the scorer, redis-server and the load generators",
    )
    p.add_argument(
        "--request-queues",
        type=int,
        default=0,
        help="Settings.request_queues (0: the default, 1 on one Redis and 8 on a cluster)",
    )
    p.add_argument(
        "--redis-cluster",
        type=int,
        default=0,
        metavar="N",
        help="run on a local Redis Cluster of N (>= 3) primaries instead of one redis-server",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--digest",
        type=Path,
        help="only rewrite serving_clients.json (in --out) from this serving.json",
    )
    args = p.parse_args(argv)
    if args.digest:
        args.out.mkdir(parents=True, exist_ok=True)
        write_clients(json.loads(args.digest.read_text()), args.out)
        return {}
    args.client = list(dict.fromkeys("asyncio" if c == "library" else c for c in args.client))
    args.out.mkdir(parents=True, exist_ok=True)
    set_pinning(PINNINGS[args.pin], ("scorer", "redis", "load"))
    sizes = []
    with private_stack(kafka=False, redis_cluster=args.redis_cluster) as stack:
        for n_items in args.items:
            sizes.append(run_size(stack, args, n_items))
    result = {
        "what": "end-to-end latency/throughput through the Redis RPC, recall, breakdown",
        "redis": "single" if not args.redis_cluster else f"cluster-{args.redis_cluster}",
        "processes": (
            f"redis-server; one scorer process (RecommendServer, faiss OpenMP 1 thread, "
            f"serve_batch_size {args.batch_size}, "
            + (
                f"polling its socket up to {args.spin_us} µs before it sleeps"
                if args.spin_us
                else "sleeping while it waits for requests"
            )
            + f"); {args.procs} load-generator processes per point, for each of "
            + ", ".join(CLIENTS[c] for c in args.client)
            + f" in turn (open loop: {args.arrivals} arrivals); the floor is the server's own"
            " loop with no state read and no search (an echo), through the same load"
            " generators — all on this machine's 2 cores"
        ),
        "pinning": {"name": args.pin, **PINNINGS[args.pin]},
        "seconds_per_point": args.seconds,
        "sizes": sizes,
    }
    name = NAME if not args.redis_cluster else f"{NAME}_cluster{args.redis_cluster}"
    if args.request_queues:
        name += f"_q{args.request_queues}"
    write_clients(json.loads(write_result(name, result, args.out).read_text()), args.out)
    return result


def write_clients(result: dict[str, Any], out: Path) -> Path | None:
    """``serving_clients.json`` from a serving result (as written: its machine, load and
    finish time kept), or None when it served no model."""
    sizes = result["sizes"]
    if not sizes or "ivf" not in sizes[0]["runs"]:
        return None
    rates = {p["offered_per_s"] for p in sizes[0]["runs"]["ivf"]["load"] if p["mode"] == "open"}
    rate = TARGET_RATE if TARGET_RATE in rates or not rates else max(rates)
    digest = {
        "benchmark": result["benchmark"].replace(NAME, f"{NAME}_clients", 1),
        "machine": result["machine"],
        "what": "the serving figures per client: lean generator, sync and asyncio library"
        " clients, same run, same scorer (from serving.json; `python -m benchmarks.serving"
        " --digest serving.json` rewrites it)",
        "processes": result["processes"],
        "pinning": result["pinning"],
        "seconds_per_point": result.get("seconds_per_point"),
        "targets_at": "10^6 items (issue #17)",
        "sizes": [clients_digest(size, rate) for size in sizes],
        "finished_at": result["finished_at"],
    }
    path = out / f"{digest['benchmark']}.json"
    path.write_text(json.dumps(digest, indent=2) + "\n")
    return path


if __name__ == "__main__":
    main()
