"""Typed configuration shared by every component (environment variables and CLI flags).

Every field can be set from the environment with the ``LEDREC_`` prefix, and the two
addresses also from their conventional names ``KAFKA_BOOTSTRAP`` and ``REDIS_URL``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ledrec.keyspace import Keyspace

DEFAULT_EVENT_WEIGHTS = {"view": 0.25, "click": 1.0, "sale": 1.0}


class Settings(BaseSettings):
    """Configuration of a ledrec deployment."""

    model_config = SettingsConfigDict(env_prefix="LEDREC_", extra="ignore")

    # Addresses. Empty means "use the local stack recorded by `ledrec stack up`".
    kafka_bootstrap: str = Field(
        default="", validation_alias=AliasChoices("KAFKA_BOOTSTRAP", "LEDREC_KAFKA_BOOTSTRAP")
    )
    redis_url: str = Field(
        default="", validation_alias=AliasChoices("REDIS_URL", "LEDREC_REDIS_URL")
    )
    # Extra librdkafka settings (SASL/SSL...), passed through to every client as is.
    kafka_config: dict[str, str] = Field(default_factory=dict)

    home: Path = Path(".ledrec")  # stack record, logs, default model store
    # A directory, or s3://bucket/prefix (stream/model_store.py). Default: <home>/models.
    model_store: str | None = None
    # The S3-compatible server of an s3:// model store (MinIO...); unset: boto3's own
    # resolution (AWS_ENDPOINT_URL, else AWS). Credentials: the standard AWS_* variables.
    s3_endpoint_url: str | None = None

    events_topic: str = "ledrec.events"
    dead_letter_topic: str = "ledrec.events.dlq"
    events_partitions: int = Field(default=4, ge=1)
    # Replication factor of the topics ``ensure`` creates (1 on the local single broker; 3
    # on a production cluster, with min.insync.replicas 2 set on the brokers).
    events_replication: int = Field(default=1, ge=1)
    dead_letter_partitions: int = Field(default=1, ge=1)
    dead_letter_replication: int = Field(default=1, ge=1)
    consumer_group: str = "ledrec-state"
    # Tansu completes a group join after about half the session timeout (DESIGN.md).
    session_timeout_ms: int = 6000
    # How partitions are shared: cooperative-sticky moves only the partitions that change
    # hands on a rebalance (incremental assign/revoke); "range" / "roundrobin" are eager.
    consumer_assignment: str = "cooperative-sticky"
    # Static membership (group.instance.id): a consumer restarted with the same id within
    # the session timeout takes its partitions back without a rebalance. Unset: dynamic.
    consumer_instance_id: str | None = None

    # Event types and their weight in the user encoder (views and clicks both feed it).
    # A view weighs a quarter of a click: fine-tuning learns from click timelines, and on
    # MovieLens-1M counting views at 1 cost 0.012-0.021 test NDCG@100 where 0.25 gained
    # (benchmarks/recency.py; NOTES "Timeline weighting").
    event_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    timeline_max: int = 100  # T_max: most recent items kept per user
    user_ttl_seconds: int = 30 * 24 * 3600  # inactive users expire (churn)

    # Input limits (bad input gets an error, never a crash).
    max_id_length: int = 256
    max_event_bytes: int = 4096
    max_request_bytes: int = 65536
    max_k: int = 1000
    max_request_timeline: int = 1000
    # The accepted range of an event's ts (epoch seconds): not before this...
    event_ts_min: float = 0.0
    # ...and not more than this far ahead of the validating machine's clock.
    event_ts_max_future_s: float = 86_400.0

    # The most events a batch takes. It binds only when events queue up (catch-up after a
    # restart, a burst): then throughput is what counts, and a bigger batch merges more of
    # a user's events into one write (benchmarks/results/NOTES.md: 8,000 vs 2,000 measured
    # ~60k vs ~50k events/s at 10^6 items). At 60k events/s a full batch is ~130 ms.
    consume_batch_size: int = 8000
    # A trickle of events waits this long for a batch to fill: it bounds freshness
    # (benchmarks/results/SUMMARY.md). Under load batches fill before it expires.
    consume_batch_timeout_s: float = 0.01
    # How long the broker may hold a fetch waiting for data (librdkafka fetch.wait.max.ms).
    # None: the batch wait above. A separate knob: a broker that answers a fetch far behind
    # the tail later than this returns it empty (benchmarks/backlog.py shows a stall).
    consume_fetch_wait_ms: int | None = None
    # How often a busy consumer reports its totals to Redis (``ledrec status``); an idle
    # one reports at once. 0: after every batch (tests that watch progress closely).
    consumer_status_every_s: float = 0.5
    # A consumer with lag that received nothing for this long logs it and counts it
    # (ledrec_consumer_stalls_total); its lag is the gauge ledrec_consumer_lag.
    consumer_stall_s: float = 30.0
    # Durable commits: a batch's Redis writes must reach this many replicas (WAIT) before
    # its Kafka offsets are committed. 0 (off): acknowledged by the primary is enough,
    # which loses the writes a primary acknowledged and died before replicating.
    redis_min_replicas: int = Field(default=0, ge=0)
    redis_wait_timeout_ms: int = Field(default=1000, ge=1)

    key_prefix: str = "ledrec"
    request_queue: str = ""  # default: <key_prefix>:rpc:requests (``keyspace``)
    # How many request queues clients spread requests over (each scorer serves them all);
    # 0: one on a single Redis, ``keyspace.CLUSTER_QUEUES`` on a Redis Cluster.
    request_queues: int = Field(default=0, ge=0)
    request_timeout_s: float = 2.0
    serve_batch_size: int = 64
    # How long the serving thread polls its socket for the next batch before it sleeps.
    # 0: it sleeps at once. For a scorer with a core of its own: a sleeping scorer is woken
    # per request, which on the 2-core VM of benchmarks/results cost Redis ~30 µs of CPU per
    # request and doubled p50 (NOTES.md). Polling keeps that core busy while requests flow;
    # past this long without one it sleeps as usual. Never on a core shared with Redis.
    serve_spin_us: int = 0
    exact_index_max_items: int = 200_000  # above: IVF inner-product index
    ivf_nprobe: int = 32
    max_queue_length: int = 10_000  # a client refuses to enqueue past this (load shedding)

    # Model versions (stream/swap.py). Retained versions keep their sums maintained, so a
    # rollback to one is a pointer flip; older ones are retired and their sums dropped.
    retained_versions: int = 1
    # Quality gate: a candidate worse than the active version on any of these validation
    # metrics (by more than the tolerance) is not activated unless forced.
    gate_metrics: list[str] = Field(default_factory=lambda: ["ndcg@100", "recall@20"])
    gate_tolerance: float = 0.0
    # `ledrec models prune` keeps the newest this many staged/retired version directories.
    model_store_keep: int = 5
    backfill_batch: int = 500  # users per re-encoder round trip
    # The gateway's admin key (X-API-Key on activate / rollback); unset: those are refused.
    gateway_api_key: str | None = Field(default=None, repr=False)
    scorer_ack_timeout_s: float = 15.0  # how long an activation waits for scorers to switch

    @field_validator("key_prefix")
    @classmethod
    def _prefix_plain(cls, v: str) -> str:
        # braces would make a hash tag of the prefix (every key in one cluster slot), and
        # glob characters would widen the ACL patterns derived from it
        bad = sorted(set(v) & set("{}*?[]\\ "))
        if not v or bad or any(ord(c) < 32 for c in v):
            raise ValueError(f"key_prefix must be non-empty, without {' '.join(bad) or 'controls'}")
        return v

    @field_validator("event_weights")
    @classmethod
    def _weights_positive(cls, v: dict[str, float]) -> dict[str, float]:
        if not v or any(w <= 0 for w in v.values()):
            raise ValueError("event_weights needs at least one type, every weight > 0")
        return v

    def environment(self, **overrides: object) -> dict[str, str]:
        """``os.environ`` plus the variables that make a ``ledrec`` process started with it
        use exactly these settings (and ``overrides``)."""
        env = dict(os.environ)
        env["KAFKA_BOOTSTRAP"], env["REDIS_URL"] = self.kafka_bootstrap, self.redis_url
        data = self.model_dump(exclude={"kafka_bootstrap", "redis_url"}) | overrides
        for name, value in data.items():
            if value is None:
                continue
            env[f"LEDREC_{name.upper()}"] = (
                json.dumps(value) if isinstance(value, dict | list) else str(value)
            )
        return env

    @model_validator(mode="after")
    def _queue_follows_prefix(self) -> Settings:
        if not self.request_queue:
            self.request_queue = Keyspace(self.key_prefix).requests
        return self

    @property
    def fetch_wait_ms(self) -> int:
        """The broker fetch wait in effect (``consume_fetch_wait_ms`` or the batch wait)."""
        if self.consume_fetch_wait_ms is not None:
            return max(1, self.consume_fetch_wait_ms)
        return max(1, round(self.consume_batch_timeout_s * 1000))

    @property
    def keyspace(self) -> Keyspace:
        """Every Redis key name of this deployment."""
        return Keyspace(self.key_prefix, self.request_queue, queues=self.request_queues)

    def keyspace_of(self, client: object) -> Keyspace:
        """The keyspace on the kind of Redis ``client`` talks to (one Redis or a cluster)."""
        return Keyspace.of(client, self.key_prefix, self.request_queue, self.request_queues)

    @property
    def model_store_url(self) -> str:
        """The model store as given: a directory or an ``s3://bucket/prefix`` URL."""
        return str(self.model_store_path) if not self.model_store else self.model_store

    @property
    def model_store_path(self) -> Path:
        """The local directory versions are written to: the store itself, or (with an
        ``s3://`` store) where training writes a version before it is uploaded."""
        if not self.model_store or self.model_store.startswith("s3://"):
            return self.home / "models"
        return Path(self.model_store)
