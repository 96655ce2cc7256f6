"""Freshness: time from ``publish`` of an event to a recommendation that reflects it.

One consumer process (``StateUpdater``) and one scorer process (``RecommendServer``) run
against a private stack. Each probe publishes one event for a user never seen before and
then asks for recommendations in a tight loop until the reply is computed from that
user's state (``source == "state"``) instead of the popularity fallback; the time from
``EventPublisher.send`` to that reply is the freshness. The floor, same run: the
publish → consume round trip alone (a bare consumer on the same topic, no Redis, no
scoring), and the RPC round trip of one poll.

    python -m benchmarks.freshness --probes 300 --batch-timeouts 0.05 0.005
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, bench_settings, percentiles, private_stack, write_result

NAME = "freshness"
TARGET_P99_S = 0.100


def _consumer(settings: Any, stop: Any) -> None:  # child
    import redis

    from ledrec.stream.consumer import StateUpdater

    updater = StateUpdater(
        settings, settings.kafka_bootstrap, redis.Redis.from_url(settings.redis_url)
    )
    threading.Thread(target=_relay, args=(stop, updater.stop_event), daemon=True).start()
    updater.run()


def _server(settings: Any, stop: Any) -> None:  # child
    import redis

    from ledrec.stream.server import RecommendServer

    server = RecommendServer(settings, redis.Redis.from_url(settings.redis_url))
    threading.Thread(target=_relay, args=(stop, server.stop_event), daemon=True).start()
    server.run()


def _relay(stop: Any, event: threading.Event) -> None:
    """Set a process-local stop event when the parent's (multiprocessing) one is set."""
    stop.wait()
    event.set()


def _kafka_floor(settings: Any, probes: int) -> dict[str, Any]:
    """Publish → a bare consumer sees it (same producer settings, no group, no Redis)."""
    from confluent_kafka import Consumer, TopicPartition

    from ledrec.stream.producer import EventPublisher

    publisher = EventPublisher(settings, settings.kafka_bootstrap)
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": "floor",
         "enable.auto.commit": False, "fetch.wait.max.ms": 5}
    )  # fmt: skip
    partitions = [TopicPartition("bench.floor", p, -1) for p in range(settings.events_partitions)]
    consumer.assign(partitions)  # -1: the end of each partition
    consumer.poll(0.5)
    times = []
    for j in range(probes):
        t0 = time.perf_counter()
        publisher.producer.produce("bench.floor", value=b"x", key=f"f{j}".encode())
        publisher.producer.poll(0)
        while True:
            msg = consumer.poll(0.2)
            publisher.producer.poll(0)
            if msg is not None and msg.error() is None and msg.key() == f"f{j}".encode():
                break
        times.append(time.perf_counter() - t0)
    consumer.close()
    publisher.flush()
    return percentiles(times)


def run_timeout(stack: Any, args: argparse.Namespace, batch_timeout: float) -> dict[str, Any]:
    """Freshness with the consumer's ``consume_batch_timeout_s`` = ``batch_timeout``."""
    import redis

    from benchmarks.common import clustered_model, synthetic_world
    from ledrec.deploy.stack import ensure_topics
    from ledrec.stream.artifact import save_model
    from ledrec.stream.client import RecommenderClient
    from ledrec.stream.producer import EventPublisher
    from ledrec.stream.registry import Registry

    tag = f"t{round(batch_timeout * 1000)}"
    settings = bench_settings(
        stack,
        events_topic=f"bench.fresh.{tag}",
        dead_letter_topic=f"bench.fresh.{tag}.dlq",
        consumer_group=f"fresh-{tag}",
        key_prefix=f"f{tag}",
        request_queue=f"f{tag}:rpc:requests",
        consume_batch_timeout_s=batch_timeout,
    )
    ensure_topics(
        stack.kafka_bootstrap,
        {settings.events_topic: settings.events_partitions, settings.dead_letter_topic: 1,
         "bench.floor": settings.events_partitions},
    )  # fmt: skip
    _, events = synthetic_world(args.items, 1000, 20_000, seed=3)
    model = clustered_model(events, args.items, args.dim, version=f"fresh-{tag}")
    save_model(model, settings.model_store_path)
    client = redis.Redis.from_url(settings.redis_url)
    registry = Registry(client, settings.key_prefix)
    registry.register(model)
    registry.activate(model.version)

    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    children = [ctx.Process(target=f, args=(settings, stop)) for f in (_consumer, _server)]
    for c in children:
        c.start()
    rpc = RecommenderClient(client, settings.request_queue, settings.key_prefix, timeout_s=2.0)
    publisher = EventPublisher(settings, settings.kafka_bootstrap)
    try:
        # ready: the scorer answers and the consumer has joined the group and applied one
        deadline = time.time() + 120
        publisher.send("warm-up", "i0", "view")
        publisher.flush()
        while rpc.request(user_id="warm-up", k=10).source != "state":
            if time.time() > deadline:
                raise RuntimeError("consumer or scorer not ready after 120 s")
            time.sleep(0.05)
        fresh, polls, rpc_times = [], [], []
        rng = np.random.default_rng(0)
        for j in range(args.probes):
            user = f"fresh-{tag}-{j}"
            item = f"i{int(rng.integers(args.items))}"
            t0 = time.perf_counter()
            publisher.send(user, item, "view")
            n = 0
            while True:
                t1 = time.perf_counter()
                reply = rpc.request(user_id=user, k=10)
                rpc_times.append(time.perf_counter() - t1)
                n += 1
                publisher.producer.poll(0)
                if reply.source == "state":
                    break
                if time.perf_counter() - t0 > 10:
                    raise RuntimeError(f"event for {user} not reflected after 10 s")
            fresh.append(time.perf_counter() - t0)
            polls.append(n)
        publisher.flush()
        floor = _kafka_floor(settings, min(args.probes, 100))
    finally:
        stop.set()
        for c in children:
            c.join(20)
        client.close()
    result = {
        "consume_batch_timeout_s": batch_timeout,
        "probes": len(fresh),
        "freshness": percentiles(fresh),
        "polls_per_probe_mean": round(float(np.mean(polls)), 1),
        "rpc_poll": percentiles(rpc_times),
        "floor_publish_to_bare_consumer": floor,
        "ratio_p50_to_floor": round(percentiles(fresh)["p50_us"] / max(floor["p50_us"], 1e-9), 2),
        "target_p99_us": TARGET_P99_S * 1e6,
        "target_met": percentiles(fresh)["p99_us"] <= TARGET_P99_S * 1e6,
    }
    f = result["freshness"]
    print(f"  batch timeout {batch_timeout * 1000:.0f} ms: freshness p50 {f['p50_us'] / 1000:.1f}"
          f" ms  p99 {f['p99_us'] / 1000:.1f} ms  (floor p50 {floor['p50_us'] / 1000:.1f} ms)",
          flush=True)  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--probes", type=int, default=300)
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--batch-timeouts", type=float, nargs="+", default=[0.05, 0.01, 0.005])
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    with private_stack(kafka=True) as stack:
        runs = [run_timeout(stack, args, t) for t in args.batch_timeouts]
    result = {
        "what": "publish → recommendation reflecting the event (new user: popularity → state)",
        "processes": "redis-server, Tansu, one consumer process, one scorer process, and this"
        " process publishing (EventPublisher: acks=all, idempotent, linger 5 ms) and polling"
        " with the sync client — all on this machine",
        "runs": runs,
    }
    write_result(NAME, result, args.out)
    return result


if __name__ == "__main__":
    main()
