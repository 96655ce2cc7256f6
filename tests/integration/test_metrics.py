"""What an operator scrapes, over HTTP from real ``ledrec consume`` / ``ledrec serve``
processes: per-partition lag, the event-freshness histogram and events of unknown items on
a consumer; the per-request latency histogram, the serving version, queue depths,
popularity fallbacks by reason and unknown request items on a scorer."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import redis

from ledrec.deploy.stack import free_port
from ledrec.settings import Settings
from ledrec.stream.client import RecommenderClient
from ledrec.stream.producer import EventPublisher
from tests.helpers import (
    applied_by,
    publish_model,
    publish_stream,
    random_model,
    settings_env,
    start_cli,
    wait_until,
)


def _value(text: str, sample: str) -> float:
    """The value of the metric line starting with ``sample`` (name and labels)."""
    match = re.search(rf"^{re.escape(sample)} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match, f"{sample} not in the metrics:\n{text[:3000]}"
    return float(match.group(1))


def test_consumer_and_scorer_metrics_over_http(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    model = publish_model(settings, redis_client, random_model(n_items=100, dim=8))
    env = settings_env(settings)
    consumer_port, scorer_port = free_port(), free_port()
    log = tmp_path / "services.log"
    consumer = start_cli(["consume", "--metrics-port", str(consumer_port)], env, log)
    scorer = start_cli(["serve", "--metrics-port", str(scorer_port)], env, log)
    try:
        publish_stream(settings, 2000, 50, 100, seed=1)
        # items the model does not know (a catalog newer than the model): 3 for a newcomer
        # who has only these, 2 for a known user
        with EventPublisher(settings, settings.kafka_bootstrap) as publisher:
            for user, item in [
                ("newcomer", "new-1"),
                ("newcomer", "new-2"),
                ("newcomer", "new-1"),
                ("u0", "new-3"),
                ("u0", "new-4"),
            ]:
                publisher.send(user, item, "view", ts=1.0)  # fmt: skip
        wait_until(lambda: applied_by(redis_client, settings, consumer.pid) >= 2005, 60, "ingest")
        rpc = RecommenderClient(redis_client, settings.request_queue, settings.key_prefix, 5.0)
        for n in range(20):
            assert rpc.request(user_id=f"u{n}").source == "state"
        assert rpc.request(user_id="nobody-knows-me").source == "popularity"
        # nothing the model knows: ranked by popularity, and said so (was "state", uncounted)
        assert rpc.request(user_id="newcomer").source == "popularity"
        assert rpc.request(items=["new-1", "new-2"]).source == "popularity"
        assert rpc.request(items=["i1", "new-1"]).source == "items"

        def scrape(port: int) -> str:
            return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5.0).text

        def caught_up() -> bool:
            # measured once a second: a scrape right after the last batch may see it busy
            page = scrape(consumer_port)
            if "ledrec_consumer_partition_lag{" not in page:
                return False
            return all(
                _value(page, f'ledrec_consumer_partition_lag{{partition="{partition}"}}') == 0
                for partition in range(settings.events_partitions)
            )

        wait_until(caught_up, 30, "every partition's lag at 0", step=0.2)
        consumed = scrape(consumer_port)
        assert _value(consumed, "ledrec_event_freshness_seconds_count") >= 2
        assert _value(consumed, 'ledrec_event_freshness_seconds_bucket{le="+Inf"}') >= 2
        unknown = f'ledrec_unknown_item_events_total{{version="{model.version}"}}'
        assert _value(consumed, unknown) == 5

        served = scrape(scorer_port)
        assert _value(served, "ledrec_request_seconds_count") >= 24
        assert _value(served, f'ledrec_serving_version{{version="{model.version}"}}') == 1
        assert _value(served, 'ledrec_popularity_fallbacks_total{reason="no_state"}') == 1
        assert _value(served, 'ledrec_popularity_fallbacks_total{reason="no_known_item"}') == 2
        assert _value(served, "ledrec_request_unknown_items_total") == 3
        queue = settings.keyspace_of(redis_client).requests
        assert _value(served, f'ledrec_request_queue_depth{{queue="{queue}"}}') == 0

        # `ledrec status`: the same deployment at a glance
        run = subprocess.run([sys.executable, "-m", "ledrec.cli", "status", "--json"], env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert run.returncode == 0, run.stderr
        status = json.loads(run.stdout)
        assert status["active"] == model.version
        (consumer_status,) = [
            c for n, c in status["consumers"].items() if n.endswith(f":{consumer.pid}")
        ]
        assert consumer_status["applied"] == 2005 and consumer_status["lag"] == 0
        assert [s["serving"] for s in status["scorers"].values()] == [model.version]
        assert status["queues"] == {queue: 0}
        text = subprocess.run([sys.executable, "-m", "ledrec.cli", "status"], env=env,
                              capture_output=True, text=True, timeout=60).stdout  # fmt: skip
        assert f"active version  {model.version}" in text and "consumers       1" in text
    finally:
        for proc in (consumer, scorer):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
