"""Every Redis key name ledrec uses, in one place.

All keys start with the deployment's prefix, so deployments share a Redis without seeing
each other; the ACL rules (``ledrec.deploy.acl``) are derived from the patterns here.

On one Redis::

    <p>:u:<user>                 a user's state (a hash, ``ledrec.stream.state.schema``)
    <p>:rpc:requests             the request queue (``request_queue`` may name another;
                                 queue i > 0 of ``queues`` is ``<queue>:<i>``)
    <p>:rpc:reply:<request id>   one request's reply (expires)
    <p>:rpc:taking:<scorer>      what a scorer has taken and not yet answered (``:<i>``)
    <p>:consumers:<name>         a consumer's last status (expires)
    <p>:scorers:<name>           a scorer's heartbeat (expires)
    <p>:models:<name>            the registry: versions, the active pointer (``Registry``)
    <p>:models:events            pub/sub channel: every registry change
    <p>:models:lock              the swap lock
    <p>:models:backfill:<ver>    a back-fill's cursor and progress
    <p>:topics:<topic>           the events topic's incarnations (Kafka topic ids), and
                                 what the consumer groups committed in each
    <p>:catalog:titles           item id -> title, for people (``ledrec.stream.titles``)

On a Redis Cluster (``cluster=True``) keys that are used together share a hash tag, so
they live in one slot: a user's state is one key already; the registry, heartbeats, lock,
topic records and titles are tagged ``{<p>}`` (``<p>:{<p>}:models:info``...); each request
queue ``i`` is tagged ``{<p>:q<i>}`` together with its taking lists and the replies to its
requests (``<p>:rpc:{<p>:q<i>}:requests``, ``...:taking:<scorer>``, ``...:reply:<id>``), so
a scorer's take script and its replies touch one node per queue.
"""

from __future__ import annotations

from dataclasses import dataclass

# Request queues on a Redis Cluster when not set: enough for the queues' slots to spread
# over the primaries of a small cluster (docs/scaling.md).
CLUSTER_QUEUES = 8


def is_cluster(client: object) -> bool:
    """Whether ``client`` is a redis-py cluster client (sync or asyncio); duck-typed so this
    module does not import redis."""
    return getattr(client, "nodes_manager", None) is not None


