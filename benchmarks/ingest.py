"""Ingest: events/s through one consumer process (Kafka → decode → state update → commit).

Per catalog size: a clustered d=64 model is published and activated, the synthetic
world's events are produced to a fresh topic, and one ``StateUpdater`` in its own process
consumes them all (its real ``run`` loop: decode, ``UserStateStore.apply``, dead letters,
synchronous offset commit, status). The rate is counted from the start of its first batch
to the end of its last, so the group join is not in it. The floor, in the same run: the
same number of user-hash writes of the same bytes, as raw pipelined ``HSET`` s (no read,
no script, no Kafka), in batches of the same size (on a cluster: grouped per primary by
slot, one write per node, as the consumer's own writes are).

    python -m benchmarks.ingest --items 10000 1000000 --events 500000
    python -m benchmarks.ingest --redis-cluster 3   # the same on a 3-primary Redis Cluster
    python -m benchmarks.cluster                    # single node and cluster, same run
    python -m benchmarks.ingest --items 10000 --redis-cluster 3 --redis-replicas 1 \
        --min-replicas 0 1                          # what durable commits (WAIT) cost
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any, cast

import msgpack
import numpy as np

from benchmarks.common import (
    RESULTS,
    bench_settings,
    clustered_model,
    commandstats,
    connect,
    pin,
    private_stack,
    raw_pipeline,
    redis_cpu_s,
    reset_stats,
    set_pinning,
    synthetic_world,
    write_result,
)

NAME = "ingest"
TARGET_EVENTS_S = 50_000
# --pin: the CPUs of each role (benchmarks.common.pin); a role left out is not pinned.
PINNINGS = {
    "none": {},
    # the consumer's main thread (decode, plan, pack: the measured work) alone on one core;
    # its librdkafka threads, redis-server and the broker on the other
    "consumer-alone": {"consumer": "1", "kafka_threads": "0", "redis": "0", "broker": "0"},
}


def _consume(
    settings: Any, n_events: int, out: Any, profile_path: str | None
) -> None:  # child process
    from ledrec.stream.consumer import BatchDone, StateUpdater
    from ledrec.stream.state import WriteTiming

    timings: dict[str, float] = {"first": 0.0, "last": 0.0, "apply_s": 0.0, "batches": 0}
    # where the main thread waits rather than works: in consume() for Kafka, and for Redis
    # replies (the state writer's observed wait: wall minus thread CPU of its reads)
    timings.update(kafka_wait_s=0.0, redis_wait_s=0.0)
    timings.update(cpu_s=0.0, main_cpu_s=0.0)
    timings["startup_s"] = 0.0
    updater: StateUpdater | None = None

    def on_batch(done: BatchDone) -> None:
        # A batch's events count once its writes have settled (the next batch's submit,
        # or the idle flush for the last one): that is when the rate's clock stops.
        if not timings["first"]:
            timings["first"] = done.started
            timings["cpu_first"] = time.process_time()
            timings["main_cpu_first"] = time.thread_time()
        timings["batches"] += 1
        t = done.totals
        finished = t.applied + t.dead_lettered + t.skipped + done.dead_letters_pending
        if finished >= n_events and not timings["last"]:
            timings["last"] = time.perf_counter()
            timings["cpu_s"] = time.process_time() - timings["cpu_first"]
            timings["main_cpu_s"] = time.thread_time() - timings["main_cpu_first"]
            assert updater is not None
            updater.stop_event.set()

    def on_write(timing: WriteTiming) -> None:
        if timing.call == "submit":
            timings["apply_s"] += timing.wall_s
        if timings["first"] and not timings["last"]:
            timings["redis_wait_s"] += timing.wait_s

    client = connect(settings.redis_url)
    pin("kafka_threads")  # inherited by the threads librdkafka starts in the constructor
    updater = StateUpdater(
        settings, settings.kafka_bootstrap, client, observe=on_batch, observe_writes=on_write
    )
    pin("consumer")

    class TimedKafka:
        def __init__(self, consumer: Any) -> None:
            self._consumer = consumer

        def consume(self, *args: Any) -> Any:
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return self._consumer.consume(*args)
            finally:
                if timings["first"] and not timings["last"]:
                    timings["kafka_wait_s"] += time.perf_counter() - t0 - time.thread_time() + c0

        def __getattr__(self, name: str) -> Any:
            return getattr(self._consumer, name)

    updater.consumer = TimedKafka(updater.consumer)  # type: ignore[assignment]
    t0 = time.perf_counter()
    for model in updater.models.live_models():  # startup, not ingest: load + id index once
        _ = model.row_of
    timings["startup_s"] = time.perf_counter() - t0
    profiler = None
    if profile_path:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.002)
        profiler.start()
    totals = updater.run(max_idle_s=60.0)
    if profiler is not None:
        profiler.stop()
        Path(profile_path or "").write_text(profiler.output_text(unicode=True, color=False))
    out.put(
        {
            **timings,
            "applied": totals.applied,
            "skipped": totals.skipped,
            "dead_lettered": totals.dead_lettered,
            "conflicts": totals.conflicts,
        }
    )


def _produce(settings: Any, events: Any, types: tuple[str, ...]) -> float:
    """Produce every event (msgpack, key = user id); returns the seconds it took."""
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    users = np.char.add("u", events.user.astype(str)).tolist()
    items = np.char.add("i", events.item.astype(str)).tolist()
    kinds = events.kind.tolist()
    ts = events.ts.tolist()
    start = time.perf_counter()
    for u, i, k, t in zip(users, items, kinds, ts, strict=True):
        payload = msgpack.packb({"user_id": u, "item_id": i, "type": types[k], "ts": t})
        while True:
            try:
                producer.produce(settings.events_topic, value=payload, key=u.encode())
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120) > 0:
        raise RuntimeError("events not delivered")
    return time.perf_counter() - start


def _floor(settings: Any, n_writes: int, batch: int, sample_users: list[str]) -> dict[str, Any]:
    """Raw pipelined HSETs of the consumer's own hashes: same bytes, no read, no script."""
    client = connect(settings.redis_url)
    raw = [client.hgetall(f"{settings.key_prefix}:u:{u}") for u in sample_users]
    hashes = [cast("dict[bytes, bytes]", h) for h in raw if h]
    mean_bytes = float(np.mean([sum(len(k) + len(v) for k, v in h.items()) for h in hashes]))

    def hset(key: bytes, mapping: dict[bytes, bytes]) -> bytes:
        args = [b"HSET", key]
        for k, v in mapping.items():
            args += (k, v)
        return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)

    commands = [hset(f"floor:u:{j}".encode(), hashes[j % len(hashes)]) for j in range(n_writes)]
    start = time.perf_counter()
    for lo in range(0, n_writes, batch):
        raw_pipeline(client, commands[lo : lo + batch])
    seconds = time.perf_counter() - start
    client.close()
    return {
        "writes": n_writes,
        "seconds": round(seconds, 3),
        "writes_per_s": round(n_writes / seconds),
        "mean_hash_bytes": round(mean_bytes),
    }


