from __future__ import annotations

import threading
import time

from ledrec.stream.backoff import Backoff


def test_delays_double_up_to_the_cap_with_jitter_and_reset() -> None:
    backoff = Backoff(first=0.1, cap=0.8)
    bounds = [0.1, 0.2, 0.4, 0.8, 0.8, 0.8]
    delays = [backoff.next() for _ in bounds]
    assert all(b / 2 <= d <= b for d, b in zip(delays, bounds, strict=True)), delays
    backoff.reset()
    assert backoff.next() <= 0.1


def test_jitter_spreads_processes_cut_off_together() -> None:
    firsts = {round(Backoff(first=1.0).next(), 6) for _ in range(50)}
    assert len(firsts) > 40


def test_wait_returns_early_when_stopped() -> None:
    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    Backoff(first=10.0).wait(stop)
    assert time.monotonic() - started < 1.0
