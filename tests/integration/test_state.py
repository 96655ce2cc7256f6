"""User state in a real Redis: exactly-once application, window arithmetic, races."""

import numpy as np
import redis

from ledrec.settings import Settings
from ledrec.stream.encoder import window_sum
from ledrec.stream.state import StateWriter, TimelineEvent, UserStateStore
from tests.helpers import clean_pass, random_model


def _store(settings: Settings, client: redis.Redis, timeline_max: int = 5) -> UserStateStore:
    return UserStateStore(client, settings.key_prefix, timeline_max, ttl_seconds=3600)


def test_window_sum_is_exact_after_items_fall_off(
    settings: Settings, redis_client: redis.Redis
) -> None:
    model = random_model(version="v1")
    store = _store(settings, redis_client)
    events = [("u", f"i{(7 * n) % 50}", 1.0 + (n % 3)) for n in range(23)] + [("u", "unknown", 1.0)]
    for offset, (user, item, w) in enumerate(events):  # one event per batch, like a slow stream
        StateWriter(store).apply({user: [TimelineEvent(0, offset, item, w)]}, [model])
    state = store.read("u", ["v1"])
    window, total, weight = clean_pass(events, 5, model)["u"]
    assert state is not None and state.timeline == window
    np.testing.assert_allclose(state.sums["v1"], total, rtol=1e-9, atol=1e-9)
    assert state.weights["v1"] == weight  # the unknown item counts toward nothing


def test_redelivered_events_are_not_applied_twice(
    settings: Settings, redis_client: redis.Redis
) -> None:
    model = random_model(version="v1")
    store = _store(settings, redis_client, timeline_max=100)
    batch = {"u": [TimelineEvent(2, o, f"i{o}", 1.0) for o in range(10)]}
    first = StateWriter(store).apply(batch, [model])
    again = StateWriter(store).apply(
        batch, [model]
    )  # a crash before the Kafka commit redelivers it
    overlapping = StateWriter(store).apply(
        {"u": [TimelineEvent(2, o, f"i{o}", 1.0) for o in range(5, 15)]}, [model]
    )
    assert (first.applied_events, again.applied_events, again.skipped_events) == (10, 0, 10)
    assert (overlapping.applied_events, overlapping.skipped_events) == (5, 5)
    state = store.read("u", ["v1"])
    assert state is not None and [i for i, _ in state.timeline] == [f"i{o}" for o in range(15)]
    total, _ = window_sum(model, state.timeline)
    np.testing.assert_allclose(state.sums["v1"], total, rtol=1e-9)


def test_a_stale_writer_loses_the_race_and_changes_nothing(
    settings: Settings, redis_client: redis.Redis
) -> None:
    model = random_model(version="v1")
    store = _store(settings, redis_client)
    StateWriter(store).apply({"u": [TimelineEvent(0, 0, "i1", 1.0)]}, [model])
    stale = store.read("u", ["v1"])
    StateWriter(store).apply({"u": [TimelineEvent(0, 1, "i2", 1.0)]}, [model])
    assert stale is not None
    assert not store.set_sum("u", stale, model, np.zeros(model.dim), 0.0)
    state = store.read("u", ["v1"])
    assert state is not None and state.weights["v1"] == 2.0


def test_a_new_version_gets_its_sum_from_the_whole_timeline(
    settings: Settings, redis_client: redis.Redis
) -> None:
    v1, v2 = random_model(seed=1, version="v1"), random_model(seed=2, version="v2")
    store = _store(settings, redis_client)
    StateWriter(store).apply({"u": [TimelineEvent(0, o, f"i{o}", 1.0) for o in range(4)]}, [v1])
    StateWriter(store).apply({"u": [TimelineEvent(0, 4, "i4", 1.0)]}, [v1, v2])  # v2 becomes live
    state = store.read("u", ["v1", "v2"])
    assert state is not None
    for model in (v1, v2):
        total, weight = window_sum(model, state.timeline)
        np.testing.assert_allclose(state.sums[model.version], total, rtol=1e-9)
        assert state.weights[model.version] == weight == 5.0


def test_inactive_users_expire(settings: Settings, redis_client: redis.Redis) -> None:
    store = UserStateStore(redis_client, settings.key_prefix, 5, ttl_seconds=60)
    StateWriter(store).apply({"u": [TimelineEvent(0, 0, "i1", 1.0)]}, [random_model(version="v1")])
    assert 0 < redis_client.ttl(store.key("u")) <= 60


def test_a_timeline_write_drops_the_sums_its_writer_did_not_know(
    settings: Settings, redis_client: redis.Redis
) -> None:
    v1, v2 = random_model(seed=1, version="v1"), random_model(seed=2, version="v2")
    store = _store(settings, redis_client)
    StateWriter(store).apply({"u": [TimelineEvent(0, 0, "i1", 1.0)]}, [v1])
    read = store.read("u", ["v1"])
    assert read is not None
    assert store.set_sum("u", read, v2, *window_sum(v2, read.timeline))  # the re-encoder
    assert "v2" in (store.read("u", ["v2"]) or read).sums
    StateWriter(store).apply(
        {"u": [TimelineEvent(0, 1, "i2", 1.0)]}, [v1]
    )  # a writer not knowing v2
    state = store.read("u", ["v1", "v2"])
    assert state is not None and "v2" not in state.sums and "v1" in state.sums
    StateWriter(store).apply({"u": [TimelineEvent(0, 2, "i3", 1.0)]}, [v1, v2])  # both live again
    state = store.read("u", ["v1", "v2"])
    assert state is not None
    np.testing.assert_allclose(state.sums["v2"], window_sum(v2, state.timeline)[0], rtol=1e-9)
