"""The scorer process: serves recommendation requests from the Redis request queues.

Each loop takes a batch of requests with their users' states, drops the ones past their
deadline (their client has given up: answering late only adds load), searches faiss once
for the whole batch, and sends every reply in one pipeline that ends with the wait for
the next batch and its states (``stream.intake``: returns at once when requests are
queued, else when the next one arrives). So a batch costs one round trip, busy or idle.
The serving thread holds its own connection for it (redis-py's pool checks every
checkout, at more CPU than the round trip). Model versions are prepared in a background
thread (``stream.versions.ServingVersions``) and take effect between two batches.

Every scorer serves every request queue (``Keyspace.request_queues``: one on one Redis,
several on a Redis Cluster, each on the node of its hash tag). Each queue is a *lane* with
its own held connection and a take in flight; with several lanes the serving thread waits
for whichever answers first (``select``), serves that batch and sends its replies with the
lane's next take. On a cluster the take script reads no user state (their keys live in
other slots): the states are read after it, one pipelined round trip to the nodes that
own them (``stream._cluster``).

Request ids (``protocol``): requests refused, shed past their deadline or answered
"unavailable" are logged as WARNING, one line per batch and outcome naming their ids; at
DEBUG every answered request is logged with its id, source and version.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import faiss
import numpy as np
import numpy.typing as npt
import redis
from prometheus_client import Counter, Gauge, Histogram
from redis.crc import key_slot

from ledrec.connect import REDIS_UNAVAILABLE
from ledrec.keyspace import is_cluster
from ledrec.settings import Settings
from ledrec.stream import protocol
from ledrec.stream._resp import HeldConnectionPool, RawConnection, execute_raw, reply_commands
from ledrec.stream.artifact import ArtifactError
from ledrec.stream.backoff import Backoff
from ledrec.stream.intake import Intake, Taken
from ledrec.stream.loaded_model import LoadedModel, Query
from ledrec.stream.model_store import ModelStores
from ledrec.stream.protocol import Limits, Request, RequestError
from ledrec.stream.recent import RecentValues
from ledrec.stream.registry import ModelCache, Registry
from ledrec.stream.state import UserState, UserStateStore, parse_states, state_fields
from ledrec.stream.versions import ServingVersions

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_NO_MODEL_YET: tuple[type[Exception], ...] = (ArtifactError, *REDIS_UNAVAILABLE)
CLOCK_REFRESH_S = 30.0  # how often the scorer re-measures its clock against Redis's
LOGGED_IDS = 20  # request ids named per log line (the count says how many there were)


REQUESTS = Counter("ledrec_requests_total", "Requests answered", ["outcome"])
_ANSWERED = REQUESTS.labels("ok")  # looked up once: labels() costs µs per call
SHED = Counter("ledrec_requests_shed_total", "Requests dropped past their deadline")
REQUEST_SECONDS = Histogram(
    "ledrec_request_seconds",
    "Server-side time of each request: its batch taken to its reply sent",
    buckets=(1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.5),
)
POPULARITY = Counter(
    "ledrec_popularity_fallbacks_total",
    "Requests ranked by popularity (bias) alone: no_state (an unknown, expired or empty user),"
    " no_known_item (a timeline of items the serving version does not know)",
    ["reason"],
)
_NO_STATE, _NO_KNOWN_ITEM = POPULARITY.labels("no_state"), POPULARITY.labels("no_known_item")
UNKNOWN_REQUEST_ITEMS = Counter(
    "ledrec_request_unknown_items_total",
    "Items of explicit request timelines the serving version does not know (ignored)",
)
QUEUE_DEPTH = Gauge("ledrec_request_queue_depth", "Requests waiting in a queue", ["queue"])
QUEUE_DEPTH_EVERY_S = 1.0
BATCH_SECONDS = Histogram(
    "ledrec_serve_batch_seconds",
    "Server-side time per batch (decode, read state, encode, search, pack replies)",
    buckets=(1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.5),
)


@dataclass
class ServerTotals:
    batches: int = 0
    answered: int = 0
    errors: int = 0
    shed: int = 0


@dataclass(frozen=True)
class BatchTiming:
    """Where one batch's time went (for ``observe`` hooks: the serving benchmark)."""

    requests: int  # taken
    answer_s: float  # decode, states, score, pack the replies (wall)
    read_s: float  # the users' states: parsed as taken, or read (wall)
    search_s: float  # faiss top-k with the seen filter (wall)
    score_s: float  # encode the users, search, encode the replies (wall)
    cpu_s: float  # thread CPU of the batch and its reply round trip, polling left out
    reply_cpu_s: float  # thread CPU of the reply + next take round trip, polling left out
    at: float  # time.time() when done


