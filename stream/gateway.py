"""The HTTP gateway (``ledrec gateway``): recommendations, events, models and health over
HTTP/JSON, in front of the Redis RPC (``AsyncRecommenderClient``) and the publisher.

FastAPI on uvicorn: the request and response models below are pydantic (as the settings
and events already are), so validation and the OpenAPI document (``/openapi.json``,
``/docs``) come from one definition, and the blocking parts (the publisher's flush, the
registry, a swap) run in FastAPI's thread pool while the RPC stays on the event loop.

- ``GET /v1/users/{user_id}/recommendations?k=&exclude=&exclude_seen=``,
  ``POST /v1/recommendations`` (an explicit timeline): items, scores, the model version;
- ``POST /v1/events``: a JSON batch, each event validated as everywhere else, the valid
  ones published (acknowledged by the broker before the answer), each refusal with its
  index and reason;
- ``GET /v1/models``; ``POST /v1/models/{version}/activate`` and
  ``POST /v1/models/rollback`` with the admin key (``X-API-Key``; no key set: refused);
- ``/healthz`` (the process answers) and ``/readyz`` (Redis answers, a model is active, a
  scorer's heartbeat is fresh, the broker answers: 503 with the reasons otherwise);
- for operators and the dashboard (``/ui``): ``GET /v1/status`` (the deployment report
  ``ledrec status`` prints), ``GET /v1/users/{user_id}/timeline`` (the stored recent
  timeline), ``GET /v1/dead-letters`` (the newest, with their reasons), ``GET /v1/items?id=``
  (the catalog's titles).

Metrics (``ledrec gateway --metrics-port``): ``ledrec_http_requests_total{route,status}``
and ``ledrec_http_request_seconds{route}`` (route: the path template, so bounded), and the
swap counters of ``stream.swap`` (activations and rollbacks through the admin endpoints).

No ``from __future__ import annotations`` here: FastAPI reads the annotations at runtime,
and some close over the settings (the deployment's limits are in the document).

Errors map to HTTP: bad input 400/422, ``Overloaded`` 429, ``Unavailable`` 503,
``Timeout`` 504; every error body is ``{"error": {"code", "message"}}``.

Request ids: every answer has an ``X-Request-Id`` header, the caller's when it sent a valid
one (1-128 visible ASCII characters; another is replaced, not refused), else a fresh one.
A recommendation passes it to the scorer, which logs it, and its answer (``request_id``)
and its failures, logged here as WARNING, name it: one id finds the request in the logs of
the gateway and the scorer.
"""

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from importlib import resources
from typing import Annotated, Any

from confluent_kafka import KafkaException
from fastapi import Body, Depends, FastAPI, Header, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ledrec.connect import REDIS_UNAVAILABLE, kafka_answers, redis_client, resolve_addresses
from ledrec.settings import Settings
from ledrec.stream.client import (
    AsyncRecommenderClient,
    BadRequest,
    Overloaded,
    Recommendations,
    RecommendError,
    Timeout,
    Unavailable,
)
from ledrec.stream.dead_letters import NoDeadLetterTopic, newest_dead_letters
from ledrec.stream.events import EventError
from ledrec.stream.producer import EventPublisher, PublishError
from ledrec.stream.protocol import new_request_id, valid_request_id
from ledrec.stream.registry import Registry, RegistryError
from ledrec.stream.state import UserStateStore
from ledrec.stream.status import deployment_status
from ledrec.stream.swap import Swapper
from ledrec.stream.titles import titles_of

__all__ = ["create_app"]

log = logging.getLogger(__name__)

MAX_EVENTS_PER_POST = 10_000
DASHBOARD = resources.files("ledrec.stream") / "dashboard.html"

HTTP_REQUESTS = Counter(
    "ledrec_http_requests_total", "Gateway HTTP requests answered", ["route", "status"]
)
HTTP_SECONDS = Histogram(
    "ledrec_http_request_seconds",
    "Gateway time per HTTP request, first byte in to response started",
    ["route"],
    buckets=(5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)


_REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="")


