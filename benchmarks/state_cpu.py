"""Consumer CPU without Kafka or waiting: the state writer's thread CPU outside its Redis
round trips (planning the updates, window sums, packing the writes), µs per event, through
its ``observe`` hook.

A steadier measure than wall-clock ingest on a shared machine (min over repetitions), for
work on the consumer's hot path:

    python -m benchmarks.state_cpu --items 1000000 --reps 15
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import clustered_model, synthetic_world


def main(argv: list[str] | None = None) -> dict[str, float]:
    import redis

    from ledrec.deploy.stack import RedisServer
    from ledrec.stream.state import StateWriter, TimelineEvent, UserStateStore

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=5_000)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=2000)
    p.add_argument("--reps", type=int, default=15)
    args = p.parse_args(argv)
    _, events = synthetic_world(args.items, args.users, args.events, seed=1)
    model = clustered_model(events, args.items, 64, version="m1")
    users = [f"u{u}" for u in events.user.tolist()]
    items = [f"i{i}" for i in events.item.tolist()]
    batches: list[dict[str, list[TimelineEvent]]] = []
    for lo in range(0, len(users), args.batch_size):
        batch: dict[str, list[TimelineEvent]] = {}
        for k in range(lo, min(lo + args.batch_size, len(users))):
            batch.setdefault(users[k], []).append(TimelineEvent(k % 4, k, items[k], 1.0))
        batches.append(batch)
    warm, measured = batches[: len(batches) * 4 // 5], batches[len(batches) * 4 // 5 :]
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis") as server:
        client = redis.Redis.from_url(server.url)
        store = UserStateStore(client, "bench", 100, 86400)
        for batch in warm:  # full timelines, as in steady state
            StateWriter(store).apply(batch, [model])
        cpu: list[float] = []
        writer = StateWriter(store, observe=lambda t: cpu.append(t.cpu_s - t.reply_cpu_s))
        n = sum(len(evs) for batch in measured for evs in batch.values())
        shift = len(users)  # each repetition's events come after the last one's
        runs = []
        for rep in range(1, args.reps + 1):
            cpu.clear()
            for batch in measured:
                writer.apply(_shifted(batch, rep * shift), [model])
            runs.append(sum(cpu) / n * 1e6)
    result = {
        "min_us_per_event": round(min(runs), 2),
        "median_us_per_event": round(sorted(runs)[len(runs) // 2], 2),
    }
    best, median = result["min_us_per_event"], result["median_us_per_event"]
    print(f"plan + pack: {best} µs/event min, {median} median ({n:,} events)")
    return result


def _shifted(batch: dict[str, list[Any]], by: int) -> dict[str, list[Any]]:
    """The batch again, at offsets ``by`` later (so it is applied again, not skipped)."""
    return {u: [e._replace(offset=e.offset + by) for e in evs] for u, evs in batch.items()}


if __name__ == "__main__":
    main()
