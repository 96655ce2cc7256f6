"""``ledrec demo``: the whole system on one machine, end to end, on an embedded default.

1. starts a local stack (real redis-server + Tansu Kafka-protocol broker) in a temp home;
2. trains a model on MovieLens-1M when its files are found, else on the seeded synthetic
   generator, with the held-out test users of the evaluation protocol left out;
3. starts a consumer and a scorer as real processes;
4. replays the test users' fold-in events through Kafka, then asks the scorer for their
   recommendations over the Redis RPC;
5. prints events/s ingested, request latency p50/p99, and the test users' Recall@20/50 of
   the online recommendations next to the same model scored offline (they must agree);
6. prints one test user's last clicks and what the scorer recommends them, by title (the
   MovieLens titles, stored in Redis for the gateway: ``ledrec.stream.titles``);
7. shuts everything down.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import redis
import scipy.sparse as sp

from ledrec.connect import ensure_event_topics, redis_client
from ledrec.deploy.stack import stack_down, stack_up
from ledrec.keyspace import Keyspace
from ledrec.settings import Settings
from ledrec.stream.artifact import load_model
from ledrec.stream.client import RecommenderClient
from ledrec.stream.consumer import consumer_statuses
from ledrec.stream.producer import EventPublisher
from ledrec.stream.registry import Registry
from ledrec.stream.state.store import UserStateStore
from ledrec.stream.titles import save_titles, titles_of

MOVIELENS_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
CACHE = Path.home() / ".cache" / "ledrec"


def find_movielens(explicit: str | None) -> Path | None:
    """A MovieLens-1M directory: flag, $LEDREC_MOVIELENS, ../shared/data, cache, download."""
    candidates = [explicit, os.environ.get("LEDREC_MOVIELENS")]
    candidates += [str(p / "shared" / "data" / "ml-1m") for p in (Path.cwd().parent, Path.cwd())]
    candidates.append(str(CACHE / "ml-1m"))
    for c in candidates:
        if c and any((Path(c) / f).exists() for f in ("ratings.csv", "ratings.dat")):
            return Path(c)
    try:  # offline machines fail here within the timeout and use the synthetic data
        CACHE.mkdir(parents=True, exist_ok=True)
        archive = CACHE / "ml-1m.zip"
        with urllib.request.urlopen(MOVIELENS_URL, timeout=5) as r:
            archive.write_bytes(r.read())
        with zipfile.ZipFile(archive) as z:
            z.extractall(CACHE)
        return CACHE / "ml-1m"
    except OSError:
        return None


def _recall(ranked: np.ndarray, heldout: sp.csr_matrix, k: int) -> float:
    """Mean Recall@k of ranked item rows (n, >=k) against held-out items (protocol's form)."""
    rows = np.repeat(np.arange(ranked.shape[0]), k)
    hits = np.asarray(heldout[rows, ranked[:, :k].ravel()] > 0).reshape(-1, k).sum(axis=1)
    return float(np.mean(hits / np.minimum(k, np.diff(heldout.indptr))))


def _example(
    client: RecommenderClient,
    r: redis.Redis,
    settings: Settings,
    user: str,
    heldout: set[str],
    last: int = 5,
    k: int = 10,
) -> list[str]:
    """Report lines: ``user``'s last ``last`` clicks as the consumer stored them and the
    scorer's top ``k`` for them, by title (an item without one shows its id); a ``*`` marks
    a recommendation among the user's held-out clicks."""
    state = UserStateStore(r, settings.key_prefix, settings.timeline_max, 0).read(user, [])
    timeline = state.items if state is not None else []
    recommended = [item for item, _ in client.recommend(user, k=k)]
    seen = timeline[-last:]
    names = titles_of(r, settings.key_prefix, [*seen, *recommended])
    named = [
        name or f"item {item}" for item, name in zip([*seen, *recommended], names, strict=True)
    ]
    hits = sum(item in heldout for item in recommended)
    lines = [
        f"  one test user    {user}: the last {len(seen)} of their {len(timeline)} replayed clicks"
        " (their timeline in Redis)",
        *(f"{'':23}{name}" for name in named[: len(seen)]),
        f"  recommended      top {k} from the scorer, * = among the user's held-out clicks "
        f"({hits}/{k})",
    ]
    for rank, (item, name) in enumerate(zip(recommended, named[len(seen) :], strict=True), 1):
        lines.append(f"                 {'*' if item in heldout else ' '} {rank:2d}. {name}")
    return lines


def _say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ledrec.cli", *args], env=env, stdout=out, stderr=out
        )


