"""How long a consumer with default settings takes to drain a backlog on the local broker.

Publishes N events with ``EventPublisher`` (as users do: lz4, murmur2), then starts one
``StateUpdater`` with default consume settings and reports progress every 5 s until every
event is applied (or ``--max-seconds`` pass: a stall shows as a flat line):

    python -m benchmarks.backlog --events 1000000
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import redis

from ledrec.connect import ensure_event_topics
from ledrec.deploy.stack import KafkaBroker, RedisServer
from ledrec.settings import Settings
from ledrec.stream.consumer import StateUpdater
from ledrec.stream.producer import EventPublisher


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--max-seconds", type=float, default=300.0)
    p.add_argument("--fetch-wait-ms", type=int, help="consume_fetch_wait_ms (default: unset)")
    args = p.parse_args(argv)
    with (
        tempfile.TemporaryDirectory() as tmp,
        KafkaBroker(Path(tmp) / "kafka") as broker,
        RedisServer(Path(tmp) / "redis") as server,
    ):
        settings = Settings(
            kafka_bootstrap=broker.bootstrap,
            redis_url=server.url,
            home=tmp,
            consume_fetch_wait_ms=args.fetch_wait_ms,
        )
        ensure_event_topics(settings, broker.bootstrap)
        started = time.perf_counter()
        with EventPublisher.from_settings(settings) as publisher:
            for n in range(args.events):
                publisher.send(f"u{n % args.users}", f"i{n % 5000}", "view", ts=1.7e9 + n)
        published_s = time.perf_counter() - started
        print(f"published {args.events:,} events in {published_s:.1f}s", flush=True)
        client = redis.Redis.from_url(server.url)
        updater = StateUpdater(settings, broker.bootstrap, client)
        thread = threading.Thread(target=updater.run, daemon=True)
        started = time.perf_counter()
        thread.start()
        drained_s = float("nan")
        while time.perf_counter() - started < args.max_seconds:
            time.sleep(5.0)
            applied = updater.totals.applied
            print(f"  {time.perf_counter() - started:5.0f}s  applied {applied:,}", flush=True)
            if applied >= args.events:
                drained_s = time.perf_counter() - started
                break
        updater.stop_event.set()
        thread.join(timeout=30)
        client.close()
    print(f"drained in {drained_s:.0f}s (to the 5 s step)" if drained_s == drained_s else "STALLED")
    return {"events": args.events, "published_s": published_s, "drained_s": drained_s}


if __name__ == "__main__":
    main()