class _RequestIds:
    """ASGI middleware: each HTTP request's id (the caller's ``X-Request-Id`` when valid,
    else a fresh one) set for its handler and sent back in the ``X-Request-Id`` header."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        request_id = given.decode("latin-1")
        if not valid_request_id(request_id):
            request_id = new_request_id()
        header = (b"x-request-id", request_id.encode())

        started = False

        async def sending(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = _REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, sending)
        except Exception:
            # Answered here, not by Starlette's outermost error middleware, so that a 500
            # too carries the id its log line names.
            log.exception("unhandled error in %s %s", scope["method"], scope["path"],
                          extra={"request_id": request_id})  # fmt: skip
            if started:
                raise
            body = json.dumps(
                {"error": {"code": "internal", "message": f"internal error ({request_id})"}}
            ).encode()
            await sending({"type": "http.response.start", "status": 500,
                           "headers": [(b"content-type", b"application/json"),
                                       (b"content-length", b"%d" % len(body))]})  # fmt: skip
            await sending({"type": "http.response.body", "body": body})
        finally:
            _REQUEST_ID.reset(token)


class _Measured:
    """ASGI middleware: each HTTP request counted and timed by its route's path template."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        def record(status: int) -> None:
            route = getattr(scope.get("route"), "path", "unmatched")
            HTTP_SECONDS.labels(route).observe(time.perf_counter() - started)
            HTTP_REQUESTS.labels(route, str(status)).inc()

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                record(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            record(500)  # answered by _RequestIds
            raise


# -- the API's bodies ------------------------------------------------------------------------
class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecommendationsOut(BaseModel):
    items: list[ScoredItem]
    version: str = Field(description="the model version that answered")
    source: str = Field(description="state, timeline, items or popularity")
    request_id: str = Field(description="as the scorer logged it (the X-Request-Id header)")


class EventIn(BaseModel):
    """An event as ``docs/events.md`` describes it (checked as every other path checks it:
    a refusal says why, in the answer)."""

    model_config = ConfigDict(extra="forbid")
    user_id: str | int
    item_id: str | int
    type: str
    ts: float | str | None = Field(default=None, description="epoch seconds; default: now")


class Refusal(BaseModel):
    index: int
    reason: str


class EventsOut(BaseModel):
    accepted: int
    refused: list[Refusal]


class ModelsOut(BaseModel):
    active: str | None
    versions: dict[str, dict[str, Any]]


class SwapOut(BaseModel):
    version: str
    previous: str | None


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorOut(BaseModel):
    error: ErrorBody


class TimelineItem(BaseModel):
    item_id: str
    weight: float


class TimelineOut(BaseModel):
    user_id: str
    items: list[TimelineItem] = Field(description="the stored timeline, oldest first")


class ItemsOut(BaseModel):
    titles: dict[str, str | None] = Field(description="item id -> title (null: none known)")


class StatusOut(BaseModel):
    active: str | None
    live: list[str]
    versions: dict[str, dict[str, Any]]
    consumers: dict[str, dict[str, Any]]
    scorers: dict[str, dict[str, Any]]
    queues: dict[str, int]
    at: float = Field(description="when it was read (epoch seconds)")


class DeadLetterOut(BaseModel):
    partition: int
    offset: int
    source: str | None
    code: str | None
    reason: str | None
    payload: str


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, str] = Field(description="each check: ok, or what is wrong")


class _HTTPError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


_STATUS_OF: dict[type[RecommendError], tuple[int, str]] = {
    BadRequest: (400, "bad_request"),
    Overloaded: (429, "overloaded"),
    Timeout: (504, "timeout"),
    Unavailable: (503, "unavailable"),
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut} for status in (400, 401, 429, 503, 504)
}