@dataclass(frozen=True)
class Keyspace:
    """The key names of one deployment (``prefix``), on one Redis or on a Redis Cluster."""

    prefix: str = "ledrec"
    request_queue: str = ""  # default: <prefix>:rpc:requests (one Redis only)
    cluster: bool = False
    queues: int = 0  # request queues; 0: 1 on one Redis, CLUSTER_QUEUES on a cluster

    def __post_init__(self) -> None:
        if self.cluster and self.request_queue and self.request_queue != self._legacy_queue:
            raise ValueError(
                "request_queue cannot be renamed on a Redis Cluster: queues are named from"
                " the key prefix, so each shares a hash tag with its taking lists"
            )
        if self.queues < 0:
            raise ValueError("queues must be >= 0")

    @classmethod
    def of(cls, client: object, prefix: str, request_queue: str = "", queues: int = 0) -> Keyspace:
        """The keyspace of ``prefix`` on the kind of Redis ``client`` talks to."""
        cluster = is_cluster(client)
        if cluster and request_queue == f"{prefix}:rpc:requests":
            request_queue = ""  # the default name, filled in by Settings
        return cls(prefix, request_queue, cluster, queues)

    @property
    def _legacy_queue(self) -> str:
        return f"{self.prefix}:rpc:requests"

    @property
    def queue_count(self) -> int:
        """How many request queues there are."""
        return self.queues or (CLUSTER_QUEUES if self.cluster else 1)

    def _lane(self, i: int) -> str:
        """A queue's hash-tagged key stem (cluster)."""
        return f"{self.prefix}:rpc:{{{self.prefix}:q{i}}}"

    def queue(self, i: int = 0) -> str:
        """Request queue ``i`` (of ``queue_count``)."""
        if self.cluster:
            return f"{self._lane(i)}:requests"
        first = self.request_queue or self._legacy_queue
        return first if i == 0 else f"{first}:{i}"

    @property
    def request_queues(self) -> list[str]:
        """Every request queue, in order: clients spread requests over them, and every
        scorer serves all of them."""
        return [self.queue(i) for i in range(self.queue_count)]

    @property
    def requests(self) -> str:
        """The first request queue (the only one unless ``queues`` says otherwise)."""
        return self.queue(0)

    @property
    def _ctl(self) -> str:
        """Stem of the control keys: tagged together on a cluster."""
        return f"{self.prefix}:{{{self.prefix}}}" if self.cluster else self.prefix

    # -- users -----------------------------------------------------------------------------
    @property
    def user_prefix(self) -> str:
        """User state keys are this and the user id."""
        return f"{self.prefix}:u:"

    def user(self, user_id: str) -> str:
        return self.user_prefix + user_id

    def user_id(self, key: str | bytes) -> str:
        """The user id of a user state key."""
        text = key.decode() if isinstance(key, bytes) else key
        return text[len(self.user_prefix) :]

    @property
    def users(self) -> str:
        """SCAN/ACL pattern of every user state key."""
        return self.user_prefix + "*"

    # -- the RPC ---------------------------------------------------------------------------
    def reply(self, request_id: str, queue: int = 0) -> str:
        """The reply key of a request sent to queue ``queue`` (its slot, on a cluster)."""
        if self.cluster:
            return f"{self._lane(queue)}:reply:{request_id}"
        return f"{self.prefix}:rpc:reply:{request_id}"

    @property
    def replies(self) -> str:
        if self.cluster:
            return f"{self.prefix}:rpc:{{{self.prefix}:q*}}:reply:*"
        return f"{self.prefix}:rpc:reply:*"

    def taking(self, scorer: str, queue: int = 0) -> str:
        """What ``scorer`` took from queue ``queue`` and has not answered yet."""
        if self.cluster:
            return f"{self._lane(queue)}:taking:{scorer}"
        base = f"{self.prefix}:rpc:taking:{scorer}"
        return base if queue == 0 else f"{base}:{queue}"

    @property
    def takings(self) -> str:
        if self.cluster:
            return f"{self.prefix}:rpc:{{{self.prefix}:q*}}:taking:*"
        return f"{self.prefix}:rpc:taking:*"

    @property
    def replication_marker(self) -> str:
        """Stem of the expiring keys a consumer writes before ``WAIT`` (the hash tag of a key
        it wrote follows, so the marker is in that key's slot)."""
        return f"{self.prefix}:wait:"

    # -- processes' status -----------------------------------------------------------------
    def consumer(self, name: str) -> str:
        return f"{self._ctl}:consumers:{name}"

    @property
    def consumers(self) -> str:
        return f"{self._ctl}:consumers:*"

    def scorer(self, name: str) -> str:
        return f"{self._ctl}:scorers:{name}"

    @property
    def scorers(self) -> str:
        return f"{self._ctl}:scorers:*"

    @staticmethod
    def name_in(key: str | bytes, pattern: str) -> str:
        """The name a ``consumers`` / ``scorers`` key ends with."""
        text = key.decode() if isinstance(key, bytes) else key
        return text[len(pattern) - 1 :]

    # -- models ----------------------------------------------------------------------------
    def models(self, name: str) -> str:
        """A registry key (``versions``, ``active``, ``v:<version>``...)."""
        return f"{self._ctl}:models:{name}"

    @property
    def all_models(self) -> str:
        return f"{self._ctl}:models:*"

    @property
    def model_events(self) -> str:
        """The pub/sub channel of registry changes."""
        return self.models("events")

    @property
    def swap_lock(self) -> str:
        return self.models("lock")

    def backfill(self, version: str) -> str:
        return self.models(f"backfill:{version}")

    # -- the events topic -------------------------------------------------------------------
    def topic(self, name: str) -> str:
        """The record of a topic's incarnations (``ledrec.stream.incarnation``)."""
        return f"{self._ctl}:topics:{name}"

    @property
    def topics(self) -> str:
        return f"{self._ctl}:topics:*"

    # -- the catalog ------------------------------------------------------------------------
    @property
    def titles(self) -> str:
        """The hash of item id -> title (``ledrec.stream.titles``)."""
        return f"{self._ctl}:catalog:titles"

    @property
    def everything(self) -> str:
        return f"{self.prefix}:*"
