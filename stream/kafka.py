"""confluent-kafka client configuration shared by every component."""

from __future__ import annotations

from typing import Any


def client_config(
    bootstrap: str, extra: dict[str, str] | None = None, **base: Any
) -> dict[str, Any]:
    """librdkafka settings: the component's defaults, then the user's passthrough (SASL/SSL...)."""
    # Idle connections closed by the broker are routine, not worth a log line each.
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "log.connection.close": False, **base}
    conf.update(extra or {})
    return conf
