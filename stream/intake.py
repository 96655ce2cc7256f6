"""The scorer's intake: a batch of requests and their users' states in one round trip.

The wait for requests and the read of their users' states share one round trip
(instead of a pop, then an ``HMGET`` per user): ``BLMOVE`` waits
for a request and moves it to this scorer's own taking list, and a script pipelined
behind it (Redis runs it as soon as the ``BLMOVE`` returns) takes that request and up to
``batch_size - 1`` more from the queue and reads the state of each request's user. So
the only round trip of a batch is the one that also carries the previous batch's
replies (``stream.server``).

The script decodes requests with Redis's ``cmsgpack`` only to find the user id; it
trusts nothing: a request it cannot decode, or without a plausible user id, is returned
with no state and judged by the scorer's own validation (``protocol.decode_request``);
a valid user request without a state is read when it is served
(``RecommendServer._states``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from ledrec.stream._resp import resp_command

# KEYS[1] the request queue, KEYS[2] this scorer's taking list (where BLMOVE put the
# request it waited for). ARGV: how many more to take from the queue, the request size
# bound, the user id bound in bytes, the user key prefix, then the state fields to read
# (none: no state is read).
# Returns request, state fields (or 0: not read), request, state fields, ... oldest first.
_TAKE = """
local taken = redis.call('RPOP', KEYS[2], 64) or {}
local more = tonumber(ARGV[1])
if more > 0 then
  for _, r in ipairs(redis.call('RPOP', KEYS[1], more) or {}) do taken[#taken + 1] = r end
end
local max_bytes, max_id, prefix = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local out = {}
for _, payload in ipairs(taken) do
  local state = 0
  if #payload <= max_bytes then
    local ok, req = pcall(cmsgpack.unpack, payload)
    if ok and type(req) == 'table' then
      local user = req['user_id']
      if type(user) == 'string' and #user > 0 and #user <= max_id and #ARGV > 4 then
        state = redis.call('HMGET', prefix .. user, unpack(ARGV, 5))
      end
    end
  end
  out[#out + 1] = payload
  out[#out + 1] = state
end
return out
"""


@dataclass(frozen=True, slots=True)
class Taken:
    """One popped request and its user's state fields as read with it (None: not read)."""

    payload: bytes
    state: list[Any] | None


class Intake:
    """Builds the wait-and-take commands of a scorer's round trip and reads their replies."""

    def __init__(
        self,
        client: redis.Redis,
        queue: str,
        taking: str,
        batch_size: int,
        max_request_bytes: int,
        max_id_length: int,
        user_key_prefix: bytes,
    ) -> None:
        self.client = client
        self.queue = queue.encode()
        self.taking = taking.encode()
        self._sha = hashlib.sha1(_TAKE.encode()).hexdigest().encode()  # loaded on NOSCRIPT
        self._more = b"%d" % (batch_size - 1)
        # the script measures bytes: an id of max_id_length characters is at most 4x that
        self._bounds = (b"%d" % max_request_bytes, b"%d" % (4 * max_id_length))
        self._prefix = user_key_prefix
        self._packed: list[bytes] = []
        self._packed_for: tuple[float, tuple[bytes, ...], bytes] | None = None

    def commands(self, block_s: float, fields: tuple[bytes, ...]) -> list[bytes]:
        """``BLMOVE`` (wait up to ``block_s``) and the take script reading ``fields``."""
        key = (block_s, fields, self._sha)
        if key != self._packed_for:  # the same every batch but after a swap: pack once
            wait = resp_command(
                b"BLMOVE", self.queue, self.taking, b"RIGHT", b"LEFT", b"%g" % block_s
            )
            take = resp_command(
                b"EVALSHA", self._sha, b"2", self.queue, self.taking, self._more, *self._bounds,
                self._prefix, *fields,
            )  # fmt: skip
            self._packed, self._packed_for = [wait, take], key
        return self._packed

    def taken(self, replies: Sequence[Any], fields: Sequence[bytes]) -> list[Taken]:
        """The requests in the replies to ``commands`` (raises their error replies).

        A script missing from Redis (restarted, or flushed) is loaded and run again: the
        request ``BLMOVE`` moved is still in the taking list, so nothing is lost.
        """
        moved, took = replies
        if isinstance(moved, Exception):
            raise moved
        if isinstance(took, redis.exceptions.NoScriptError):
            self._sha = self.client.script_load(_TAKE).encode()
            took = self.client.execute_command(  # type: ignore[no-untyped-call]
                "EVALSHA", self._sha, 2, self.queue, self.taking, self._more, *self._bounds,
                self._prefix, *fields,
            )  # fmt: skip
        if isinstance(took, Exception):
            raise took
        return [
            Taken(took[j], took[j + 1] if isinstance(took[j + 1], list) else None)
            for j in range(0, len(took), 2)
        ]