def run_demo(args: argparse.Namespace) -> int:
    from ledrec.training.catalog import load_titles
    from ledrec.training.dataset import load_movielens
    from ledrec.training.evaluate import led_score_fn
    from ledrec.training.finetune import FinetuneConfig
    from ledrec.training.jobs import PretrainConfig, TrainConfig, run_train
    from ledrec.training.split import strong_generalization_split
    from ledrec.training.synthetic import SyntheticConfig, synthetic_interactions

    home = Path(tempfile.mkdtemp(prefix="ledrec-demo-"))
    path = None if args.synthetic else find_movielens(args.movielens)
    titles: dict[str, str] = {}
    if path is not None:
        data, source = load_movielens(path), f"MovieLens-1M ({path})"
        try:
            titles = load_titles(path)
        except FileNotFoundError:
            _say(f"no movies.dat in {path}: items are shown by id")
    else:
        data = synthetic_interactions(SyntheticConfig(n_users=10_000, n_items=2_000, seed=0))
        source = "synthetic generator (seeded; no MovieLens-1M files found)"
    _say(f"data: {source}: {data.n_users} users, {data.n_items} items, {data.clicks.nnz} clicks")

    # The test users of the evaluation protocol never reach the trainer; their fold-in
    # events are replayed online below.
    split = strong_generalization_split(data, seed=0)
    t0 = time.perf_counter()
    config = TrainConfig(PretrainConfig(dim=args.dim), FinetuneConfig(dim=args.dim), seed=0)
    model_path = run_train(data, home / "models", config, progress=_say, source=source)
    model = load_model(model_path)
    _say(f"trained {model.version} (d={model.dim}) in {time.perf_counter() - t0:.1f}s")

    processes: list[subprocess.Popen[bytes]] = []
    try:
        _say("starting local stack: redis-server + Tansu broker")
        stack = stack_up(home)
        settings = Settings(
            kafka_bootstrap=stack.kafka_bootstrap,
            redis_url=stack.redis_url,
            home=home,
            timeline_max=4096,  # the protocol's encoder sees a user's whole fold-in
        )
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
            "REDIS_URL": stack.redis_url,
            "LEDREC_HOME": str(home),
            "LEDREC_TIMELINE_MAX": str(settings.timeline_max),
        }
        ensure_event_topics(settings, stack.kafka_bootstrap)
        r = redis_client(stack.redis_url)  # one Redis or a cluster (a `--redis-cluster` stack)
        registry = Registry(r, settings.key_prefix)
        registry.register(model)
        registry.activate(model.version)
        if titles:
            save_titles(r, settings.key_prefix, titles)
            _say(f"{len(titles)} titles in Redis ({Keyspace.of(r, settings.key_prefix).titles})")
        (home / "logs").mkdir(exist_ok=True)
        processes.append(_spawn(["consume"], env, home / "logs" / "consumer.log"))
        processes.append(_spawn(["serve"], env, home / "logs" / "scorer.log"))
        deadline = time.time() + 60
        while not any(
            s.get("partitions") for s in consumer_statuses(r, settings.key_prefix).values()
        ):
            if time.time() > deadline:
                raise RuntimeError(f"consumer did not join; see {home / 'logs' / 'consumer.log'}")
            time.sleep(0.2)
        _say("consumer joined its group; scorer running")

        # Replay: every fold-in click of the test users, as click events through Kafka.
        users = min(args.users, split.test_in.shape[0])
        test_in = split.test_in[:users]
        publisher = EventPublisher(settings, stack.kafka_bootstrap)
        n_events = 0
        t_pub = time.perf_counter()
        assert split.test_users is not None
        user_ids = [str(data.user_ids[row]) for row in split.test_users[:users]]
        for j, user in enumerate(user_ids):
            for col in test_in.indices[test_in.indptr[j] : test_in.indptr[j + 1]]:
                publisher.send(user, str(split.item_ids[col]), "click")
                n_events += 1
        publisher.close()  # flushed, and its broker connection gone before the stack stops
        published_s = time.perf_counter() - t_pub
        while (
            sum(s["applied"] for s in consumer_statuses(r, settings.key_prefix).values()) < n_events
        ):
            if time.perf_counter() - t_pub > 120:
                raise RuntimeError("consumer did not apply every event in 120 s")
            time.sleep(0.01)
        ingest_s = time.perf_counter() - t_pub
        _say(
            f"published {n_events} events in {published_s:.2f}s; all applied after {ingest_s:.2f}s"
        )

        client = RecommenderClient(r, settings.request_queue, settings.key_prefix, timeout_s=5.0)
        latencies, online = [], np.zeros((users, 50), dtype=np.int64)
        row_of = {str(item): i for i, item in enumerate(split.item_ids.tolist())}
        for j, user in enumerate(user_ids):
            t = time.perf_counter()
            items = client.recommend(user, k=50)
            latencies.append(time.perf_counter() - t)
            online[j] = [row_of[i] for i, _ in items]
        # The same model, scored offline from the same timelines.
        model_rows = np.array([model.row_of[str(i)] for i in split.item_ids.tolist()])
        scores = led_score_fn(model.embeddings[model_rows], model.biases[model_rows])(test_in)
        scores[test_in.nonzero()] = -np.inf
        offline = np.argsort(-scores, axis=1)[:, :50]
        heldout = split.test_out[:users]
        report = {
            "online": {k: _recall(online, heldout, k) for k in (20, 50)},
            "offline": {k: _recall(offline, heldout, k) for k in (20, 50)},
        }
        same_top20 = int(sum(set(online[j, :20]) == set(offline[j, :20]) for j in range(users)))
        held = split.test_out[0].indices  # the first replayed test user's held-out clicks
        example = _example(client, r, settings, user_ids[0], {str(split.item_ids[c]) for c in held})
        lat = np.array(latencies) * 1e3
        p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
        on, off = report["online"], report["offline"]
        lines = [
            "",
            f"ledrec demo — {source}",
            f"  model            {model.version}: {model.n_items} items, d={model.dim}",
            f"  validation       Recall@20 {model.metrics['recall@20']:.4f}, Recall@50 "
            f"{model.metrics['recall@50']:.4f} ({config.n_heldout} validation users, at training)",
            f"  ingest           {n_events} events of {users} users: "
            f"{n_events / ingest_s:,.0f} events/s (publish → applied in Redis, one consumer)",
            f"  request latency  p50 {p50:.2f} ms, p99 {p99:.2f} ms "
            f"({users} sequential requests, k=50, Redis RPC)",
            f"  test Recall@20   online {on[20]:.4f}   offline {off[20]:.4f}"
            f"   ({users} test users)",
            f"  test Recall@50   online {on[50]:.4f}   offline {off[50]:.4f}",
            f"  agreement        identical top-20 for {same_top20}/{users} users (exact index)",
        ]
        print("\n".join(lines))
        ok = abs(report["online"][20] - report["offline"][20]) < 1e-3 and same_top20 >= 0.99 * users
        print(f"  online == offline: {'yes' if ok else 'NO'}")
        print("\n".join(["", *example]))
        return 0 if ok else 1
    finally:
        for p in processes:
            p.terminate()
        for p in processes:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        stack_down(home)
        _say("stack stopped")