@dataclass
class _Lane:
    """One request queue as this scorer serves it: its held connection and intake, and
    what its last round trip took (``prefetched``) or whether one is in flight."""

    index: int
    queue: str
    intake: Intake
    serving: redis.Redis  # on the held connection
    round_trips: RawConnection
    node: str  # the name of the node that holds the queue ("" on one Redis)
    prefetched: list[Taken] | None = None
    read_version: str | None = None  # the version whose sums were read with ``prefetched``
    in_flight: bool = False  # a reply-and-take round trip was sent and not yet read
    sent: tuple[int, tuple[bytes, ...]] = field(default=(0, ()))  # replies sent, fields read


class _Clock:
    """Accumulates wall time per part of a batch while the server is observed."""

    def __init__(self) -> None:
        self.parts = {"read": 0.0, "search": 0.0, "score": 0.0}

    def time(self, part: str, run: Callable[..., _T], *args: Any) -> _T:
        t0 = time.perf_counter()
        try:
            return run(*args)
        finally:
            self.parts[part] += time.perf_counter() - t0


class _NoClock(_Clock):
    def time(self, part: str, run: Callable[..., _T], *args: Any) -> _T:
        return run(*args)


class RecommendServer:
    """Pops requests, scores them with the active model version, replies.

    ``observe``: an optional hook called with every batch's ``BatchTiming`` (benchmarks);
    None costs nothing.
    """

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        observe: Callable[[BatchTiming], None] | None = None,
    ) -> None:
        faiss.omp_set_num_threads(1)  # one thread per search: more was measured slower
        self.settings = settings
        self.client = client
        self.observe = observe
        self._clock: _Clock = _NoClock()
        self._clock_offset = 0.0  # Redis's clock minus ours (``_sync_clock``)
        self._clock_at = -CLOCK_REFRESH_S
        self._depth_at = -QUEUE_DEPTH_EVERY_S
        self.registry = Registry(client, settings.key_prefix)
        self.models = ModelCache(self.registry, ModelStores(settings))
        self.keys = settings.keyspace_of(client)
        self.cluster = is_cluster(client)
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        # The serving thread's own connections, one per request queue (``_Lane``): its pops
        # and replies, and on one Redis its state reads (through the store). Everything else
        # uses ``client``'s pool; on a cluster the state reads are routed by slot.
        self.lanes = [self._lane(i) for i in range(self.keys.queue_count)]
        self._serving = self.lanes[0].serving
        self.store = UserStateStore(
            client if self.cluster else self._serving,
            settings.key_prefix,
            settings.timeline_max,
            settings.user_ttl_seconds,
        )
        self.limits = Limits(
            settings.max_request_bytes,
            settings.max_id_length,
            settings.max_k,
            settings.max_request_timeline,
        )
        self.totals = ServerTotals()
        self.stop_event = threading.Event()
        self.recent_latency = RecentValues(4096)  # seconds per request, for the heartbeat
        self.versions = ServingVersions(
            settings, self.registry, self.models, self.name, stats=self.stats
        )
        self._next_lane = 0  # where the search for a ready lane starts (fairness)

    def stats(self) -> dict[str, Any]:
        """What the heartbeat carries besides the versions: totals and recent latency."""
        latency = self.recent_latency.quantiles(0.5, 0.99)
        return {
            "answered": self.totals.answered,
            "errors": self.totals.errors,
            "shed": self.totals.shed,
            "latency_p50_ms": latency[0] * 1e3 if latency else None,
            "latency_p99_ms": latency[1] * 1e3 if latency else None,
        }

    def _lane(self, i: int) -> _Lane:
        """Lane ``i``: a connection of its own to the node that holds queue ``i``."""
        queue = self.keys.queue(i)
        node = ""
        if self.cluster:
            cluster: Any = self.client
            owner = cluster.get_node_from_key(queue)
            pool, node = cluster.get_redis_connection(owner).connection_pool, owner.name
        else:
            pool = self.client.connection_pool
        serving = redis.Redis(connection_pool=HeldConnectionPool(pool))
        intake = Intake(
            self.client,
            queue,
            self.keys.taking(self.name, i),
            self.settings.serve_batch_size,
            self.settings.max_request_bytes,
            self.settings.max_id_length,
            self.keys.user_prefix.encode(),
        )
        spin_s = self.settings.serve_spin_us / 1e6
        return _Lane(i, queue, intake, serving, RawConnection(serving, spin_s), node)

    @property
    def intake(self) -> Intake:
        """The first queue's intake (the only one on one Redis by default)."""
        return self.lanes[0].intake

    @property
    def scorer(self) -> LoadedModel | None:
        """The version serving now (None: no usable active version yet)."""
        return self.versions.serving

    def load_active(self) -> bool:
        """Prepare the registry's active version if it is not the one serving."""
        return self.versions.load_active()

    # -- serving -------------------------------------------------------------------------
    def run(self) -> ServerTotals:
        """Serve until stopped; a Redis outage pauses serving (with backoff), never ends it."""
        try:
            self.load_active()
        except _NO_MODEL_YET as e:  # expected while a deployment starts: no traceback
            log.warning("no usable active model yet; the watcher keeps trying",
                        extra={"error": str(e)})  # fmt: skip
        watcher = threading.Thread(
            target=self.versions.watch, args=(self.stop_event,), name="model-watcher", daemon=True
        )
        watcher.start()
        backoff = Backoff()
        try:
            while not self.stop_event.is_set():
                try:
                    self.serve_once(block_s=0.5)
                    backoff.reset()
                except REDIS_UNAVAILABLE as e:  # on a cluster: a failover or resharding too
                    self._reset_lanes()
                    delay = backoff.wait(self.stop_event)
                    log.warning(
                        "redis unavailable; serving paused",
                        extra={"error": str(e), "retried_after_s": round(delay, 3)},
                    )
        finally:
            self.stop_event.set()
            watcher.join(timeout=2)
            self._give_back()
            for lane in self.lanes:
                lane.serving.connection_pool.disconnect()
        return self.totals

    def _give_back(self) -> None:
        """Requests taken and not answered go back where the next take finds them (else
        their clients time out); a take still in flight is read first."""
        for lane in self.lanes:
            with contextlib.suppress(redis.RedisError, RuntimeError):
                if lane.in_flight:
                    lane.prefetched = (lane.prefetched or []) + self._receive(lane)
                if lane.prefetched:
                    payloads = [t.payload for t in reversed(lane.prefetched)]
                    self.client.rpush(lane.queue, *payloads)
            lane.prefetched = None

    def _reset_lanes(self) -> None:
        """After a lost connection or a redirection: drop every lane's connection (the
        requests a lost take had moved stay in its taking list, which the next take serves
        first) and, on a cluster, re-read the slot map and reconnect each lane to the node
        that holds its queue now."""
        for lane in self.lanes:
            lane.round_trips.close()
            lane.in_flight = False
        if self.cluster:
            with contextlib.suppress(redis.RedisError, redis.exceptions.RedisClusterException):
                self.client.nodes_manager.initialize()  # type: ignore[attr-defined]
                prefetched = [(lane.prefetched, lane.read_version) for lane in self.lanes]
                for lane in self.lanes:
                    lane.serving.connection_pool.disconnect()
                self.lanes = [self._lane(i) for i in range(self.keys.queue_count)]
                for lane, (taken, version) in zip(self.lanes, prefetched, strict=True):
                    lane.prefetched, lane.read_version = taken, version

    def serve_once(self, block_s: float = 0.5) -> int:
        """Answer one batch (waiting up to ``block_s`` for one); returns how many were popped.

        The replies go out in the same round trip as the wait for the lane's next batch: it
        returns at once when requests are queued, else when the next one arrives, so an
        idle server does not pay a round trip to find the queue empty before it blocks.
        With several lanes, the requests of every lane whose take has answered are served
        as one batch (one state read, one search), each lane getting its own replies.
        """
        self.versions.swap_if_ready()
        now = time.monotonic()
        if now - self._clock_at > CLOCK_REFRESH_S:
            self._sync_clock()
        if now - self._depth_at > QUEUE_DEPTH_EVERY_S:
            self._depth_at = now
            self._measure_queues()
        served = self._next_batch(block_s)
        taken = [t for _, lane_taken in served for t in lane_taken]
        if not taken:
            return 0
        first = served[0][0]
        observed = self.observe is not None
        if observed:
            self._clock = _Clock()
            c0, polled0 = time.thread_time(), first.round_trips.polled_s
        started = time.perf_counter()
        replies = self._answer(taken, first.read_version)  # the version of the last take
        answer_s = time.perf_counter() - started
        BATCH_SECONDS.observe(answer_s)
        self.totals.batches += 1
        if observed:
            c1, polled1 = time.thread_time(), first.round_trips.polled_s
        for lane, commands in self._route(replies, [lane for lane, _ in served]):
            self._send(lane, commands, block_s)
        per_request = time.perf_counter() - started
        for _ in range(len(taken)):  # one observation per request (no weighted observe)
            REQUEST_SECONDS.observe(per_request)
        self.recent_latency.add(per_request, len(taken))
        if len(self.lanes) == 1:  # one lane: wait for its next batch now (one round trip)
            first.prefetched = self._receive(first) or None
        if observed:
            assert self.observe is not None
            c2, polled2 = time.thread_time(), first.round_trips.polled_s
            parts = self._clock.parts
            self._clock = _NoClock()
            self.observe(
                BatchTiming(
                    len(taken), answer_s, parts["read"], parts["search"], parts["score"],
                    c2 - c0 - (polled2 - polled0), c2 - c1 - (polled2 - polled1), time.time(),
                )
            )  # fmt: skip
        return len(taken)

    def _route(
        self, replies: list[tuple[str, bytes]], lanes: list[_Lane]
    ) -> list[tuple[_Lane, list[bytes]]]:
        """Each served lane and the reply commands it sends with its next take: on one
        Redis all go with the first; on a cluster each reply goes with a lane on the node
        of its key's slot (the client tagged it with its queue's tag, so there is one).
        A reply no served lane can carry (a foreign reply key) is sent on its own."""
        out: dict[int, list[bytes]] = {lane.index: [] for lane in lanes}
        if not self.cluster:
            for key, body in replies:
                out[lanes[0].index] += reply_commands(key.encode(), body)
            return [(lane, out[lane.index]) for lane in lanes]
        by_node = {lane.node: lane.index for lane in reversed(lanes)}
        stray: list[bytes] = []
        cluster: Any = self.client
        for key, body in replies:
            packed = key.encode()
            node = cluster.nodes_manager.get_node_from_slot(key_slot(packed)).name
            target = by_node.get(node)
            if target is None:
                stray += reply_commands(packed, body)
            else:
                out[target] += reply_commands(packed, body)
        if stray:
            failed = [r for r in execute_raw(self.client, stray) if isinstance(r, Exception)]
            if failed:
                log.warning("replies refused by redis", extra={"count": len(failed),
                            "error": str(failed[0])})  # fmt: skip
        return [(lane, out[lane.index]) for lane in lanes]

    def _next_batch(self, block_s: float) -> list[tuple[_Lane, list[Taken]]]:
        """The lanes whose takes have answered, with what they took (already taken, else
        waited for: up to ``block_s``, every lane with a take in flight meanwhile).
        Only lanes whose states were read for the same version are served together."""
        count = len(self.lanes)
        if count == 1:
            lane = self.lanes[0]
            if lane.prefetched:
                taken, lane.prefetched = lane.prefetched, None
                return [(lane, taken)]
            if not lane.in_flight:
                self._send(lane, [], block_s)
            return [(lane, self._receive(lane))]
        if not any(lane.prefetched for lane in self.lanes):
            for lane in self.lanes:
                if not lane.in_flight:
                    self._send(lane, [], block_s)
            by_fd = {lane.round_trips.fileno(): lane for lane in self.lanes}
            deadline = time.monotonic() + block_s + 1.0
            while True:
                wait = deadline - time.monotonic()
                readable, _, _ = select.select(list(by_fd), [], [], max(wait, 0.0))
                # a round trip is done when its take has answered, not at its first reply
                done = [by_fd[fd] for fd in readable if by_fd[fd].round_trips.pump()]
                if done or wait <= 0:
                    break
            for lane in done:
                lane.prefetched = self._receive(lane) or None
        order = [self.lanes[(self._next_lane + j) % count] for j in range(count)]
        ready = [lane for lane in order if lane.prefetched]
        if not ready:
            return []
        served = [lane for lane in ready if lane.read_version == ready[0].read_version]
        self._next_lane = (served[-1].index + 1) % count
        out = []
        for lane in served:
            taken, lane.prefetched = lane.prefetched or [], None
            out.append((lane, taken))
        return out

    def _measure_queues(self) -> None:
        """The request-queue depth gauges (one LLEN per queue, on the shared pool)."""
        try:
            for lane in self.lanes:
                QUEUE_DEPTH.labels(lane.queue).set(self.client.llen(lane.queue))
        except redis.exceptions.NoPermissionError as e:  # an ACL without LLEN: no gauge
            log.warning("queue depth not measured", extra={"error": str(e)})

    def _sync_clock(self) -> None:
        """Measure this machine's clock against Redis's (``TIME``): requests carry their
        deadline by Redis's clock, so client and scorer clocks need not agree."""
        sent_at = time.time()
        seconds, micros = self.client.time()
        self._clock_offset = seconds + micros / 1e6 - (sent_at + time.time()) / 2
        self._clock_at = time.monotonic()

    def _send(self, lane: _Lane, replies: list[bytes], block_s: float) -> None:
        """Send ``replies`` and the lane's wait-and-take (``stream.intake``), not waiting.

        Reply keys share their queue's hash tag (``Keyspace.reply``), so on a cluster they
        go to the lane's node with its take. The take reads the states of the version
        serving now (``_read_plan``); on a cluster it reads none (other slots).
        """
        lane.read_version, fields = self._read_plan()
        if self.cluster:
            fields = ()
        lane.round_trips.send([*replies, *lane.intake.commands(block_s, fields)])
        lane.in_flight, lane.sent = True, (len(replies), fields)

    def _receive(self, lane: _Lane) -> list[Taken]:
        """The requests the lane's round trip took, each with its user's state as read.

        A reply that Redis refuses (its key holds another type, or lives in another slot)
        is logged and dropped; the batch taken with it is still served. A lost connection
        is dropped and the error raised (``run`` backs off and reconnects); requests its
        take had moved stay in the lane's taking list, which the next take serves first.
        """
        n_replies, fields = lane.sent
        lane.in_flight = False
        results = lane.round_trips.receive()
        refused = [r for r in results[:n_replies] if isinstance(r, redis.ResponseError)]
        if refused:
            log.warning(
                "replies refused by redis", extra={"count": len(refused), "error": str(refused[0])}
            )
        return lane.intake.taken(results[n_replies:], fields)

    def _read_plan(self) -> tuple[str | None, tuple[bytes, ...]]:
        """The version whose sums to take with the next requests, and the fields to read."""
        scorer = self.scorer
        version = scorer.version if scorer is not None else None
        return version, _fields_for(version)

    def _answer(self, taken: list[Taken], read_version: str | None) -> list[tuple[str, bytes]]:
        """Decode, score and encode a batch; returns the replies (reply key, body).

        ``read_version`` is the version whose sums were read with the requests' states.
        """
        now = time.time() + self._clock_offset  # deadlines are by Redis's clock
        replies: list[tuple[str, bytes]] = []
        requests: list[Request] = []
        read: list[list[Any] | None] = []
        refused: list[RequestError] = []
        shed: list[Request] = []
        for t in taken:
            try:
                req = protocol.decode_request(t.payload, self.limits)
            except RequestError as e:
                self.totals.errors += 1
                REQUESTS.labels("bad_request").inc()
                refused.append(e)
                if e.reply_to is not None:
                    replies.append(
                        (
                            e.reply_to,
                            protocol.encode_error(e.request_id, protocol.BAD_REQUEST, str(e)),
                        )
                    )
                continue
            if req.deadline < now:
                self.totals.shed += 1
                SHED.inc()
                shed.append(req)
                continue
            requests.append(req)
            read.append(t.state)
        if refused:
            no_reply = sum(e.reply_to is None for e in refused)  # dropped: no reply key
            ids = [e.request_id for e in refused]
            _log_requests("bad requests", ids, reason=str(refused[0]), unanswerable=no_reply)
        if shed:
            late_s = round(now - min(req.deadline for req in shed), 4)
            _log_requests("requests shed past their deadline", [r.id for r in shed], late_s=late_s)
        scorer = self.scorer
        if requests and scorer is None:
            for req in requests:
                replies.append(
                    (
                        req.reply_to,
                        protocol.encode_error(req.id, protocol.UNAVAILABLE, "no active model"),
                    )
                )
            _log_requests("no active model: answered unavailable", [r.id for r in requests])
            requests = []
        if requests and scorer is not None:
            states = self._clock.time("read", self._states, requests, read, read_version)
            replies += self._clock.time("score", self._score, scorer, requests, states)
        return replies

    def _states(
        self, requests: list[Request], read: list[list[Any] | None], read_version: str | None
    ) -> list[UserState | None]:
        """The user requests' states, in order: as taken with them, else read now (a request
        the take script could not judge; no scorer when it was taken)."""
        versions = [read_version] if read_version else []
        raw = [r for req, r in zip(requests, read, strict=True) if req.user_id is not None]
        states = parse_states([r for r in raw if r is not None], versions)
        if len(states) == len(raw):
            return states
        parsed = iter(states)
        missing = [
            req.user_id
            for req, r in zip(requests, read, strict=True)
            if req.user_id is not None and r is None
        ]
        fresh = iter(self.store.read_many(missing, [self.scorer.version] if self.scorer else []))
        return [next(parsed) if r is not None else next(fresh) for r in raw]

    def _score(
        self, scorer: LoadedModel, requests: list[Request], user_states: list[UserState | None]
    ) -> list[tuple[str, bytes]]:
        """Replies to ``requests``; ``user_states`` are the states of those with a user id."""
        states = iter(user_states)
        queries: list[Query] = []
        sources: list[str] = []
        version = scorer.version
        for req in requests:
            seen_ids: Sequence[str]
            total: npt.NDArray[np.float64] | None
            if req.items is not None:
                seen_ids, source = req.items, "items"
                total, weight = scorer.timeline_sum([(i, 1.0) for i in req.items])
                unknown = scorer.unknown_items(req.items)
                if unknown:
                    UNKNOWN_REQUEST_ITEMS.inc(unknown)
            else:
                # Only ids are needed unless the sum must be computed: the packed timeline
                # is not unpacked into (id, weight) pairs on the common path.
                state = next(states)
                if state is None or not state.size:
                    seen_ids, total, weight, source = (), None, 0.0, "popularity"
                elif version in state.sums:
                    seen_ids, source = state.items, "state"
                    total, weight = state.sums[version], state.weights[version]
                else:  # this version's sum is not back-filled yet: encode on the fly
                    seen_ids, source = state.items, "timeline"
                    total, weight = scorer.timeline_sum(state.timeline)
            if weight <= 0:  # nothing this version knows: u = 0, ranked by bias alone
                (_NO_STATE if source == "popularity" else _NO_KNOWN_ITEM).inc()
                source = "popularity"
            seen = frozenset(seen_ids) if req.exclude_seen else frozenset()
            queries.append(Query(scorer.encode_sum(total, weight), seen, req.k))
            sources.append(source)
        results = self._clock.time("search", scorer.top_k, queries)
        self.totals.answered += len(requests)
        _ANSWERED.inc(len(requests))
        if log.isEnabledFor(logging.DEBUG):
            for req, items, source in zip(requests, results, sources, strict=True):
                extra: dict[str, Any] = {"request_id": req.id, "user_id": req.user_id}
                extra |= {"source": source, "version": version, "returned": len(items)}
                log.debug("request answered", extra=extra)
        return [
            (req.reply_to, protocol.encode_reply(req.id, items, scorer.version, source))
            for req, items, source in zip(requests, results, sources, strict=True)
        ]


def _log_requests(message: str, ids: list[str], **extra: Any) -> None:
    """One WARNING for a batch's requests of one outcome, naming (the first of) their ids."""
    named = [rid for rid in ids if rid]
    log.warning(message, extra={"count": len(ids), "request_ids": named[:LOGGED_IDS], **extra})


@functools.lru_cache(maxsize=16)
def _fields_for(version: str | None) -> tuple[bytes, ...]:
    """The state fields a scorer serving ``version`` takes with its requests."""
    return state_fields([version] if version else [])
