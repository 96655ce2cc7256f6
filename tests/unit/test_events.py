import math

import msgpack
import pytest

from ledrec.stream.events import EventCodec, EventError

CODEC = EventCodec({"view": 1.0, "click": 1.0}, max_id_length=16, max_event_bytes=256)


def test_round_trip() -> None:
    event = CODEC.make("u1", "i9", "click", 12.5)
    assert CODEC.decode(CODEC.encode(event)) == event


def test_integer_ids_and_ts_are_accepted_as_strings_and_float() -> None:
    event = CODEC.make(7, 8, "view", 3)
    assert (event.user_id, event.item_id, event.ts) == ("7", "8", 3.0)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xc1", "undecodable"),
        (msgpack.packb([1, 2]), "must be a map"),
        (
            msgpack.packb({"user_id": "u", "item_id": "i", "type": "buy", "ts": 1.0}),
            "unknown event type",
        ),
        (msgpack.packb({"user_id": "u", "item_id": "i", "type": "view"}), "ts"),
        (msgpack.packb({"user_id": "", "item_id": "i", "type": "view", "ts": 1.0}), "user_id"),
        (msgpack.packb({"user_id": "u" * 17, "item_id": "i", "type": "view", "ts": 1.0}), "longer"),
        (msgpack.packb({"user_id": 5, "item_id": "i", "type": "view", "ts": 1.0}), "user_id"),
        (msgpack.packb({"user_id": "u", "item_id": "i", "type": "view", "ts": math.nan}), "ts"),
        (msgpack.packb({"user_id": "u", "item_id": "i", "type": "view", "ts": 1.0, "x": 1}), "x"),
        (
            msgpack.packb({"user_id": "u", "item_id": "a\x1fb", "type": "view", "ts": 1.0}),
            "control characters",
        ),
        (b"\x00" * 300, "exceeds"),
        (None, "empty"),
    ],
)
def test_bad_payloads_raise_event_error_with_reason(payload: bytes | None, reason: str) -> None:
    with pytest.raises(EventError) as e:
        CODEC.decode(payload)
    assert reason in e.value.reason


@pytest.mark.parametrize(
    ("ts", "reason"),
    [
        (1e20, "in the future"),
        (1.7e12, "looks like milliseconds"),
        (-5.0, "non-negative"),
        (float("inf"), "finite"),
    ],
)
def test_timestamps_out_of_range_are_refused_naming_the_problem(ts: float, reason: str) -> None:
    payload = msgpack.packb({"user_id": "u", "item_id": "i", "type": "view", "ts": ts})
    for decode in (CODEC.decode, CODEC.decode_fields):  # the consumer's path and the full one
        with pytest.raises(EventError, match=reason):
            decode(payload)
    with pytest.raises(EventError, match=reason):
        CODEC.make("u", "i", "view", ts)  # the CLI's and the publisher's path


def test_the_accepted_ts_range_is_configurable() -> None:
    import time

    strict = EventCodec({"view"}, min_ts=1e9, max_future_s=60.0)
    assert strict.make("u", "i", "view", time.time() + 30).ts > 0
    with pytest.raises(EventError, match="in the future"):
        strict.make("u", "i", "view", time.time() + 3600)
    with pytest.raises(EventError, match="before the earliest"):
        strict.make("u", "i", "view", 5.0)
