"""One request id through gateway → client → scorer → reply, on a real stack: the caller's
``X-Request-Id`` (or a fresh one) is answered in the header and the body, and names the
request in the gateway's log and in the logs of a real ``ledrec serve`` process."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from ledrec.settings import Settings
from ledrec.stream.client import BadRequest, RecommenderClient
from tests.helpers import (
    publish_model,
    random_model,
    running_gateway,
    settings_env,
    start_cli,
    wait_until,
)

pytestmark = pytest.mark.gateway
FRESH = re.compile("[0-9a-f]{32}")


def _logged(log: Path, message: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``log`` whose message is ``message``."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line["message"] == message]


def _with_id(log: Path, message: str, request_id: str) -> dict[str, Any] | None:
    """The line ``message`` that names ``request_id`` (itself, or in its list)."""
    for line in _logged(log, message):
        if line.get("request_id") == request_id or request_id in line.get("request_ids", []):
            return line
    return None


def test_one_request_id_names_the_request_in_every_log(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings.model_copy(update={"request_timeout_s": 1.0})
    publish_model(settings, redis_client, random_model(n_items=50, dim=8))
    log = tmp_path / "scorer.log"
    with running_gateway(settings) as http:
        # No scorer yet: the gateway times out and says which request, in its answer and log.
        with caplog.at_level(logging.WARNING, logger="ledrec.stream.gateway"):
            late = http.get("/v1/users/alice/recommendations", headers={"X-Request-Id": "gw-late"})
        assert late.status_code == 504 and late.headers["x-request-id"] == "gw-late"
        assert "(request gw-late)" in late.json()["error"]["message"]
        (failed,) = [r for r in caplog.records if r.getMessage() == "recommendation failed"]
        assert failed.levelname == "WARNING" and failed.exc_info is None
        assert failed.__dict__["request_id"] == "gw-late" and failed.__dict__["status"] == 504

        # That request is still queued: the scorer, started now, sheds it and names it.
        scorer = start_cli(["--log-level", "DEBUG", "serve"], settings_env(settings), log)
        try:
            wait_until(
                lambda: _with_id(log, "requests shed past their deadline", "gw-late") is not None,
                60, "the late request shed", step=0.05,
            )  # fmt: skip
            shed = _with_id(log, "requests shed past their deadline", "gw-late")
            assert shed is not None and shed["level"] == "WARNING" and shed["late_s"] > 0
            assert "exc_info" not in shed
            wait_until(lambda: bool(_logged(log, "model swapped")), 60, "scorer serving")

            path = "/v1/users/alice/recommendations"
            answered = http.get(path, params={"k": 3}, headers={"X-Request-Id": "gw-ok"})
            assert answered.status_code == 200, answered.text
            assert answered.headers["x-request-id"] == answered.json()["request_id"] == "gw-ok"
            # an id unfit for a header or a log line is replaced, not refused
            replaced = http.get(path, headers={"X-Request-Id": "x" * 200})
            assert replaced.status_code == 200
            fresh = replaced.headers["x-request-id"]
            assert FRESH.fullmatch(fresh) and replaced.json()["request_id"] == fresh
            assert FRESH.fullmatch(http.get("/healthz").headers["x-request-id"])

            rpc = RecommenderClient(redis_client, settings.request_queue, settings.key_prefix)
            with pytest.raises(BadRequest):
                rpc.request(user_id="alice", k=settings.max_k + 1, request_id="rpc-bad")

            env = settings_env(settings)
            cli = [sys.executable, "-m", "ledrec.cli", "recommend", "alice", "--json"]
            run = subprocess.run([*cli, "--request-id", "cli-1"], env=env, capture_output=True,
                                 text=True, timeout=60)  # fmt: skip
            assert run.returncode == 0 and json.loads(run.stdout)["request_id"] == "cli-1", run
            run = subprocess.run([*cli, "--request-id", "a b"], env=env, capture_output=True,
                                 text=True, timeout=60)  # fmt: skip
            assert run.returncode != 0 and "request_id must be" in run.stderr
            assert "Traceback" not in run.stderr

            for request_id in ("gw-ok", fresh, "cli-1"):
                wait_until(
                    lambda rid=request_id: _with_id(log, "request answered", rid) is not None,
                    10, f"{request_id} in the scorer's log",
                )  # fmt: skip
            ok = _with_id(log, "request answered", "gw-ok")
            assert ok is not None and ok["user_id"] == "alice" and ok["source"] == "popularity"
            assert ok["returned"] == 3 and ok["level"] == "DEBUG"
            bad = _with_id(log, "bad requests", "rpc-bad")
            assert bad is not None and bad["level"] == "WARNING" and "k must be" in bad["reason"]
            assert scorer.poll() is None
        finally:
            scorer.terminate()
            scorer.wait(timeout=20)
