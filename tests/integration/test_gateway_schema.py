"""The gateway against its own OpenAPI document, property-based (schemathesis): requests
generated from the schema, sent over HTTP to the gateway on a real stack (consumer and
scorer running, a model active); every answer must conform to the document (status code
declared, body matching its schema, no server error)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from ledrec.connect import ensure_event_topics, redis_client
from ledrec.settings import Settings
from tests.conftest import KafkaEndpoint, RedisEndpoint
from tests.helpers import publish_model, random_model, running_consumer, running_server
from tests.integration.test_gateway import running_gateway

pytestmark = pytest.mark.gateway


@pytest.fixture(scope="module")
def gateway_schema(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisEndpoint,
    kafka_broker: KafkaEndpoint,
) -> Iterator[object]:
    tag = uuid.uuid4().hex[:8]
    home: Path = tmp_path_factory.mktemp("gateway")
    stack = Settings(
        kafka_bootstrap=kafka_broker.bootstrap,
        redis_url=redis_server.url,
        home=home,
        events_topic=f"ledrec.events.gw-{tag}",
        dead_letter_topic=f"ledrec.dlq.gw-{tag}",
        consumer_group=f"ledrec-state-gw-{tag}",
        key_prefix=f"t:gw-{tag}",
        gateway_api_key="admin-key",
    )
    ensure_event_topics(stack, stack.kafka_bootstrap)
    client = redis_client(stack.redis_url)
    publish_model(stack, client, random_model(n_items=100, dim=8))
    with (
        running_consumer(stack, client),
        running_server(stack, client),
        running_gateway(stack) as http,
    ):
        yield schemathesis.openapi.from_url(f"{http.base_url}/openapi.json")
    client.close()


def test_the_gateway_conforms_to_its_openapi_document(gateway_schema: object) -> None:
    """Each operation of the document, ~30 generated requests each. (Driven by hand:
    schemathesis' lazy pytest loader uses a pytest internal that pytest 9 removed.)"""
    checked = []
    for result in gateway_schema.get_all_operations():  # type: ignore[attr-defined]
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
        def conforms(case: schemathesis.Case) -> None:
            case.call_and_validate()

        conforms()
        checked.append(f"{operation.method.upper()} {operation.path}")
    assert len(checked) == 12, checked  # every operation of the document
