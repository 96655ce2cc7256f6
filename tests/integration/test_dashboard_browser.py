"""The dashboard (``/ui``) in a real headless Chromium (Debian's, driven by Playwright)
against a real stack: live charts fill with real rates, "try it" shows a user's timeline
and recommendations with titles, dead letters show their reasons, and an admin click
activates a model version. Saves a screenshot (``LEDREC_SCREENSHOT=path`` to keep one: the
README's is ``docs/dashboard.png``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis
from confluent_kafka import Producer

from ledrec.settings import Settings
from ledrec.stream.registry import Registry
from ledrec.stream.titles import save_titles
from tests.helpers import (
    publish_model,
    random_model,
    running_consumer,
    running_gateway,
    running_server,
    wait_until,
)

pytestmark = [pytest.mark.gateway, pytest.mark.browser]
API_KEY = "dashboard-admin-key"
N_ITEMS = 300
GENRES = ("Comedy", "Drama", "Western", "Thriller", "Musical", "Noir")


def chromium() -> str:
    """Debian's Chromium (``.ci/run`` installs the package): Playwright does not download
    a browser of its own here."""
    found = os.environ.get("LEDREC_CHROMIUM") or shutil.which("chromium")
    if not found:
        pytest.fail("no chromium on PATH: apt-get install chromium (as .ci/run does)")
    return found


def traffic(base_url: str, stop: threading.Event, seconds: float = 150.0) -> None:
    """Requests and events for the charts to show, bounded in time and rate (loopback)."""
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=base_url, timeout=5.0) as http:
        n = 0
        while not stop.is_set() and time.monotonic() < deadline:
            user = f"visitor{n % 40}"
            http.get(f"/v1/users/{user}/recommendations", params={"k": 10})
            if n % 5 == 0:
                item = f"i{(n * 7) % N_ITEMS}"
                http.post("/v1/events", json=[{"user_id": user, "item_id": item, "type": "view"}])
            n += 1
            stop.wait(0.01)


def test_the_dashboard_in_a_browser(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    settings = settings.model_copy(update={"gateway_api_key": API_KEY})
    v1 = publish_model(settings, redis_client, random_model(n_items=N_ITEMS, dim=8, seed=1))
    v2 = publish_model(
        settings, redis_client, random_model(n_items=N_ITEMS, dim=8, seed=2), activate=False
    )
    titles = {
        f"i{i}": f"Picture {i} ({GENRES[i % len(GENRES)]}, {1950 + i % 50})" for i in range(N_ITEMS)
    }
    save_titles(redis_client, settings.key_prefix, titles)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    alice = ["i3", "i14", "i15", "i92", "i65"]
    for item in alice:
        event = {"user_id": "alice", "item_id": item, "type": "view", "ts": time.time()}
        producer.produce(settings.events_topic, value=json.dumps(event).encode(), key=b"alice")
    producer.produce(settings.events_topic, value=b"\xffnot json", key=b"mallory")
    producer.flush(10)

    stop = threading.Event()
    with (
        running_consumer(settings, redis_client),
        running_server(settings, redis_client),
        running_gateway(settings) as http,
    ):
        wait_until(lambda: http.get("/readyz").status_code == 200, 30, "ready", step=0.1)
        wait_until(
            lambda: len(http.get("/v1/users/alice/timeline").json()["items"]) == len(alice),
            30, "alice's events applied", step=0.1,
        )  # fmt: skip
        load = threading.Thread(target=traffic, args=(str(http.base_url), stop), daemon=True)
        load.start()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=chromium(),
                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run"],
                )  # fmt: skip
                page = browser.new_page(viewport={"width": 1400, "height": 1100})
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(f"{http.base_url}/ui")

                expect(page.locator("#active-version")).to_have_text(v1.version)
                expect(page.locator("#ready")).to_have_text("yes", timeout=15_000)
                # live charts: several polls in, with real (non-zero) rates and latencies
                for metric in ("events", "requests", "latency", "freshness", "lag"):
                    chart = page.locator(f'.chart[data-metric="{metric}"]')
                    expect(chart).to_have_attribute("data-points", _at_least(4), timeout=30_000)
                positive = re.compile(r"^\d*\.?\d*[1-9]")  # the first figure above zero
                for metric in ("requests", "latency", "events"):
                    latest = page.locator(f'.chart[data-metric="{metric}"] .latest')
                    expect(latest).to_have_text(positive, timeout=30_000)
                expect(page.locator('.chart[data-metric="requests"] polyline')).to_have_count(1)

                # try it: alice's timeline and recommendations, with titles
                page.fill("#user", "alice")
                page.click("#try")
                recs = page.locator("#recommendations li")
                expect(recs).to_have_count(10)
                expect(page.locator("#rec-version")).to_contain_text(v1.version)
                timeline = page.locator("#timeline li")
                expect(timeline).to_have_count(len(alice))
                assert timeline.first.get_attribute("data-item") == alice[-1]  # newest first
                expect(timeline.first.locator(".title")).to_have_text(titles[alice[-1]])
                shown = [recs.nth(i).get_attribute("data-item") for i in range(10)]
                assert not set(shown) & set(alice)  # seen items left out
                assert recs.first.locator(".title").text_content() == titles[shown[0] or ""]

                # dead letters with their reasons
                letters = page.locator("#dead-letters tr")
                expect(letters.first).to_contain_text("undecodable", timeout=30_000)

                # admin: activate v2 with the key
                page.fill("#admin-key", API_KEY)
                page.check("#force")
                page.click(f'#versions tr[data-version="{v2.version}"] button.activate')
                expect(page.locator("#message")).to_contain_text(f"active: {v2.version}",
                                                                  timeout=60_000)  # fmt: skip
                expect(page.locator("#active-version")).to_have_text(v2.version, timeout=10_000)
                assert Registry(redis_client, settings.key_prefix).active() == v2.version
                page.click("#try")
                expect(page.locator("#rec-version")).to_contain_text(v2.version, timeout=30_000)

                keep = os.environ.get("LEDREC_SCREENSHOT")
                if keep:  # the README's picture: let the charts fill a minute first
                    expect(page.locator('.chart[data-metric="requests"]')).to_have_attribute(
                        "data-points", _at_least(30), timeout=90_000
                    )
                shot = tmp_path / "dashboard.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
                if keep:
                    shutil.copyfile(shot, keep)
                assert not errors, errors
                browser.close()
        finally:
            stop.set()
            load.join(timeout=10)


def _at_least(n: int) -> re.Pattern[str]:
    return re.compile(r"^(" + "|".join(str(i) for i in range(n, 100)) + r")$")
