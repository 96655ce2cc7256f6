"""The consumer's fast event check accepts exactly what the pydantic schema accepts."""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from ledrec.stream.events import EventCodec, EventError, fast_event_fields

_int64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what msgpack can carry
_ids = st.one_of(st.text(max_size=12), st.sampled_from(["", " u", "u ", "u1", "é"]), _int64)
_ts = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    _int64,
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)
_keys = st.sampled_from(["user_id", "item_id", "type", "ts", "extra"])
_events = st.one_of(
    st.fixed_dictionaries(
        {
            "user_id": _ids,
            "item_id": _ids,
            "type": st.sampled_from(["view", "click", "x", ""]),
            "ts": _ts,
        }
    ),
    st.dictionaries(_keys, st.one_of(_ids, _ts), max_size=5),
    st.lists(_int64, max_size=3),
)
CODEC = EventCodec(["view", "click", "sale"], max_id_length=8)


def _pydantic(raw: Any) -> tuple[str, str, str, float] | str:
    try:
        event = CODEC.validate(raw)
    except EventError as e:
        return e.reason
    return event.user_id, event.item_id, event.type, event.ts


@settings(max_examples=2000, deadline=None)
@given(_events)
def test_fast_check_accepts_only_what_pydantic_accepts_with_the_same_values(raw: Any) -> None:
    fast = fast_event_fields(raw)
    if fast is not None:
        expected = _pydantic(raw)
        if not isinstance(expected, str):  # limits, types and the ts range come after both
            assert fast == expected
        else:
            deployment_rules = ("longer than", "unknown event type", "ts ")
            assert any(rule in expected for rule in deployment_rules), expected


@settings(max_examples=2000, deadline=None)
@given(_events)
def test_decode_fields_equals_decode(raw: Any) -> None:
    payload = msgpack.packb(raw)
    try:
        expected: Any = CODEC.decode(payload)
        expected = (expected.user_id, expected.item_id, expected.type, expected.ts)
    except EventError as e:
        expected = e.reason
    try:
        got: Any = CODEC.decode_fields(payload)
    except EventError as e:
        got = e.reason
    assert got == expected


def test_garbage_and_oversized_payloads_keep_their_reasons() -> None:
    for payload in (None, b"\xc1", b"\x92\x01", b"\x00" * 5000):
        try:
            CODEC.decode(payload)
        except EventError as e:
            reason = e.reason
        try:
            CODEC.decode_fields(payload)
        except EventError as e:
            assert e.reason == reason


@settings(max_examples=1000, deadline=None)
@given(_events)
def test_json_events_decode_like_msgpack_ones(raw: Any) -> None:
    """The same map in JSON gets the same answer on both paths (NaN/Infinity are not JSON)."""
    import json
    import math

    payload = json.dumps(raw).encode()

    def outcome(decode: Any) -> Any:
        try:
            event = decode(payload)
        except EventError as e:
            return e.reason
        return tuple(event) if isinstance(event, tuple) else (
            event.user_id, event.item_id, event.type, event.ts
        )  # fmt: skip

    full, fast = outcome(CODEC.decode), outcome(CODEC.decode_fields)
    assert full == fast
    if not isinstance(raw, dict):
        return  # JSON is told apart by its first byte "{": only objects are JSON events
    if not any(isinstance(v, float) and not math.isfinite(v) for v in raw.values()):
        assert full == outcome(lambda _: CODEC.decode(msgpack.packb(raw)))
