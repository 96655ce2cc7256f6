"""Capped exponential backoff with jitter: how every loop rides out an unreachable server."""

from __future__ import annotations

import random
import threading

MAX_BACKOFF_S = 5.0


class Backoff:
    """Delays that double from ``first`` up to ``cap``, each drawn in ``[d/2, d]`` ("equal
    jitter") so that processes cut off together do not all retry in the same instant."""

    def __init__(self, first: float = 0.1, cap: float = MAX_BACKOFF_S) -> None:
        self.first, self.cap = first, cap
        self._next = first

    def next(self) -> float:
        """The delay before the next attempt (and double the one after, up to ``cap``)."""
        delay = self._next
        self._next = min(2 * delay, self.cap)
        return random.uniform(delay / 2, delay)

    def wait(self, stop: threading.Event) -> float:
        """Sleep the next delay, or less if ``stop`` is set; returns the delay."""
        delay = self.next()
        stop.wait(delay)
        return delay

    def reset(self) -> None:
        """After a success: start again from ``first``."""
        self._next = self.first
