"""A consumer paused past its session timeout (SIGSTOP) is fenced: a second consumer takes
its partitions and applies what arrives meanwhile. Resumed (SIGCONT), the first finds it
lost them, rejoins and keeps consuming; nothing is lost or counted twice."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import redis

from ledrec.settings import Settings
from tests.helpers import (
    applied_by,
    assert_clean_pass,
    committed_lag,
    publish_model,
    publish_stream,
    random_model,
    settings_env,
    start_cli,
    wait_until,
)


def test_a_fenced_consumer_rejoins_and_keeps_consuming(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"timeline_max": 1000, "session_timeout_ms": 3000})
    model = publish_model(settings, redis_client, random_model(n_items=200, dim=8))
    env = settings_env(settings)
    log = tmp_path / "consumers.log"
    first = start_cli(["consume"], env, log)
    second = None
    try:
        events, _ = publish_stream(settings, 4000, 200, 200, seed=1)
        wait_until(lambda: applied_by(redis_client, settings, first.pid) > 0, 60, "first consumes")
        os.kill(first.pid, signal.SIGSTOP)
        try:
            second = start_cli(["consume"], env, log)
            more, _ = publish_stream(settings, 4000, 200, 200, seed=2)
            # the paused one's session expires: the second gets every partition and applies
            wait_until(
                lambda: applied_by(redis_client, settings, second.pid) > 0, 60, "takeover", 0.1
            )
            time.sleep(1.0)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        late, ends = publish_stream(settings, 4000, 200, 200, seed=3)
        wait_until(lambda: committed_lag(settings, ends) == 0, 90, "every event committed", 0.2)
        # the first one rejoined and took partitions back: it applies again after resuming
        before = applied_by(redis_client, settings, first.pid)
        last, ends = publish_stream(settings, 4000, 200, 200, seed=4)
        wait_until(lambda: committed_lag(settings, ends) == 0, 90, "the last events", 0.2)
        wait_until(
            lambda: applied_by(redis_client, settings, first.pid) > before, 30, "first rejoined"
        )
        assert first.poll() is None, "the fenced consumer exited instead of rejoining"
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
    text = log.read_text(errors="replace")
    assert "fenced" in text or "not a group member" in text, "the log does not say it was fenced"
    assert assert_clean_pass(redis_client, settings, events + more + late + last, model) == 200
