import time

import msgpack
import pytest

from ledrec.stream.protocol import Limits, Request, RequestError, decode_request, encode_request

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
