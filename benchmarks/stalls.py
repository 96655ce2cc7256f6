"""Stalls of the machine itself: how late a 1 ms sleep wakes up, on each CPU, with nothing
of ours running (or next to a busy loop per CPU, ``--busy``). A serving p99 cannot be
lower than what the machine does to a sleeping process; this tells them apart.

    python -m benchmarks.stalls --seconds 60 [--busy]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from typing import Any

import numpy as np

from benchmarks.common import machine, percentiles


def _oversleeps(cpu: int, seconds: float, out: Any) -> None:  # child: one CPU's sleeper
    os.sched_setaffinity(0, {cpu})
    late: list[float] = []
    end = time.perf_counter() + seconds
    before = time.perf_counter()
    while before < end:
        time.sleep(0.001)
        now = time.perf_counter()
        late.append(now - before - 0.001)
        before = now
    out.put((cpu, late))


def _spin(cpu: int, seconds: float) -> None:  # child: a busy loop on one CPU
    os.sched_setaffinity(0, {cpu})
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _steal_s() -> float:
    """Time the host took from this VM's CPUs so far (``/proc/stat``), in seconds."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--busy", action="store_true", help="a busy loop beside each sleeper")
    args = p.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    steal0 = _steal_s()
    children = [ctx.Process(target=_oversleeps, args=(c, args.seconds, out)) for c in cpus]
    if args.busy:
        children += [ctx.Process(target=_spin, args=(c, args.seconds)) for c in cpus]
    for child in children:
        child.start()
    late = dict(out.get() for _ in cpus)
    for child in children:
        child.join()
    result = {
        "machine": machine(),
        "seconds": args.seconds,
        "busy_loop_beside": args.busy,
        "steal_s": round(_steal_s() - steal0, 3),
        "cpus": {},
    }
    for cpu in cpus:
        a = np.asarray(late[cpu])
        result["cpus"][cpu] = {
            "oversleep": percentiles(a),
            "max_ms": round(1e3 * float(a.max()), 1),
            "over_5_ms": int((a > 0.005).sum()),
            "over_20_ms": int((a > 0.02).sum()),
        }
        r = result["cpus"][cpu]
        print(
            f"cpu {cpu}: {a.size} sleeps of 1 ms, late by p50 {r['oversleep']['p50_us']:.0f} µs,"
            f" p99 {r['oversleep']['p99_us']:.0f} µs, max {r['max_ms']} ms;"
            f" {r['over_5_ms']} over 5 ms, {r['over_20_ms']} over 20 ms"
        )
    print(f"steal: {result['steal_s']} s")
    return result


if __name__ == "__main__":
    main()
