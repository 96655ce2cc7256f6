"""docker-compose.yml's services started without Docker: each service's own ``command`` and
``healthcheck`` (read from the file), run as ``ledrec`` processes with the compose
environment, its addresses rewritten to this test's Redis, Kafka-protocol broker and S3
server (moto), and its fixed ports to free ones. Every service has a home of its own, so
the scorer loads the bootstrap's model from S3 as on another host.

Shown: the gateway is not ready before the bootstrap and ready after it; recommendations
come with a version; an event posted to the gateway changes that user's recommendations;
the consumer's and the scorer's metrics pages carry what Prometheus scrapes
(``deploy/prometheus.yml``, checked against the services' ports)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from ledrec.deploy.stack import free_port
from ledrec.settings import Settings
from ledrec.stream.registry import Registry
from tests.conftest import S3_CREDENTIALS
from tests.helpers import wait_until

pytestmark = [pytest.mark.compose, pytest.mark.gateway, pytest.mark.s3, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PORT_FLAGS = ("--port", "--metrics-port")
_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def _interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` (from this environment, else the default)."""
    return _VAR.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), value)


class Service:
    """One compose service as this test runs it."""

    def __init__(self, name: str, spec: dict[str, Any], env: dict[str, str], log: Path):
        self.name, self.spec, self.env, self.log = name, spec, env, log
        # Each fixed port of the service (its command's and its healthcheck's) -> a free one.
        self.ports = {
            port: free_port() for port in _ports(spec["command"]) + _ports(self.health_args)
        }

    @property
    def health_args(self) -> list[str]:
        test = self.spec.get("healthcheck", {}).get("test", [])
        if not test:
            return []
        assert test[:2] == ["CMD", "ledrec"], f"{self.name}: healthcheck {test} is not ledrec's"
        return [str(a) for a in test[2:]]

    def argv(self, args: list[str]) -> list[str]:
        out = [str(a) for a in args]
        for i, a in enumerate(out[:-1]):
            if a in PORT_FLAGS:
                out[i + 1] = str(self.ports[int(out[i + 1])])
        return [sys.executable, "-m", "ledrec.cli", *out]

    def port(self, compose_port: int) -> int:
        return self.ports[compose_port]

    @contextmanager
    def running(self) -> Iterator[subprocess.Popen[bytes]]:
        with open(self.log, "ab") as out:
            proc = subprocess.Popen(
                self.argv(self.spec["command"]), env=self.env, stdout=out, stderr=out
            )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def run(self, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(self.spec["command"]), env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip

    def healthy(self) -> bool:
        check = subprocess.run(
            self.argv(self.health_args), env=self.env, capture_output=True, text=True, timeout=30
        )
        return check.returncode == 0


def _ports(args: list[Any]) -> list[int]:
    args = [str(a) for a in args]
    return [int(args[i + 1]) for i, a in enumerate(args[:-1]) if a in PORT_FLAGS]


def _environment(
    spec: dict[str, Any], settings: Settings, s3_server: str, bucket: str, home: Path
) -> dict[str, str]:
    """The service's compose environment, addresses rewritten, names made this test's own."""
    compose_env = {k: _interpolate(str(v)) for k, v in spec["environment"].items()}
    assert compose_env["LEDREC_MODEL_STORE"].startswith("s3://")
    store = re.sub(r"^s3://[^/]+", f"s3://{bucket}", compose_env["LEDREC_MODEL_STORE"])
    compose_env.update(
        KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        REDIS_URL=settings.redis_url,
        LEDREC_S3_ENDPOINT_URL=s3_server,
        LEDREC_MODEL_STORE=store,
    )
    isolation = {  # the session's servers are shared with other tests
        "LEDREC_HOME": str(home),
        "LEDREC_KEY_PREFIX": settings.key_prefix,
        "LEDREC_EVENTS_TOPIC": settings.events_topic,
        "LEDREC_DEAD_LETTER_TOPIC": settings.dead_letter_topic,
        "LEDREC_CONSUMER_GROUP": settings.consumer_group,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDREC_", "AWS_"))}
    return env | compose_env | isolation


def _load_compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_prometheus_scrapes_every_metrics_port_of_the_compose_services() -> None:
    services = _load_compose()["services"]
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    scraped = {
        (name, sd["port"])
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        for name in sd["names"]
    }
    exposed = set()
    for name, spec in services.items():
        command = [str(a) for a in spec.get("command", [])]
        if "--metrics-port" in command:
            assert command[command.index("--metrics-host") + 1] == "0.0.0.0", name
            exposed.add((name, int(command[command.index("--metrics-port") + 1])))
    assert exposed == scraped and {n for n, _ in exposed} >= {"consumer", "scorer", "gateway"}
    assert (
        "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
        in (services["prometheus"]["volumes"])
    )
    cluster = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())["services"]
    for name in ("consumer", "scorer", "gateway"):  # they wait for the first model
        condition = services[name]["depends_on"]["bootstrap"]["condition"]
        assert condition == "service_completed_successfully"
        assert cluster[name]["depends_on"]["bootstrap"]["condition"] == condition
    for name in ("bootstrap", "consumer", "scorer", "gateway"):  # the scaled-out variant
        assert cluster[name]["command"] == services[name]["command"], name
        assert cluster[name].get("healthcheck") == services[name].get("healthcheck"), name


def test_the_compose_services_serve_without_docker(
    settings: Settings, redis_client: redis.Redis, s3_server: str, tmp_path: Path
) -> None:
    compose = _load_compose()["services"]
    bucket = f"compose-{tmp_path.name[-20:].lower().replace('_', '-')}".strip("-")
    assert set(S3_CREDENTIALS) <= set(compose["bootstrap"]["environment"])  # the same names
    svc = {
        name: Service(
            name,
            compose[name],
            _environment(compose[name], settings, s3_server, bucket, tmp_path / name),
            tmp_path / f"{name}.log",
        )
        for name in ("bootstrap", "consumer", "scorer", "gateway")
    }
    gateway = svc["gateway"]
    base = f"http://127.0.0.1:{gateway.port(8000)}"
    http = httpx.Client(base_url=base, timeout=10.0)

    def logs() -> str:
        return "\n".join(
            f"--- {s.name}\n{s.log.read_text()[-3000:]}" for s in svc.values() if s.log.exists()
        )

    with ExitStack() as stack:
        stack.callback(lambda: print(logs()))  # shown by pytest when the test fails
        for name in ("consumer", "scorer", "gateway"):
            stack.enter_context(svc[name].running())

        def answers() -> bool:
            try:
                return http.get("/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, 60, "the gateway's /healthz", 0.2)
        # No model yet: not ready, and the scorer's healthcheck says so.
        not_ready = http.get("/readyz")
        assert not_ready.status_code == 503, not_ready.text
        assert not_ready.json()["checks"]["model"] == "no active model"
        assert not svc["scorer"].healthy()

        boot = svc["bootstrap"].run(timeout=120)
        assert boot.returncode == 0, boot.stdout[-2000:] + boot.stderr[-2000:]
        assert "synthetic data (--or-synthetic)" in boot.stdout  # no MovieLens mounted here
        active = Registry(redis_client, settings.key_prefix).active()
        assert active is not None
        assert (
            Registry(redis_client, settings.key_prefix)
            .location(active)
            .startswith(f"s3://{bucket}/")
        )

        wait_until(lambda: http.get("/readyz").status_code == 200, 60, "readiness", 0.2)
        for name in ("consumer", "scorer", "gateway"):
            wait_until(svc[name].healthy, 30, f"{name}'s healthcheck", 0.5)
        # the scorer's host loaded the version from the store: its own cache has it
        assert (tmp_path / "scorer" / "model-cache" / active / "manifest.json").is_file()

        user = "compose-user"
        first = http.get(f"/v1/users/{user}/recommendations", params={"k": 5})
        assert first.status_code == 200, first.text
        body = first.json()
        assert len(body["items"]) == 5 and body["version"] == active, body
        before = [i["item_id"] for i in body["items"]]

        # The user views the items shown: the consumer folds them into their state, and
        # the next answer (seen items excluded, a new taste vector) differs.
        events = [{"user_id": user, "item_id": item, "type": "view"} for item in before]
        posted = http.post("/v1/events", json=events)
        assert posted.status_code == 200 and posted.json()["accepted"] == 5, posted.text

        def changed() -> bool:
            reply = http.get(f"/v1/users/{user}/recommendations", params={"k": 5}).json()
            return reply["source"] == "state" and [i["item_id"] for i in reply["items"]] != before

        wait_until(changed, 60, "the posted events to change the recommendations", 0.2)

        def metrics(service: str, port: int) -> str:
            return httpx.get(f"http://127.0.0.1:{svc[service].port(port)}/metrics").text

        def consumer_metrics_complete() -> bool:
            text = metrics("consumer", 9101)
            return "ledrec_consumer_partition_lag{" in text and (
                "ledrec_event_freshness_seconds_count " in text
            )

        wait_until(consumer_metrics_complete, 30, "the consumer's metrics", 0.2)
        scorer = metrics("scorer", 9102)
        assert "ledrec_request_seconds_count " in scorer
        assert f'ledrec_serving_version{{version="{active}"}} 1.0' in scorer
        gateway_metrics = metrics("gateway", 9103)
        assert "ledrec_model_swaps_total" in gateway_metrics  # admin swaps are counted there
        route = "/v1/users/{user_id}/recommendations"
        assert f'ledrec_http_requests_total{{route="{route}",status="200"}}' in gateway_metrics

        # The bootstrap again (compose up, a restart): nothing to do while a model is active.
        again = svc["bootstrap"].run(timeout=60)
        assert again.returncode == 0 and f"{active} is active; not training" in again.stdout
        for proc_name in ("consumer", "scorer", "gateway"):
            assert svc[proc_name].healthy(), logs()
