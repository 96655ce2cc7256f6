"""What a model swap costs: back-fill rate, activate → serving, request latency during it.

A private redis-server, a scorer process (``ledrec serve``) and ``ledrec models activate``
as its own process, as in production; this process only sends requests, one at a time,
and times them. The floor is a raw Redis round trip (PING) measured in the same run.

    python benchmarks/swap.py                     # 100k users, 10k items, d=64
    python benchmarks/swap.py --users 20000       # quicker
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis

from ledrec.deploy.stack import RedisServer
from ledrec.settings import Settings
from ledrec.stream.artifact import (
    Model,
    save_model,
)
from ledrec.stream.client import RecommenderClient
from ledrec.stream.reencoder import read_progress
from ledrec.stream.registry import Registry
from ledrec.stream.state import StateWriter, TimelineEvent, UserStateStore


def random_model(n_items: int, dim: int, seed: int, version: str) -> Model:
    """A model of random embeddings (what a swap costs does not depend on their values)."""
    rng = np.random.default_rng(seed)
    return Model(
        item_ids=np.array([f"i{i}" for i in range(n_items)]),
        embeddings=rng.normal(size=(n_items, dim)).astype(np.float32),
        biases=rng.normal(size=n_items).astype(np.float32),
        version=version,
        provenance={"source": "benchmarks/swap.py"},
    )


def _stats(samples_s: list[float], floor: dict[str, float] | None = None) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1000
    out = {
        "n": float(len(ms)),
        "p50_ms": float(np.median(ms)),
        "p99_ms": float(np.percentile(ms, 99)),
    }
    if floor is not None:
        out["p50_x_floor"] = out["p50_ms"] / floor["p50_ms"]
        out["p99_x_floor"] = out["p99_ms"] / floor["p99_ms"]
    return out


def _requests(
    client: RecommenderClient, n_users: int, seconds: float
) -> tuple[list[float], list[str]]:
    rng = np.random.default_rng(0)
    latencies, versions = [], []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        rec = client.request(user_id=f"u{rng.integers(n_users)}", k=10)
        latencies.append(time.perf_counter() - t0)
        versions.append(rec.version)
    return latencies, versions


def run(n_users: int, n_items: int, dim: int, timeline: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="ledrec-swap-"))
    with RedisServer(work / "redis", die_with_parent=True) as server:
        settings = Settings(
            redis_url=server.url,
            kafka_bootstrap="unused:9092",
            home=work,
            key_prefix="bench",
            request_queue="bench:rpc:requests",
            timeline_max=timeline,
        )
        r = redis.Redis.from_url(server.url)
        registry = Registry(r, settings.key_prefix)
        v1, v2 = (random_model(n_items, dim, seed=s, version=f"v{s}") for s in (1, 2))
        for m in (v1, v2):
            save_model(m, settings.model_store_path)
            registry.register(m)
        registry.activate(v1.version)
        store = UserStateStore(r, settings.key_prefix, timeline, 0)
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        for start in range(0, n_users, 5000):
            items = rng.integers(n_items, size=(5000, timeline))
            StateWriter(store).apply(
                {
                    f"u{u}": [
                        TimelineEvent(0, o, f"i{items[u - start, o]}", 1.0) for o in range(timeline)
                    ]
                    for u in range(start, min(n_users, start + 5000))
                },
                [v1],
            )
        print(f"{n_users} users stored in {time.perf_counter() - t0:.1f}s", flush=True)

        floor_s = []
        for _ in range(3000):
            t = time.perf_counter()
            r.ping()
            floor_s.append(time.perf_counter() - t)
        floor = _stats(floor_s)

        env = settings.environment()
        scorer = subprocess.Popen([sys.executable, "-m", "ledrec.cli", "serve"], env=env,
                                  stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            client = RecommenderClient(r, settings.request_queue, settings.key_prefix, 10.0)
            while not registry.scorers():
                time.sleep(0.05)
            _requests(client, n_users, 1.0)  # warm-up
            before, _ = _requests(client, n_users, 5.0)

            launched = time.perf_counter()
            activate = subprocess.Popen(
                [sys.executable, "-m", "ledrec.cli", "models", "activate", v2.version],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
            during: list[float] = []
            first_v2: float | None = None
            while activate.poll() is None or first_v2 is None:
                lat, versions = _requests(client, n_users, 0.05)
                during += lat
                if first_v2 is None and v2.version in versions:
                    first_v2 = time.perf_counter() - launched
            stdout = activate.communicate()[0]
            after, _ = _requests(client, n_users, 3.0)
        finally:
            scorer.terminate()
            scorer.wait(timeout=10)
        match = re.search(r"is serving, ([0-9.]+)s after activate", stdout)
        progress = read_progress(r, settings.key_prefix, v2.version)
        assert progress is not None and progress.done and match is not None, stdout
    return {
        "benchmark": "swap",
        "machine": {"python": platform.python_version(), "cpu_count": __import__("os").cpu_count()},
        "config": {
            "users": n_users,
            "items": n_items,
            "dim": dim,
            "timeline": timeline,
            "backfill_batch": settings.backfill_batch,
        },
        "floor_redis_ping": floor,
        "backfill": {
            "users_per_s": n_users / progress.seconds,  # every user, both passes included
            "scanned_per_s": progress.users_per_s,
            "seconds": progress.seconds,
            "passes": progress.passes,
            "written": progress.written,
        },
        "activate_to_serving_s": float(match.group(1)),  # inside the activate process
        "launch_to_first_v2_reply_s": first_v2,  # includes starting the CLI process
        "latency_before": _stats(before, floor),
        "latency_during_swap": _stats(during, floor),
        "latency_after": _stats(after, floor),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--timeline", type=int, default=20)
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parent / "results" / "swap.json")
    )
    args = parser.parse_args()
    result = run(args.users, args.items, args.dim, args.timeline)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