def _result_of(child: Any, queue: Any, timeout_s: float) -> Any:
    """The child's result; raises at once if it died without one (its traceback is above)."""
    import queue as queues

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return queue.get(timeout=1.0)
        except queues.Empty:
            if not child.is_alive():
                raise RuntimeError(f"the consumer died (exit code {child.exitcode})") from None
    raise TimeoutError(f"no result from the consumer in {timeout_s:.0f}s")


def run_size(
    stack: Any,
    n_items: int,
    n_events: int,
    n_users: int,
    dim: int,
    batch: int,
    profile_dir: Path | None,
    min_replicas: int = 0,
    repeat: int = 0,
) -> dict[str, Any]:
    from ledrec.deploy.stack import ensure_topics
    from ledrec.stream.artifact import save_model
    from ledrec.stream.registry import Registry
    from ledrec.training.synthetic import EVENT_TYPES

    tag = f"i{n_items}" + (f"w{min_replicas}" if min_replicas else "")
    tag += f"r{repeat}" if repeat else ""
    settings = bench_settings(
        stack,
        events_topic=f"bench.events.{tag}",
        dead_letter_topic=f"bench.events.{tag}.dlq",
        consumer_group=f"bench-{tag}",
        key_prefix=f"b{tag}",
        consume_batch_size=batch,
        redis_min_replicas=min_replicas,
    )
    _, events = synthetic_world(n_items, n_users, n_events, seed=1)
    model = clustered_model(events, n_items, dim, version=f"m-{tag}")
    save_model(model, settings.model_store_path)
    client = connect(settings.redis_url)
    registry = Registry(client, settings.key_prefix)
    registry.register(model)
    registry.activate(model.version)
    ensure_topics(
        stack.kafka_bootstrap,
        {settings.events_topic: settings.events_partitions, settings.dead_letter_topic: 1},
    )
    produce_s = _produce(settings, events, EVENT_TYPES)
    n = len(events)
    print(f"  {n_items:>9,} items: produced {n:,} events in {produce_s:.1f}s", flush=True)

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    profile_path = str(profile_dir / f"ingest_profile_{tag}.txt") if profile_dir else None
    reset_stats(client)
    redis_cpu0 = redis_cpu_s(client)
    child = ctx.Process(target=_consume, args=(settings, n, queue, profile_path))
    child.start()
    got = _result_of(child, queue, timeout_s=900)
    child.join(30)
    redis_cpu = redis_cpu_s(client) - redis_cpu0
    calls = commandstats(client)
    seconds = got["last"] - got["first"]
    rate = n / seconds
    # one hash write per user per batch at most: the floor writes one per event (upper bound)
    sample = np.unique(events.user[:: max(1, n // 2000)])[:2000]
    floor = _floor(settings, n, batch, [f"u{u}" for u in sample.tolist()])
    client.close()
    result = {
        "redis": stack.kind,
        "items": n_items,
        "dim": dim,
        "users": n_users,
        "events": n,
        "batch_size": batch,
        "partitions": settings.events_partitions,
        "produce_events_per_s": round(n / produce_s),
        "consume_seconds": round(seconds, 3),
        "events_per_s": round(rate),
        "applied": got["applied"],
        "skipped": got["skipped"],
        "conflicts": got["conflicts"],
        "batches": got["batches"],
        "consumer_startup_s": round(got["startup_s"], 2),
        "consumer_cpu_s": round(got["cpu_s"], 2),
        "events_per_consumer_cpu_s": round(n / got["cpu_s"]),
        "consumer_cpu_share": round(got["cpu_s"] / seconds, 2),
        # the main thread (decode, state update) apart from librdkafka's own threads
        "consumer_main_thread_cpu_s": round(got["main_cpu_s"], 2),
        "consumer_main_thread_share": round(got["main_cpu_s"] / seconds, 2),
        "apply_share": round(got["apply_s"] / seconds, 2),
        # the main thread off CPU: waiting for Kafka (in consume) or for Redis replies
        "main_thread_kafka_wait_share": round(got["kafka_wait_s"] / seconds, 3),
        "main_thread_redis_wait_share": round(got["redis_wait_s"] / seconds, 3),
        "us_per_event": round(1e6 / rate, 1),
        # redis-server's side of it: CPU per event over the whole consumer run (group join
        # and idle end included), and per call of the consumer's two commands
        "redis_cpu_us_per_event": round(1e6 * redis_cpu / n, 2),
        "redis_us_per_call": {
            name: calls[f"cmdstat_{name}"]["usec_per_call"]
            for name in ("evalsha", "hmget")
            if f"cmdstat_{name}" in calls
        },
        "floor": floor,
        "ratio_to_floor": round(rate / floor["writes_per_s"], 3),
        "target_events_per_s": TARGET_EVENTS_S,
        "target_met": rate >= TARGET_EVENTS_S,
        "profile": Path(profile_path).name if profile_path else None,
    }
    print(
        f"  {n_items:>9,} items: {rate:,.0f} events/s  floor {floor['writes_per_s']:,} writes/s"
        f"  ratio {result['ratio_to_floor']}  consumer CPU {result['consumer_cpu_share']:.0%}",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, nargs="+", default=[10_000, 1_000_000])
    p.add_argument("--events", type=int, default=500_000)
    p.add_argument("--users", type=int, default=0, help="default: events / 10")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument(
        "--batch-size", type=int, default=0, help="default: the consumer's consume_batch_size"
    )
    p.add_argument("--profile", action="store_true", help="pyinstrument the consumer")
    p.add_argument(
        "--pin",
        choices=sorted(PINNINGS),
        default="none",
        help="CPU affinity of the consumer, its Kafka threads, redis-server and the broker",
    )
    p.add_argument(
        "--redis-cluster",
        type=int,
        default=0,
        metavar="N",
        help="run on a local Redis Cluster of N (>= 3) primaries instead of one redis-server",
    )
    p.add_argument("--redis-replicas", type=int, default=0, metavar="R",
                   help="with --redis-cluster: replicas per primary")  # fmt: skip
    p.add_argument(
        "--min-replicas", type=int, nargs="+", default=[0], metavar="N",
        help="redis_min_replicas (durable commits) to run each size with, in the same run",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    set_pinning(PINNINGS[args.pin], ("consumer", "kafka_threads", "redis", "broker"))
    users = args.users or max(100, args.events // 10)
    if not args.batch_size:
        from ledrec.settings import Settings

        args.batch_size = Settings().consume_batch_size
    sizes = []
    with private_stack(
        kafka=True, redis_cluster=args.redis_cluster, redis_replicas=args.redis_replicas
    ) as stack:
        pin("redis", stack.redis_pids)
        pin("broker", stack.kafka_pid)
        for n_items in args.items:
            for repeat, min_replicas in enumerate(args.min_replicas):
                size = run_size(
                    stack,
                    n_items,
                    args.events,
                    users,
                    args.dim,
                    args.batch_size,
                    args.out if args.profile else None,
                    min_replicas,
                    repeat,
                )
                size["min_replicas"] = min_replicas
                sizes.append(size)
    result = {
        "what": "events/s through one consumer process into Redis, vs raw pipelined writes",
        "redis": stack.kind,
        "processes": "redis-server, Tansu broker, one consumer process (this is the measured"
        " one), the producer (done before the consumer starts) — all on this machine",
        "pinning": {"name": args.pin, **PINNINGS[args.pin]},
        "sizes": sizes,
    }
    name = NAME if not args.redis_cluster else f"{NAME}_cluster{args.redis_cluster}"
    if args.redis_replicas or args.min_replicas != [0]:
        name += f"_r{args.redis_replicas}_w{'-'.join(map(str, args.min_replicas))}"
    write_result(name, result, args.out)
    return result


if __name__ == "__main__":
    main()