def create_app(settings: Settings) -> FastAPI:
    """The gateway for the deployment ``settings`` describe."""
    bootstrap, redis_url = resolve_addresses(settings)
    state: dict[str, Any] = {}
    # The deployment's limits, in the document too: what it declares valid is served.
    Id = Annotated[str, StringConstraints(min_length=1, max_length=settings.max_id_length)]

    class TimelineIn(BaseModel):
        model_config = ConfigDict(extra="forbid")
        items: list[Id] = Field(
            max_length=settings.max_request_timeline, description="the timeline, oldest first"
        )
        k: int = Field(default=10, ge=1, le=settings.max_k)
        exclude_seen: bool = True

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state["rpc"] = AsyncRecommenderClient.from_url(
            redis_url,
            timeout_s=settings.request_timeout_s,
            prefix=settings.key_prefix,
            max_queue_length=settings.max_queue_length,
            queues=settings.request_queues,
        )
        state["redis"] = redis_client(redis_url)
        state["registry"] = Registry(state["redis"], settings.key_prefix)
        state["store"] = UserStateStore(
            state["redis"], settings.key_prefix, settings.timeline_max, 0
        )
        state["publisher"] = EventPublisher(settings, bootstrap)
        try:
            yield
        finally:
            await state["rpc"].aclose()
            state["publisher"].close()
            state["redis"].close()

    app = FastAPI(
        title="ledrec",
        version="1",
        summary="LED recommendations, events and model versions over HTTP",
        lifespan=lifespan,
    )
    app.add_middleware(_Measured)
    app.add_middleware(_RequestIds)

    @app.exception_handler(_HTTPError)
    async def _error(_: Request, exc: _HTTPError) -> JSONResponse:
        return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, exc.status)

    def admin(x_api_key: Annotated[str | None, Header()] = None) -> None:
        key = settings.gateway_api_key
        if not key:
            raise _HTTPError(401, "unauthorized", "admin endpoints are off: no key is set")
        if x_api_key is None or not hmac.compare_digest(x_api_key, key):
            raise _HTTPError(401, "unauthorized", "a valid X-API-Key header is required")

    async def recommend(**request: Any) -> Recommendations:
        request_id = _REQUEST_ID.get() or None
        try:
            result: Recommendations = await state["rpc"].request(**request, request_id=request_id)
        except RecommendError as e:
            status, code = _STATUS_OF.get(type(e), (503, "unavailable"))
            failed = {"request_id": e.request_id, "status": status, "error": str(e)}
            log.warning("recommendation failed", extra=failed)
            raise _HTTPError(status, code, str(e)) from None
        return result

    def out(result: Recommendations, exclude: set[str], k: int) -> RecommendationsOut:
        items = [ScoredItem(item_id=i, score=s) for i, s in result.items if i not in exclude]
        return RecommendationsOut(
            items=items[:k],
            version=result.version,
            source=result.source,
            request_id=result.request_id,
        )

    @app.get(
        "/v1/users/{user_id}/recommendations",
        response_model=RecommendationsOut,
        responses=_ERRORS,
    )
    async def user_recommendations(
        user_id: Annotated[str, Path(min_length=1, max_length=settings.max_id_length)],
        k: Annotated[int, Query(ge=1, le=settings.max_k)] = 10,
        exclude: Annotated[
            list[str] | None, Query(max_length=1000, description="item ids to leave out")
        ] = None,
        exclude_seen: bool = True,
    ) -> RecommendationsOut:
        """Top-k for a user from their live state (popularity for an unknown user)."""
        leave_out = set(exclude or [])
        want = min(k + len(leave_out), settings.max_k)
        result = await recommend(user_id=user_id, k=want, exclude_seen=exclude_seen)
        return out(result, leave_out, k)

    @app.post("/v1/recommendations", response_model=RecommendationsOut, responses=_ERRORS)
    async def timeline_recommendations(body: TimelineIn) -> RecommendationsOut:
        """Top-k for an explicit timeline (an anonymous or session user)."""
        result = await recommend(items=body.items, k=body.k, exclude_seen=body.exclude_seen)
        return out(result, set(), body.k)

    @app.post("/v1/events", response_model=EventsOut, responses=_ERRORS)
    def post_events(
        events: Annotated[list[EventIn], Body(max_length=MAX_EVENTS_PER_POST)],
    ) -> EventsOut:
        """Publish a batch of events; answers once the broker has acknowledged them."""
        publisher: EventPublisher = state["publisher"]
        refused: list[Refusal] = []
        accepted = 0
        for index, event in enumerate(events):
            try:
                publisher.publish(
                    publisher.codec.make(event.user_id, event.item_id, event.type, event.ts)
                )
            except EventError as e:
                refused.append(Refusal(index=index, reason=e.reason))
                continue
            accepted += 1
        try:
            publisher.flush(timeout_s=settings.request_timeout_s * 5)
        except PublishError as e:
            raise _HTTPError(503, "unavailable", f"events not acknowledged: {e}") from None
        return EventsOut(accepted=accepted, refused=refused)

    @app.get("/v1/models", response_model=ModelsOut, responses=_ERRORS)
    def models() -> ModelsOut:
        """Every registered version with its state and metrics, and the active one."""
        registry: Registry = state["registry"]
        try:
            return ModelsOut(active=registry.active(), versions=registry.versions())
        except REDIS_UNAVAILABLE as e:
            raise _HTTPError(503, "unavailable", f"redis unreachable: {e}") from None

    def swap(run: str, version: str | None = None, force: bool = False) -> SwapOut:
        swapper = Swapper(settings, state["redis"])
        try:
            report = swapper.activate(version, force=force) if version else swapper.rollback()
        except RegistryError as e:
            raise _HTTPError(400, "bad_request", str(e)) from None
        except REDIS_UNAVAILABLE as e:
            raise _HTTPError(503, "unavailable", f"redis unreachable: {e}") from None
        return SwapOut(version=report.version, previous=report.previous)

    @app.post(
        "/v1/models/{version}/activate",
        response_model=SwapOut,
        responses=_ERRORS,
        dependencies=[Depends(admin)],
    )
    def activate(version: str, force: bool = False) -> SwapOut:
        """Make ``version`` the active one (back-filled first; the quality gate applies
        unless ``force``). Admin."""
        return swap("activate", version, force)

    @app.post(
        "/v1/models/rollback",
        response_model=SwapOut,
        responses=_ERRORS,
        dependencies=[Depends(admin)],
    )
    def rollback() -> SwapOut:
        """Back to the previous (retained) version: a pointer flip. Admin."""
        return swap("rollback")

    @app.get("/v1/users/{user_id}/timeline", response_model=TimelineOut, responses=_ERRORS)
    def user_timeline(
        user_id: Annotated[str, Path(min_length=1, max_length=settings.max_id_length)],
        n: Annotated[int, Query(ge=1, le=settings.timeline_max)] = 20,
    ) -> TimelineOut:
        """The user's stored recent timeline (its newest ``n`` items, oldest first)."""
        store: UserStateStore = state["store"]
        try:
            stored = store.read(user_id, [])
        except REDIS_UNAVAILABLE as e:
            raise _HTTPError(503, "unavailable", f"redis unreachable: {e}") from None
        pairs = stored.timeline[-n:] if stored is not None else []
        items = [TimelineItem(item_id=i, weight=w) for i, w in pairs]
        return TimelineOut(user_id=user_id, items=items)

    @app.get("/v1/items", response_model=ItemsOut, responses=_ERRORS)
    def items(
        id: Annotated[
            list[Annotated[str, StringConstraints(max_length=settings.max_id_length)]],
            Query(min_length=1, max_length=1000, description="item ids"),
        ],
    ) -> ItemsOut:
        """The catalog's titles of these items (``ledrec.stream.titles``; the demo loads
        MovieLens titles)."""
        try:
            found = titles_of(state["redis"], settings.key_prefix, id)
        except REDIS_UNAVAILABLE as e:
            raise _HTTPError(503, "unavailable", f"redis unreachable: {e}") from None
        return ItemsOut(titles=dict(zip(id, found, strict=True)))

    @app.get("/v1/status", response_model=StatusOut, responses=_ERRORS)
    def status() -> StatusOut:
        """The deployment at a glance (``ledrec status``): versions, consumers with their
        lag and freshness, scorers with their versions and latency, queue depths."""
        try:
            return StatusOut(**deployment_status(state["redis"], settings))
        except REDIS_UNAVAILABLE as e:
            raise _HTTPError(503, "unavailable", f"redis unreachable: {e}") from None

    @app.get("/v1/dead-letters", response_model=list[DeadLetterOut], responses=_ERRORS)
    def dead_letters(n: Annotated[int, Query(ge=1, le=1000)] = 20) -> list[DeadLetterOut]:
        """The newest ``n`` dead letters of each partition, with their reasons."""
        try:
            letters = newest_dead_letters(settings, bootstrap, n, quiet_s=0.5, limit_s=10.0)
        except NoDeadLetterTopic:
            return []
        except KafkaException as e:
            raise _HTTPError(503, "unavailable", f"broker unreachable: {e}") from None
        return [DeadLetterOut(**letter) for letter in letters]

    @app.get("/ui", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> HTMLResponse:
        """The dashboard: one static page that reads the API above."""
        return HTMLResponse(DASHBOARD.read_text(encoding="utf-8"))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The gateway process answers."""
        return {"status": "alive"}

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
    def readyz() -> JSONResponse:
        """Ready to serve: Redis answers, a model is active, a scorer's heartbeat is fresh,
        the broker answers."""
        checks = {"redis": "ok", "model": "ok", "scorer": "ok", "broker": "ok"}
        registry: Registry = state["registry"]
        try:
            state["redis"].ping()
            active = registry.active()
            checks["model"] = "ok" if active else "no active model"
            scorers = registry.scorers()
            serving = [s for s in scorers.values() if s.get("serving")]
            checks["scorer"] = "ok" if serving else "no scorer heartbeat"
        except REDIS_UNAVAILABLE as e:
            checks["redis"] = f"unreachable: {e}"
            checks["model"] = checks["scorer"] = "unknown (redis unreachable)"
        if not kafka_answers(bootstrap, settings.kafka_config, timeout=2.0):
            checks["broker"] = "unreachable"
        ready = all(v == "ok" for v in checks.values())
        body = Readiness(ready=ready, checks=checks)
        return JSONResponse(json.loads(body.model_dump_json()), 200 if ready else 503)

    return app
