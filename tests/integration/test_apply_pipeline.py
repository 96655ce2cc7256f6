"""The state write paths against a real Redis, one contract for all of them: synchronous
(``apply``), pipelined in one piece and pipelined in chunks behind the write in flight
(``submit``) give the same result as a clean pass, whatever the overlap between batches,
the partitions they carry and the writers racing them."""

import numpy as np
import pytest
import redis

from ledrec.settings import Settings
from ledrec.stream.encoder import window_sum
from ledrec.stream.state import StateWriter, TimelineEvent, UserStateStore, writer
from tests.helpers import clean_pass, random_model

T_MAX = 7
pytestmark = pytest.mark.contract
# the write paths: synchronous, and pipelined with the default early chunk (a batch here is
# one chunk) or a few users per chunk (many chunks)
PATHS = pytest.mark.parametrize("path", ["apply", f"submit-{writer.EARLY_CHUNK_USERS}", "submit-3"])
CHUNKS = pytest.mark.parametrize("chunk", [writer.EARLY_CHUNK_USERS, 3])


def _batches(n_events: int, size: int, seed: int) -> list[dict[str, list[TimelineEvent]]]:
    """Few users, so consecutive batches share many; each user keeps one partition, and
    some batches hold only one partition (their users' projections lack offsets)."""
    rng = np.random.default_rng(seed)
    batches: list[dict[str, list[TimelineEvent]]] = []
    offset = 0
    while offset < n_events:
        only = int(rng.integers(2)) if rng.random() < 0.2 else None
        batch: dict[str, list[TimelineEvent]] = {}
        for _ in range(size):
            u = int(rng.integers(20))
            if only is not None and u % 2 != only:
                continue
            event = TimelineEvent(
                u % 2, offset, f"i{int(rng.integers(60))}", float(rng.integers(1, 4))
            )
            batch.setdefault(f"u{u}", []).append(event)
            offset += 1
        batches.append(batch)
    return batches


def _reference(batches: list[dict[str, list[TimelineEvent]]]) -> list[tuple[str, str, float]]:
    events = [(u, e) for b in batches for u, evs in b.items() for e in evs]
    events.sort(key=lambda ue: ue[1].offset)
    return [(u, e.item_id, e.weight) for u, e in events]


def _check(store: UserStateStore, batches: list[dict[str, list[TimelineEvent]]]) -> None:
    model = random_model(version="v1")
    expected = clean_pass(_reference(batches), T_MAX, model)
    for user, (window, total, weight) in expected.items():
        state = store.read(user, ["v1"])
        assert state is not None and state.timeline == window, user
        np.testing.assert_allclose(state.sums["v1"], total, rtol=1e-9, atol=1e-9)
        assert abs(state.weights["v1"] - weight) < 1e-9


@PATHS
def test_every_write_path_equals_a_clean_pass_despite_racing_writers(
    settings: Settings, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    mode, _, chunk = path.partition("-")
    if chunk:
        monkeypatch.setattr(writer, "EARLY_CHUNK_USERS", int(chunk))
    v1, v2 = random_model(version="v1"), random_model(seed=5, version="v2")
    store = UserStateStore(redis_client, settings.key_prefix, T_MAX, ttl_seconds=3600)
    pipeline = StateWriter(store)
    batches = _batches(3000, 40, seed=1)
    applied = conflicts = 0
    for n, batch in enumerate(batches):
        stats = (
            pipeline.apply(batch, [v1]) if mode == "apply" else pipeline.submit(batch, [v1]).stats
        )
        applied += stats.applied_events
        conflicts += stats.conflicts
        if n % 3 == 0:  # the re-encoder writes a few users while this batch is in flight
            for user in list(batch)[:3]:
                read = store.read(user, [])
                if read is not None:
                    store.set_sum(user, read, v2, *window_sum(v2, read.timeline))
    settled = pipeline.drain([v1])
    applied += settled.stats.applied_events
    assert applied == sum(len(evs) for b in batches for evs in b.values())
    if mode == "submit":  # (apply returns before the next racing write: nothing to lose)
        assert conflicts > 0  # the racing writes did make compare-and-sets fail
    _check(store, batches)


@CHUNKS
def test_recovering_mid_pipeline_redoes_exactly_what_may_be_missing(
    settings: Settings, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(writer, "EARLY_CHUNK_USERS", chunk)
    v1 = random_model(version="v1")
    store = UserStateStore(redis_client, settings.key_prefix, T_MAX, ttl_seconds=3600)
    pipeline = StateWriter(store)
    batches = _batches(1500, 40, seed=2)
    for n, batch in enumerate(batches):
        pipeline.submit(batch, [v1])
        if n % 5 == 4:  # as if Redis had failed: the consumer redoes what may be missing
            pipeline.recover([v1])
    pipeline.drain([v1])
    _check(store, batches)
