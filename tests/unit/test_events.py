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
