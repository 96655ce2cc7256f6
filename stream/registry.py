"""The model registry in Redis: which versions exist, which are live, which one serves.

Keys (under the deployment's prefix)::

    models:info      hash version -> JSON {state, path, metrics, registered_at, ...}
    models:active    the version that answers requests (one atomic pointer)
    models:live      set of versions whose sums consumers maintain (active, warming, retained)
    models:events    pub/sub channel announcing every change
    scorers:<name>   what each running scorer serves and has prepared (expiring heartbeat)

Lifecycle (``stream.swap`` drives it): staged → warming (live: consumers dual-write it, the
re-encoder back-fills it, scorers load it) → active (pointer flip) → retained (still live,
so a rollback is a flip) → retired (not live; its sums are dropped).

A version's artifacts live in the model store (``stream.artifact``, ``stream.model_store``);
the registry only names them: ``path`` is the version's location, a directory or an
``s3://`` URL (``ModelStores`` resolves either).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import redis

from ledrec.errors import LedrecError
from ledrec.keyspace import Keyspace
from ledrec.stream.artifact import ArtifactError, Model, load_model
from ledrec.stream.events import has_control_character
from ledrec.stream.model_store import ModelStores

log = logging.getLogger(__name__)

STATES = ("staged", "warming", "active", "retained", "retired")


class RegistryError(LedrecError, RuntimeError):
    """A registry operation that cannot be done (unknown version, refused activation...)."""


class Registry:
    """Model versions and the active pointer, in Redis."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.keys = Keyspace.of(client, prefix)

    def _k(self, name: str) -> str:
        return self.keys.models(name)

    @property
    def channel(self) -> str:
        return self.keys.model_events

    def register(self, model: Model, state: str = "staged", location: str | None = None) -> None:
        """Record a saved model version: its directory (``model.path``) or its ``location``
        in the store it was published to (``ModelStores.publish``)."""
        if not model.version or has_control_character(model.version):
            # user states list versions joined by a control character (stream/state/schema.py)
            raise RegistryError(f"invalid model version name {model.version!r}")
        info = {
            "state": state,
            "path": location or str(model.path),
            "metrics": model.metrics,
            "dim": model.dim,
            "n_items": model.n_items,
            "parent": model.parent,
            "created_at": model.created_at,
            "source": model.provenance.get("source", ""),
            # the active version scored on this version's validation users (like for like)
            "gate": model.provenance.get("gate"),
            "registered_at": time.time(),
        }
        self.client.hset(self._k("info"), model.version, json.dumps(info))
        self._announce("registered", model.version)

    def info(self, version: str) -> dict[str, Any]:
        raw = self.client.hget(self._k("info"), version)
        if raw is None:
            raise RegistryError(f"unknown model version {version!r}")
        info: dict[str, Any] = json.loads(raw)
        return info

    def versions(self) -> dict[str, dict[str, Any]]:
        raw = self.client.hgetall(self._k("info"))
        return {_s(k): json.loads(v) for k, v in raw.items()}

    def set_state(self, version: str, state: str) -> None:
        if state not in STATES:
            raise RegistryError(f"unknown state {state!r}")
        info = self.info(version)
        info["state"] = state
        info[f"{state}_at"] = time.time()
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self._k("info"), version, json.dumps(info))
        if state in ("warming", "active", "retained"):
            pipe.sadd(self._k("live"), version)
        else:
            pipe.srem(self._k("live"), version)
        pipe.execute()
        self._announce(state, version)

    def activate(self, version: str) -> str | None:
        """Flip the active pointer to ``version`` in one transaction; returns the previous one.

        The previously active version becomes ``retained`` (still live) in the same
        transaction, so there is no instant without an active, maintained version.
        """
        self.info(version)  # must exist
        active_key, info_key = self._k("active"), self._k("info")
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(active_key, info_key)  # type: ignore[no-untyped-call]
                    raw = pipe.get(active_key)
                    previous = _s(raw) if raw is not None else None
                    now = time.time()
                    info = json.loads(pipe.hget(info_key, version) or b"{}")
                    info.update(state="active", active_at=now)
                    before: dict[str, Any] | None = None
                    if previous is not None and previous != version:
                        before = json.loads(pipe.hget(info_key, previous) or b"{}")
                        before.update(state="retained", retained_at=now)
                    pipe.multi()
                    pipe.set(active_key, version)
                    pipe.sadd(self._k("live"), version)
                    pipe.hset(info_key, version, json.dumps(info))
                    if previous is not None and before is not None:
                        pipe.hset(info_key, previous, json.dumps(before))
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue  # a concurrent registry change: read again
        self._announce("active", version)
        return previous

    def retained(self) -> list[str]:
        """Retained versions, most recently active first (the rollback targets)."""
        versions = self.versions()
        retained = [v for v, info in versions.items() if info["state"] == "retained"]
        return sorted(retained, key=lambda v: versions[v].get("retained_at", 0.0), reverse=True)

    def check_gate(self, candidate: str, metrics: list[str], tolerance: float = 0.0) -> None:
        """Raise RegistryError if ``candidate`` is worse than the active version.

        Worse means: below the active version's value (minus ``tolerance``) on any of
        ``metrics`` that the active version has, or missing one of them. When the candidate
        was trained with the active version as its baseline, both are compared on the same
        validation users (``gate`` in its info); otherwise each on its own validation users.
        """
        active = self.active()
        if active is None or active == candidate:
            return
        info = self.info(candidate)
        gate = info.get("gate") or {}
        if gate.get("active_version") == active:
            mine, theirs = gate["candidate"], gate["active"]
        else:
            mine, theirs = info["metrics"], self.info(active)["metrics"]
        for name in metrics:
            if name not in theirs:
                continue
            if name not in mine:
                raise RegistryError(
                    f"quality gate: {candidate} has no {name} to compare with the active "
                    f"{active}'s {theirs[name]:.4f}; use --force to activate anyway"
                )
            if mine[name] < theirs[name] - tolerance:
                raise RegistryError(
                    f"quality gate: {candidate} is worse than the active {active} on {name} "
                    f"({mine[name]:.4f} < {theirs[name]:.4f}); use --force to activate anyway"
                )

    def active(self) -> str | None:
        raw = self.client.get(self._k("active"))
        return _s(raw) if raw is not None else None

    def live(self) -> list[str]:
        return sorted(_s(v) for v in self.client.smembers(self._k("live")))

    def location(self, version: str) -> str:
        """Where the version's artifacts are: a directory or an ``s3://`` URL."""
        return str(self.info(version)["path"])

    def path(self, version: str) -> Path:
        """The version's directory (a local store; ``location`` for any store)."""
        return Path(self.location(version))

    # -- scorers -------------------------------------------------------------------------
    def report_scorer(
        self,
        name: str,
        serving: str | None,
        prepared: list[str],
        ttl_s: float,
        stats: dict[str, Any] | None = None,
    ) -> None:
        """A scorer's heartbeat: the version it serves, those it has ready, and ``stats``
        (requests answered, recent latency) for ``ledrec status`` and the dashboard."""
        status = {
            **(stats or {}),
            "serving": serving,
            "prepared": prepared,
            "updated_at": time.time(),
        }
        self.client.set(self.keys.scorer(name), json.dumps(status), px=int(ttl_s * 1000))

    def scorers(self) -> dict[str, dict[str, Any]]:
        """Every scorer whose heartbeat has not expired (name -> status)."""
        out: dict[str, dict[str, Any]] = {}
        pattern = self.keys.scorers
        for key in self.client.scan_iter(match=pattern):
            raw = self.client.get(key)
            if raw is not None:
                out[self.keys.name_in(key, pattern)] = json.loads(raw)
        return out

    def _announce(self, what: str, version: str) -> None:
        self.client.publish(self.channel, json.dumps({"event": what, "version": version}))


class ModelCache:
    """Loads model versions from the store once and keeps them in memory."""

    def __init__(self, registry: Registry, stores: ModelStores | None = None) -> None:
        self.registry = registry
        self.stores = stores  # None: local directories only
        self._models: dict[str, Model] = {}
        self._refused: set[str] = set()

    def get(self, version: str) -> Model:
        model = self._models.get(version)
        if model is None:
            location = self.registry.location(version)
            model = self.stores.load(location) if self.stores else load_model(Path(location))
            self._models[version] = model
        return model

    def live_models(self) -> list[Model]:
        """The models whose sums must be maintained, loading any new one.

        A live version whose artifacts do not load is left out (logged once, never re-read:
        artifacts are immutable), so a corrupt version cannot stop the consumers.
        """
        live = self.registry.live()
        for gone in set(self._models) - set(live):
            del self._models[gone]
        models = []
        for version in live:
            if version in self._refused:
                continue
            try:
                models.append(self.get(version))
            except ArtifactError as e:
                self._refused.add(version)
                log.error("model version refused", extra={"version": version, "error": str(e)})
        return models


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
