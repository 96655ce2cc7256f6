"""`ledrec health`'s checks against real metrics pages (prometheus_client's HTTP server on a
private registry): a consumer that stopped polling and a scorer serving nothing are
unhealthy; nobody answering is unhealthy."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from ledrec.deploy.stack import free_port
from ledrec.health import Unhealthy, check


@pytest.fixture
def page() -> Iterator[tuple[CollectorRegistry, int]]:
    """A metrics page of its own: its registry and port."""
    registry, port = CollectorRegistry(), free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield registry, port
    server.shutdown()
    thread.join(5)


def test_consumer_is_healthy_while_it_polls(page: tuple[CollectorRegistry, int]) -> None:
    registry, port = page
    with pytest.raises(Unhealthy, match="not polled"):
        check("consumer", "127.0.0.1", port)  # no gauge yet
    polled = Gauge("ledrec_consumer_last_poll_timestamp_seconds", "", registry=registry)
    polled.set(time.time())
    assert check("consumer", "127.0.0.1", port).startswith("consumer polled")
    polled.set(time.time() - 120)
    with pytest.raises(Unhealthy, match="last polled the broker 12"):
        check("consumer", "127.0.0.1", port, max_age_s=60)


def test_scorer_is_healthy_once_it_serves_a_version(page: tuple[CollectorRegistry, int]) -> None:
    registry, port = page
    serving = Gauge("ledrec_serving_version", "", ["version"], registry=registry)
    serving.labels("v1").set(0)
    with pytest.raises(Unhealthy, match="serves no model"):
        check("scorer", "127.0.0.1", port)
    serving.labels("v2").set(1)
    assert check("scorer", "127.0.0.1", port) == "scorer serving v2"


def test_nobody_listening_is_unhealthy() -> None:
    with pytest.raises(Unhealthy, match="no answer"):
        check("scorer", "127.0.0.1", free_port(), timeout=1.0)
    with pytest.raises(Unhealthy, match="no answer"):
        check("gateway", "127.0.0.1", free_port(), timeout=1.0)
