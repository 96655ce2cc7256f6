"""Decoding untrusted msgpack: one policy for events and RPC requests alike."""

from __future__ import annotations

from typing import Any

import msgpack


def unpack_untrusted(payload: bytes, max_bytes: int, what: str) -> Any:
    """Decode ``payload`` (at most ``max_bytes``) or raise ValueError with the reason.

    Binary fields are refused (ids are text), and map keys must be str or bytes, so no
    input can make the decoder build unhashable keys or large opaque blobs.
    """
    if len(payload) > max_bytes:
        raise ValueError(f"{what} of {len(payload)} bytes exceeds {max_bytes}")
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=True, max_bin_len=0)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise ValueError(f"undecodable msgpack: {type(e).__name__}") from None
