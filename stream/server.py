"""The scorer process: serves recommendation requests from the Redis request list.

Each loop takes a batch of requests with their users' states, drops the ones past their
deadline (their client has given up: answering late only adds load), searches faiss once
for the whole batch, and sends every reply in one pipeline that ends with the wait for
the next batch and its states (``stream.intake``: returns at once when requests are
queued, else when the next one arrives). So a batch costs one round trip, busy or idle.
The serving thread holds its own connection for it (redis-py's pool checks every
checkout, at more CPU than the round trip). Model swaps are prepared in a background
thread and take effect between two batches, never in the middle of one.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import faiss
import numpy as np
import redis
from prometheus_client import Counter, Histogram

from ledrec.settings import Settings
from ledrec.stream import protocol
from ledrec.stream._resp import HeldConnectionPool, RawConnection, reply_commands
from ledrec.stream.artifact import ArtifactError
from ledrec.stream.intake import Intake, Taken
from ledrec.stream.protocol import Limits, Request, RequestError
from ledrec.stream.registry import ModelCache, Registry
from ledrec.stream.scorer import Query, Scorer
from ledrec.stream.state import UserState, UserStateStore, parse_states, state_fields

log = logging.getLogger(__name__)
_T = TypeVar("_T")

MAX_BACKOFF_S = 5.0
HEARTBEAT_TTL_S = 5.0  # a scorer silent this long no longer counts in a swap

REQUESTS = Counter("ledrec_requests_total", "Requests answered", ["outcome"])
_ANSWERED = REQUESTS.labels("ok")  # looked up once: labels() costs µs per call
SHED = Counter("ledrec_requests_shed_total", "Requests dropped past their deadline")
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
        self.registry = Registry(client, settings.key_prefix)
        self.models = ModelCache(self.registry)
        # The serving thread's own connection: its state reads (through the store) and its
        # pops and replies (``_pipeline``); everything else uses ``client``'s pool.
        self._serving = redis.Redis(connection_pool=HeldConnectionPool(client.connection_pool))
        self._round_trips = RawConnection(self._serving, settings.serve_spin_us / 1e6)
        self.store = UserStateStore(
            self._serving, settings.key_prefix, settings.timeline_max, settings.user_ttl_seconds
        )
        self.limits = Limits(
            settings.max_request_bytes,
            settings.max_id_length,
            settings.max_k,
            settings.max_request_timeline,
        )
        self.scorer: Scorer | None = None
        self._next: Scorer | None = None
        self._lock = threading.Lock()
        self.totals = ServerTotals()
        self.stop_event = threading.Event()
        # Taken with the last replies, and the version whose sums were read with them.
        self._prefetched: list[Taken] | None = None
        self._read_version: str | None = None
        self._refused: str | None = None  # a version that failed to load (artifacts are immutable)
        # Scorers of the other live versions (warming: the next one; retained: a rollback
        # target), loaded in the background so that a flip never loads on the request path.
        self._prepared: dict[str, Scorer] = {}
        self._unloadable: set[str] = set()
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.intake = Intake(
            client,
            settings.request_queue,
            settings.keyspace.taking(self.name),
            settings.serve_batch_size,
            settings.max_request_bytes,
            settings.max_id_length,
            self.store.key_prefix,
        )

    # -- model versions ------------------------------------------------------------------
    def load_active(self) -> bool:
        """Prepare the registry's active version if it is not the one serving."""
        version = self.registry.active()
        current = self._next or self.scorer
        if version is None or version == self._refused:
            return False
        if current is not None and current.version == version:
            return False
        with self._lock:
            scorer = self._prepared.pop(version, None)
        if scorer is None:
            try:
                scorer = self._build_scorer(version)
            except ArtifactError:
                self._refused = version  # do not re-read and re-hash it every second
                raise
        with self._lock:
            self._next = scorer
        log.info("model prepared", extra={"version": version, "exact": scorer.exact})
        return True

    def _watch_models(self) -> None:
        """Follow the active pointer, resubscribing with backoff while Redis is unreachable."""
        delay = 0.1
        while not self.stop_event.is_set():
            try:
                self._follow_active()
            except (redis.ConnectionError, redis.TimeoutError) as e:
                log.warning("model watcher: redis unavailable", extra={"error": str(e)})
                self.stop_event.wait(delay)
                delay = min(2 * delay, MAX_BACKOFF_S)

    def _follow_active(self) -> None:
        """Pub/sub for speed, a periodic check as a safety net."""
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        pubsub.subscribe(self.registry.channel)
        try:
            while not self.stop_event.is_set():
                pubsub.get_message(timeout=1.0)
                self.sync_models()
        finally:
            pubsub.close()

    def sync_models(self) -> None:
        """Prepare the live versions, switch to the active one, report (the watcher's round)."""
        try:
            self.prepare_live()
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except Exception:
            log.exception("could not prepare the live model versions")
        try:
            self.load_active()
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except Exception:
            log.exception("could not load the active model; still serving the old one")
        # Swap here rather than wait for the serving loop (it may sit in BLMOVE): a batch
        # takes ``self.scorer`` once, so the switch still falls between two batches.
        self._swap_if_ready()
        self.heartbeat()

    def prepare_live(self) -> None:
        """Load and warm every live version not loaded yet; forget those no longer live."""
        live = set(self.registry.live())
        with self._lock:
            for gone in set(self._prepared) - live:
                del self._prepared[gone]
            loaded = set(self._prepared) | {s.version for s in (self.scorer, self._next) if s}
        for version in sorted(live - loaded - self._unloadable):
            self.heartbeat()  # loading a big index takes a while: stay visible meanwhile
            try:
                scorer = self._build_scorer(version)
            except ArtifactError:
                self._unloadable.add(version)
                log.exception("model version unusable", extra={"version": version})
                continue
            with self._lock:
                self._prepared[version] = scorer
            log.info("model prepared", extra={"version": version, "exact": scorer.exact})

    def _build_scorer(self, version: str) -> Scorer:
        """Load a version, build or read its index, and run a few searches to warm it."""
        model = self.models.get(version)
        scorer = Scorer(model, self.settings.exact_index_max_items, self.settings.ivf_nprobe)
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
            serving = self.scorer.version if self.scorer is not None else None
            prepared = sorted(self._prepared)
        self.registry.report_scorer(self.name, serving, prepared, HEARTBEAT_TTL_S)

    def _swap_if_ready(self) -> None:
        if self._next is None:
            return
        with self._lock:
            if self._next is None:  # the other thread swapped first
                return
            old, self.scorer, self._next = self.scorer, self._next, None
            if old is not None:
                self._prepared[old.version] = old  # a rollback target until it leaves live
        log.info(
            "model swapped",
            extra={"version": self.scorer.version, "previous": old.version if old else None},
        )
        self.heartbeat()

    # -- serving -------------------------------------------------------------------------
    def run(self) -> ServerTotals:
        """Serve until stopped; a Redis outage pauses serving (with backoff), never ends it."""
        try:
            self.load_active()
        except (ArtifactError, redis.ConnectionError, redis.TimeoutError):
            log.exception("no usable active model yet; the watcher keeps trying")
        watcher = threading.Thread(target=self._watch_models, name="model-watcher", daemon=True)
        watcher.start()
        delay = 0.1
        try:
            while not self.stop_event.is_set():
                try:
                    self.serve_once(block_s=0.5)
                    delay = 0.1
                except (redis.ConnectionError, redis.TimeoutError) as e:
                    log.warning(
                        "redis unavailable; serving paused",
                        extra={"error": str(e), "retry_in_s": delay},
                    )
                    self.stop_event.wait(delay)
                    delay = min(2 * delay, MAX_BACKOFF_S)
        finally:
            self.stop_event.set()
            watcher.join(timeout=2)
            if self._prefetched:  # popped but not answered: back where the next pop finds them
                payloads = [t.payload for t in reversed(self._prefetched)]
                with contextlib.suppress(redis.RedisError):  # else their clients time out
                    self.client.rpush(self.settings.request_queue, *payloads)
                self._prefetched = None
            self._serving.connection_pool.disconnect()
        return self.totals

    def serve_once(self, block_s: float = 0.5) -> int:
        """Answer one batch (waiting up to ``block_s`` for one); returns how many were popped.

        The replies go out in the same round trip as the wait for the next batch (taken by
        the next call): it returns at once when requests are queued, else when the
        next one arrives, so an idle server does not pay a round trip to find the list
        empty before it blocks.
        """
        self._swap_if_ready()
        taken, self._prefetched = self._prefetched, None
        if not taken:
            taken = self._reply_and_take([], block_s)
            if not taken:
                return 0
        observed = self.observe is not None
        if observed:
            self._clock = _Clock()
            c0, polled0 = time.thread_time(), self._round_trips.polled_s
        started = time.perf_counter()
        replies = self._answer(taken, self._read_version)  # the version of the last take
        answer_s = time.perf_counter() - started
        BATCH_SECONDS.observe(answer_s)
        self.totals.batches += 1
        if observed:
            c1, polled1 = time.thread_time(), self._round_trips.polled_s
        self._prefetched = self._reply_and_take(replies, block_s) or None
        if observed:
            assert self.observe is not None
            c2, polled2 = time.thread_time(), self._round_trips.polled_s
            parts = self._clock.parts
            self._clock = _NoClock()
            self.observe(
                BatchTiming(
                    len(taken), answer_s, parts["read"], parts["search"], parts["score"],
                    c2 - c0 - (polled2 - polled0), c2 - c1 - (polled2 - polled1), time.time(),
                )
            )  # fmt: skip
        return len(taken)

    def _reply_and_take(self, replies: list[bytes], block_s: float) -> list[Taken]:
        """Send ``replies``; wait for a request and return it with those queued behind it,
        each with its user's state as read for the serving version (``_read_version``).

        One round trip (``stream.intake``). A reply that Redis refuses (its key holds
        another type) is logged and dropped; the batch taken with it is still served.
        """
        self._read_version, fields = self._read_plan()
        results = self._pipeline([*replies, *self.intake.commands(block_s, fields)])
        refused = [r for r in results[: len(replies)] if isinstance(r, redis.ResponseError)]
        if refused:
            log.warning(
                "replies refused by redis", extra={"count": len(refused), "error": str(refused[0])}
            )
        return self.intake.taken(results[len(replies) :], fields)

    def _read_plan(self) -> tuple[str | None, tuple[bytes, ...]]:
        """The version whose sums to take with the next requests, and the fields to read."""
        scorer = self.scorer
        version = scorer.version if scorer is not None else None
        return version, _fields_for(version)

    def _pipeline(self, commands: list[bytes]) -> list[Any]:
        """Send RESP-packed ``commands`` in one write on the serving connection; every reply.

        Error replies are returned as exceptions, not raised. A lost connection is dropped
        and the error raised (``run`` backs off and the next call reconnects); requests a
        lost round trip had popped are lost with it, as with any pop, and their clients
        time out.
        """
        self._round_trips.send(commands)
        return self._round_trips.receive()

    def _answer(self, taken: list[Taken], read_version: str | None) -> list[bytes]:
        """Decode, score and encode a batch; returns the reply commands (LPUSH, EXPIRE).

        ``read_version`` is the version whose sums were read with the requests' states.
        """
        now = time.time()
        replies: list[tuple[str, bytes]] = []
        requests: list[Request] = []
        read: list[list[Any] | None] = []
        for t in taken:
            try:
                req = protocol.decode_request(t.payload, self.limits)
            except RequestError as e:
                self.totals.errors += 1
                REQUESTS.labels("bad_request").inc()
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
                continue
            requests.append(req)
            read.append(t.state)
        scorer = self.scorer
        if requests and scorer is None:
            for req in requests:
                replies.append(
                    (
                        req.reply_to,
                        protocol.encode_error(req.id, protocol.UNAVAILABLE, "no active model"),
                    )
                )
            requests = []
        if requests and scorer is not None:
            states = self._clock.time("read", self._states, requests, read, read_version)
            replies += self._clock.time("score", self._score, scorer, requests, states)
        commands: list[bytes] = []
        for key, body in replies:
            commands += reply_commands(key.encode(), body)
        return commands

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
        self, scorer: Scorer, requests: list[Request], user_states: list[UserState | None]
    ) -> list[tuple[str, bytes]]:
        """Replies to ``requests``; ``user_states`` are the states of those with a user id."""
        states = iter(user_states)
        queries: list[Query] = []
        sources: list[str] = []
        for req in requests:
            seen_ids: Sequence[str]
            if req.items is not None:
                seen_ids, source = req.items, "items"
                vector = scorer.encode_timeline([(i, 1.0) for i in req.items])
            else:
                # Only ids are needed unless the sum must be computed: the packed timeline
                # is not unpacked into (id, weight) pairs on the common path.
                state = next(states)
                if state is None or not state.size:
                    seen_ids, vector, source = (), scorer.encode_sum(None, 0.0), "popularity"
                elif scorer.version in state.sums:
                    seen_ids, source = state.items, "state"
                    vector = scorer.encode_sum(
                        state.sums[scorer.version], state.weights[scorer.version]
                    )
                else:  # this version's sum is not back-filled yet: encode on the fly
                    seen_ids, source = state.items, "timeline"
                    vector = scorer.encode_timeline(state.timeline)
            seen = frozenset(seen_ids) if req.exclude_seen else frozenset()
            queries.append(Query(vector, seen, req.k))
            sources.append(source)
        results = self._clock.time("search", scorer.top_k, queries)
        self.totals.answered += len(requests)
        _ANSWERED.inc(len(requests))
        return [
            (req.reply_to, protocol.encode_reply(req.id, items, scorer.version, source))
            for req, items, source in zip(requests, results, sources, strict=True)
        ]


@functools.lru_cache(maxsize=16)
def _fields_for(version: str | None) -> tuple[bytes, ...]:
    """The state fields a scorer serving ``version`` takes with its requests."""
    return state_fields([version] if version else [])
