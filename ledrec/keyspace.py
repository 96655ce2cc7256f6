"""Every Redis key name ledrec uses, in one place.

All keys start with the deployment's prefix, so deployments share a Redis without seeing
each other; the ACL rules (``ledrec.deploy.acl``) are derived from the patterns here. This
is also where the Redis Cluster work puts hash tags::

    <p>:u:<user>                 a user's state (a hash, ``ledrec.stream.state.schema``)
    <p>:rpc:requests             the request queue (``request_queue`` may name another)
    <p>:rpc:reply:<request id>   one request's reply (expires)
    <p>:rpc:taking:<scorer>      what a scorer has taken and not yet answered
    <p>:consumers:<name>         a consumer's last status (expires)
    <p>:scorers:<name>           a scorer's heartbeat (expires)
    <p>:models:<name>            the registry: versions, the active pointer (``Registry``)
    <p>:models:events            pub/sub channel: every registry change
    <p>:models:lock              the swap lock
    <p>:models:backfill:<ver>    a back-fill's cursor and progress
    <p>:topics:<topic>           the events topic's incarnations (Kafka topic ids), and
                                 what the consumer groups committed in each
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keyspace:
    """The key names of one deployment (``prefix``)."""

    prefix: str = "ledrec"
    request_queue: str = ""  # default: <prefix>:rpc:requests

    @property
    def requests(self) -> str:
        """The request queue clients push to and scorers take from."""
        return self.request_queue or f"{self.prefix}:rpc:requests"

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
    def reply(self, request_id: str) -> str:
        return f"{self.prefix}:rpc:reply:{request_id}"

    @property
    def replies(self) -> str:
        return f"{self.prefix}:rpc:reply:*"

    def taking(self, scorer: str) -> str:
        return f"{self.prefix}:rpc:taking:{scorer}"

    @property
    def takings(self) -> str:
        return f"{self.prefix}:rpc:taking:*"

    # -- processes' status -----------------------------------------------------------------
    def consumer(self, name: str) -> str:
        return f"{self.prefix}:consumers:{name}"

    @property
    def consumers(self) -> str:
        return f"{self.prefix}:consumers:*"

    def scorer(self, name: str) -> str:
        return f"{self.prefix}:scorers:{name}"

    @property
    def scorers(self) -> str:
        return f"{self.prefix}:scorers:*"

    @staticmethod
    def name_in(key: str | bytes, pattern: str) -> str:
        """The name a ``consumers`` / ``scorers`` key ends with."""
        text = key.decode() if isinstance(key, bytes) else key
        return text[len(pattern) - 1 :]

    # -- models ----------------------------------------------------------------------------
    def models(self, name: str) -> str:
        """A registry key (``versions``, ``active``, ``v:<version>``...)."""
        return f"{self.prefix}:models:{name}"

    @property
    def all_models(self) -> str:
        return f"{self.prefix}:models:*"

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
        return f"{self.prefix}:topics:{name}"

    @property
    def topics(self) -> str:
        return f"{self.prefix}:topics:*"

    @property
    def everything(self) -> str:
        return f"{self.prefix}:*"
