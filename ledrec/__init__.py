"""ledrec: a streaming real-time recommender built on LED (Lightweight Encoder-Decoder).

The public API. Names load on first use, so ``import ledrec`` (and ``ledrec.stream.events``)
stays light: the event schema needs neither Redis nor faiss.

    import ledrec

    with ledrec.EventPublisher.from_settings() as publisher:
        publisher.send("alice", "item-42", "click")
    with ledrec.RecommenderClient.from_settings() as client:
        client.recommend("alice", k=10)
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import version as _version
from typing import TYPE_CHECKING, Any

__version__ = _version("ledrec")

# public name -> the module that defines it
_EXPORTS = {
    "ArtifactError": "ledrec.stream.artifact",
    "AsyncRecommenderClient": "ledrec.stream.client",
    "BadRequest": "ledrec.stream.client",
    "ConnectError": "ledrec.errors",
    "Event": "ledrec.stream.events",
    "EventError": "ledrec.stream.events",
    "EventPublisher": "ledrec.stream.producer",
    "LedrecError": "ledrec.errors",
    "Model": "ledrec.stream.artifact",
    "Overloaded": "ledrec.stream.client",
    "PublishError": "ledrec.stream.producer",
    "RecommendError": "ledrec.stream.client",
    "RecommenderClient": "ledrec.stream.client",
    "Recommendations": "ledrec.stream.client",
    "RegistryError": "ledrec.stream.registry",
    "Settings": "ledrec.settings",
    "StackNotRunning": "ledrec.errors",
    "Timeout": "ledrec.stream.client",
    "Unavailable": "ledrec.stream.client",
    "load_model": "ledrec.stream.artifact",
    "save_model": "ledrec.stream.artifact",
}

__all__ = [
    "ArtifactError",
    "AsyncRecommenderClient",
    "BadRequest",
    "ConnectError",
    "Event",
    "EventError",
    "EventPublisher",
    "LedrecError",
    "Model",
    "Overloaded",
    "PublishError",
    "RecommendError",
    "Recommendations",
    "RecommenderClient",
    "RegistryError",
    "Settings",
    "StackNotRunning",
    "Timeout",
    "Unavailable",
    "__version__",
    "load_model",
    "save_model",
]

if TYPE_CHECKING:
    from ledrec.errors import ConnectError, LedrecError, StackNotRunning
    from ledrec.settings import Settings
    from ledrec.stream.artifact import ArtifactError, Model, load_model, save_model
    from ledrec.stream.client import (
        AsyncRecommenderClient,
        BadRequest,
        Overloaded,
        Recommendations,
        RecommenderClient,
        RecommendError,
        Timeout,
        Unavailable,
    )
    from ledrec.stream.events import Event, EventError
    from ledrec.stream.producer import EventPublisher, PublishError
    from ledrec.stream.registry import RegistryError


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ledrec' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # once: later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
