"""The event schema and its wire codec: the contract between producers and consumers.

An event is a map ``{"user_id", "item_id", "type", "ts"}`` (``ts`` in epoch seconds),
msgpack or UTF-8 JSON, produced with key = the UTF-8 user id, so one user's events stay
ordered in one partition and have one writer. The whole contract: ``docs/events.md``.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Collection
from typing import Any

import msgpack
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ledrec.errors import LedrecError
from ledrec.stream.wire import unpack_untrusted

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def has_control_character(text: str) -> bool:
    """Whether ``text`` holds an ASCII control character: ids and version names may not, since
    the stored timeline and version list join them with one (``ledrec.stream.state.ITEM_SEP``)."""
    return _CONTROL.search(text) is not None


class EventError(LedrecError, ValueError):
    """An event that cannot be accepted; ``reason`` goes to the dead-letter headers.

    ``code``: the kind of refusal, from a small fixed set (a metric label: the reason
    itself names values): ``empty``, ``undecodable``, ``not_a_map``, ``extra_field``,
    ``invalid_user_id`` / ``_item_id`` / ``_type`` / ``_ts``, ``invalid``, ``id_too_long``,
    ``unknown_type``, ``bad_ts``.
    """

    def __init__(self, reason: str, code: str = "invalid") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class Event(BaseModel):
    """One user-item interaction."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    user_id: str = Field(
        description="Who: non-empty, no surrounding whitespace, no control characters, at "
        "most max_id_length (256) characters. Also the message key (UTF-8)."
    )
    item_id: str = Field(description="What: the same rules as user_id.")
    type: str = Field(description="One of the deployment's event types (view, click, sale).")
    ts: float = Field(
        description="When, in epoch seconds (not milliseconds): finite, not before "
        "event_ts_min (0), at most event_ts_max_future_s (86400) ahead of the consumer."
    )

    @field_validator("user_id", "item_id")
    @classmethod
    def _id_not_blank(cls, v: str) -> str:
        if not v or v.strip() != v:
            raise ValueError("ids must be non-empty without surrounding whitespace")
        if has_control_character(v):
            raise ValueError("ids must not contain control characters")
        return v

    @field_validator("ts")
    @classmethod
    def _ts_finite(cls, v: float) -> float:
        if not math.isfinite(v) or v < 0:
            raise ValueError("ts must be a finite, non-negative epoch time in seconds")
        return v


def ts_problem(ts: float, now: float, min_ts: float, max_future_s: float) -> str | None:
    """Why ``ts`` (epoch seconds) cannot be accepted at ``now``, or None if it can.

    A value that would be plausible in seconds once divided by 1000 is named as
    milliseconds (the usual mistake of JavaScript and Java producers).
    """
    if min_ts <= ts <= now + max_future_s:
        return None
    if ts >= 1e11 and min_ts <= ts / 1000 <= now + max_future_s:  # 1e11 ms: March 1973
        return f"ts {ts:.15g} looks like milliseconds: ts is epoch seconds (ts / 1000)"
    if ts > now:
        return f"ts {ts:.15g} is more than {max_future_s:g} s in the future (epoch seconds)"
    return f"ts {ts:.15g} is before the earliest accepted time {min_ts:.15g} (epoch seconds)"


_FIELDS = ("user_id", "item_id", "type", "ts")


def _code_of(error: Any) -> str:
    """The refusal code of a pydantic validation error (``EventError.code``)."""
    if error.get("type") == "extra_forbidden":
        return "extra_field"
    loc = error.get("loc") or ()
    return f"invalid_{loc[0]}" if loc and loc[0] in _FIELDS else "invalid"


