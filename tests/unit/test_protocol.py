import re
import time

import msgpack
import pytest

from ledrec.stream.protocol import (
    MAX_REQUEST_ID_LENGTH,
    Limits,
    Request,
    RequestError,
    decode_request,
    encode_request,
    new_request,
    valid_request_id,
)

LIMITS = Limits(max_request_bytes=4096, max_id_length=32, max_k=100, max_timeline=10)


def _raw(**body: object) -> bytes:
    base: dict[str, object] = {
        "id": "r1",
        "reply_to": "q:r1",
        "deadline": time.time() + 1,
        "k": 5,
        "user_id": "u",
    }
    base.update(body)
    return msgpack.packb({k: v for k, v in base.items() if v is not None})


def test_round_trip() -> None:
    req = Request("r", "q:r", 123.0, 7, items=("a", "b"), exclude_seen=False)
    assert decode_request(encode_request(req), LIMITS) == req


@pytest.mark.parametrize(
    ("raw", "message", "can_reply"),
    [
        (b"\xc1", "undecodable", False),
        (msgpack.packb([1]), "map", False),
        (_raw(reply_to=5), "reply_to", False),
        (_raw(k=0), "k must be", True),
        (_raw(k=10**9), "k must be", True),
        (_raw(k=True), "k must be", True),
        (_raw(k="5"), "k must be", True),
        (_raw(deadline=float("nan")), "finite", True),
        (_raw(deadline="soon"), "deadline", True),
        (_raw(items=["a"]), "exactly one", True),
        (_raw(user_id=None), "exactly one", True),
        (_raw(user_id="x" * 33), "user_id", True),
        (_raw(user_id=None, items=["a"] * 11), "at most 10", True),
        (_raw(user_id=None, items=["a", 3]), "item id", True),
        (_raw(exclude_seen="yes"), "exclude_seen", True),
        (b"\x90" * 5000, "exceeds", False),
    ],
)
def test_bad_requests(raw: bytes, message: str, can_reply: bool) -> None:
    with pytest.raises(RequestError) as e:
        decode_request(raw, LIMITS)
    assert message in str(e.value)
    assert (e.value.reply_to is not None) == can_reply


@pytest.mark.parametrize(
    ("request_id", "valid"),
    [
        ("3f2a9c", True),
        ("req:gw-1/2.a_b", True),
        ("x" * MAX_REQUEST_ID_LENGTH, True),
        ("x" * (MAX_REQUEST_ID_LENGTH + 1), False),
        ("", False),
        ("a b", False),
        ("a\nb", False),
        ("é", False),
        (42, False),
        (None, False),
    ],
)
def test_valid_request_ids(request_id: object, valid: bool) -> None:
    assert valid_request_id(request_id) is valid


def test_a_callers_request_id_is_sent_but_never_routes_the_reply() -> None:
    """Two calls under one caller's id (ids from outside need not be unique) get their own
    reply keys; without one, the id is the reply key's own fresh id."""
    first, second = (new_request("p", 5, 1.0, "u", None, True, request_id="trace") for _ in "ab")
    assert first.id == second.id == "trace"
    assert first.reply_to != second.reply_to and "trace" not in first.reply_to
    fresh = new_request("p", 5, 1.0, "u", None, True)
    assert re.fullmatch("[0-9a-f]{32}", fresh.id) and fresh.reply_to.endswith(fresh.id)
    assert decode_request(encode_request(first), LIMITS).id == "trace"


def test_an_invalid_request_id_is_still_answered_under_no_id() -> None:
    assert decode_request(_raw(id="a b"), LIMITS).id == ""
    assert decode_request(_raw(id=7), LIMITS).id == ""
    with pytest.raises(RequestError) as e:  # no reply key: dropped, but logged by its id
        decode_request(_raw(id="r9", reply_to=None), LIMITS)
    assert e.value.request_id == "r9" and e.value.reply_to is None
