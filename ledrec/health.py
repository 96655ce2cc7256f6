"""Health checks of the running services (``ledrec health ROLE``: the compose healthchecks).

Each asks the service itself, over the port it already exposes, a question that fails when
the service is not doing its job (not merely when its process is gone):

- ``consumer``: its metrics page answers and it polled the broker within ``max_age_s``
  (``ledrec_consumer_last_poll_timestamp_seconds``: a consumer stuck on an unreachable
  Redis or broker stops polling);
- ``scorer``: its metrics page answers and it serves a model version
  (``ledrec_serving_version`` at 1);
- ``gateway``: ``/readyz`` answers 200 (Redis, an active model, a scorer, the broker);
- ``trainer``: its metrics page answers with the trainer's counters.

Standard library only (urllib), so the check runs in the service's image as is.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

ROLES = ("consumer", "scorer", "gateway", "trainer")


class Unhealthy(Exception):
    """The service answered, or not, in a way that says it is not doing its job."""


def _get(url: str, timeout: float) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return int(reply.status), reply.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as e:
        raise Unhealthy(f"{url}: no answer ({e})") from None


def _samples(url: str, timeout: float) -> dict[str, list[tuple[dict[str, str], float]]]:
    status, text = _get(url, timeout)
    if status != 200:
        raise Unhealthy(f"{url}: HTTP {status}")
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def check(role: str, host: str, port: int, max_age_s: float = 60.0, timeout: float = 3.0) -> str:
    """What is healthy about the ``role`` service at ``host:port``; raises ``Unhealthy``."""
    base = f"http://{host}:{port}"
    if role == "gateway":
        status, body = _get(f"{base}/readyz", timeout)
        if status != 200:
            raise Unhealthy(f"gateway not ready (HTTP {status}): {body[:300]}")
        return "gateway ready"
    samples = _samples(f"{base}/metrics", timeout)
    if role == "consumer":
        polled = samples.get("ledrec_consumer_last_poll_timestamp_seconds")
        if not polled or polled[0][1] <= 0:
            raise Unhealthy("consumer has not polled the broker yet")
        age = time.time() - polled[0][1]
        if age > max_age_s:
            raise Unhealthy(f"consumer last polled the broker {age:.0f}s ago")
        return f"consumer polled {age:.1f}s ago"
    if role == "scorer":
        serving = [
            labels.get("version", "?")
            for labels, value in samples.get("ledrec_serving_version", [])
            if value == 1
        ]
        if not serving:
            raise Unhealthy("scorer serves no model version yet")
        return f"scorer serving {serving[0]}"
    if role == "trainer":
        if "ledrec_trainer_cycles_total" not in samples:
            raise Unhealthy("no trainer metrics on that port")
        return "trainer answers"
    raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
