"""confluent-kafka client configuration shared by every component."""

from __future__ import annotations

from typing import Any

# Settings the delivery guarantees rest on (commit only after the Redis write; idempotent,
# fully acknowledged produce): the passthrough may not change them behind the code's back.
GUARANTEES = frozenset({"enable.auto.commit", "enable.idempotence", "acks"})


def client_config(
    bootstrap: str, extra: dict[str, str] | None = None, **base: Any
) -> dict[str, Any]:
    """librdkafka settings: the component's defaults, then the user's passthrough (SASL/SSL...).

    Raises ValueError if the passthrough would change one of the component's ``GUARANTEES``.
    """
    # Idle connections closed by the broker are routine, not worth a log line each.
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "log.connection.close": False, **base}
    for key in GUARANTEES & set(extra or {}) & set(base):
        if str((extra or {})[key]).lower() != str(base[key]).lower():
            raise ValueError(f"kafka_config may not set {key} (the delivery guarantees need it)")
    conf.update(extra or {})
    return conf