class EventCodec:
    """Encodes and validates events against the deployment's types and limits.

    ``min_ts`` / ``max_future_s``: the accepted range of ``ts`` (epoch seconds): not before
    ``min_ts``, not more than ``max_future_s`` after the validating machine's clock.
    """

    def __init__(
        self,
        event_types: Collection[str],
        max_id_length: int = 256,
        max_event_bytes: int = 4096,
        min_ts: float = 0.0,
        max_future_s: float = 86_400.0,
    ) -> None:
        self.event_types = frozenset(event_types)
        self.max_id_length = max_id_length
        self.max_event_bytes = max_event_bytes
        self.min_ts, self.max_future_s = min_ts, max_future_s

    def make(self, user_id: Any, item_id: Any, type: Any, ts: Any = None) -> Event:
        """Build a validated event from loose input (CLI rows, API calls)."""
        raw = {
            "user_id": str(user_id) if isinstance(user_id, int) else user_id,
            "item_id": str(item_id) if isinstance(item_id, int) else item_id,
            "type": type,
            "ts": time.time() if ts is None or ts == "" else _as_float(ts),
        }
        return self.validate(raw)

    def validate(self, raw: Any) -> Event:
        """Turn a decoded mapping into an Event, or raise EventError with the reason."""
        if not isinstance(raw, dict):
            raise EventError(f"event must be a map, got {type(raw).__name__}", "not_a_map")
        if isinstance(raw.get("ts"), int) and not isinstance(raw.get("ts"), bool):
            raw = {**raw, "ts": float(raw["ts"])}
        try:
            event = Event.model_validate(raw)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "event"
            raise EventError(f"invalid {where}: {first['msg']}", _code_of(first)) from None
        return self.check(event)

    def check(self, event: Event) -> Event:
        """The deployment's rules beyond the schema: id lengths, event type, ts range."""
        if len(event.user_id) > self.max_id_length or len(event.item_id) > self.max_id_length:
            raise EventError(f"id longer than {self.max_id_length} characters", "id_too_long")
        if event.type not in self.event_types:
            raise EventError(f"unknown event type {event.type[:64]!r}", "unknown_type")
        problem = ts_problem(event.ts, time.time(), self.min_ts, self.max_future_s)
        if problem is not None:
            raise EventError(problem, "bad_ts")
        return event

    def encode(self, event: Event) -> bytes:
        packed: bytes = msgpack.packb(
            {"user_id": event.user_id, "item_id": event.item_id, "type": event.type, "ts": event.ts}
        )
        return packed

    def decode(self, payload: bytes | None) -> Event:
        """Decode wire bytes into a validated Event, or raise EventError."""
        if payload is None:
            raise EventError("empty message", "empty")
        try:
            raw = decode_wire(payload, self.max_event_bytes)
        except ValueError as e:
            raise EventError(str(e), "undecodable") from None
        return self.validate(raw)

    def decode_fields(self, payload: bytes | None) -> tuple[str, str, str, float]:
        """``decode`` for the consumer's hot path: (user_id, item_id, type, ts).

        A well-formed event is checked by :func:`fast_event_fields` (Event's rules without
        building a pydantic object); anything else goes through :meth:`decode`, so every
        rejection and its reason are pydantic's.
        """
        if payload is not None and len(payload) <= self.max_event_bytes:
            try:
                if payload[:1] == b"{":
                    raw = json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
                else:
                    raw = msgpack.unpackb(payload, raw=False, strict_map_key=True, max_bin_len=0)
            except Exception:  # reported by decode below
                raw = None
            fields = fast_event_fields(raw)
            if (
                fields is not None
                and len(fields[0]) <= self.max_id_length
                and len(fields[1]) <= self.max_id_length
                and fields[2] in self.event_types
                and self.min_ts <= fields[3] <= time.time() + self.max_future_s
            ):
                return fields
        event = self.decode(payload)
        return event.user_id, event.item_id, event.type, event.ts


def decode_wire(payload: bytes, max_bytes: int) -> Any:
    """An event's bytes decoded: UTF-8 JSON when the first byte is ``{``, msgpack otherwise
    (a msgpack map never starts with that byte). ValueError with the reason."""
    if payload[:1] != b"{":
        return unpack_untrusted(payload, max_bytes, "message")
    if len(payload) > max_bytes:
        raise ValueError(f"message of {len(payload)} bytes exceeds {max_bytes}")
    try:
        return json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"undecodable JSON: {type(e).__name__}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: Python's extensions


def fast_event_fields(raw: Any) -> tuple[str, str, str, float] | None:
    """Event's rules for the common well-formed case, or None when pydantic must judge.

    Accepts only what ``Event.model_validate`` accepts, with the same values (tested for
    equivalence with hypothesis); it never rejects, it defers.
    """
    if type(raw) is not dict or len(raw) != 4:
        return None
    user_id, item_id, kind, ts = (
        raw.get("user_id"), raw.get("item_id"), raw.get("type"), raw.get("ts")
    )  # fmt: skip
    if type(user_id) is not str or type(item_id) is not str or type(kind) is not str:
        return None
    if type(ts) is int:
        ts = float(ts)
    elif type(ts) is not float:
        return None
    if not user_id or user_id.strip() != user_id or not item_id or item_id.strip() != item_id:
        return None
    if not (user_id.isprintable() and item_id.isprintable()):
        return None  # maybe a control character (rejected), maybe not: pydantic decides
    if not math.isfinite(ts) or ts < 0:
        return None
    return user_id, item_id, kind, ts


def _as_float(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return v  # let validation report it
