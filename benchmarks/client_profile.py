"""Where a library client's time goes: a closed loop through it against the no-work echo
server (``benchmarks.serving``'s floor), in this process, under a profiler.

    python -m benchmarks.client_profile --client asyncio --callers 16 --seconds 5

Writes ``<out>/client_<client>_<profiler>.txt``: pyinstrument's call tree (wall time:
what the event loop waits in shows as ``select``), or cProfile's functions by their own
time (CPU spent in them, the loop's waits in ``select.epoll.poll``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from pathlib import Path
from typing import Any

from benchmarks.clients import LoadSpec, drive
from benchmarks.common import RESULTS, bench_settings, private_stack
from benchmarks.serving import _with_server


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--client", choices=["sync", "asyncio"], default="asyncio")
    p.add_argument("--callers", type=int, default=16, help="closed loop: calls in flight")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--profiler", choices=["pyinstrument", "cprofile"], default="pyinstrument")
    p.add_argument("--out", type=Path, default=RESULTS / "profiles")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    with private_stack(kafka=False) as stack:
        settings = bench_settings(stack, key_prefix="prof")

        def profiled() -> list[dict[str, Any]]:
            spec = LoadSpec("closed", args.callers, 0.0, 0.0, "poisson", time.time() + 0.5,
                            1.0, args.seconds)  # fmt: skip
            cpu0 = time.process_time()
            if args.profiler == "pyinstrument":
                from pyinstrument import Profiler

                profiler = Profiler(interval=0.0005, async_mode="disabled")
                profiler.start()
                raw = drive(args.client, settings, ["u"], [spec])[0]
                profiler.stop()
                text = profiler.output_text(unicode=True, color=False, show_all=False)
            else:
                prof = cProfile.Profile()
                raw = prof.runcall(drive, args.client, settings, ["u"], [spec])[0]
                buf = io.StringIO()
                pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(40)
                text = buf.getvalue()
            cpu = time.process_time() - cpu0
            n = len(raw["latencies"])
            result.update(
                answered_per_s=round(n / args.seconds),
                cpu_us_per_call=round(1e6 * cpu / max(1, n), 1),  # warmup and profiler in
                errors=raw["errors"],
            )
            path = args.out / f"client_{args.client}_{args.profiler}.txt"
            head = (
                f"# python -m benchmarks.client_profile --client {args.client} --callers"
                f" {args.callers} --seconds {args.seconds:g} --profiler {args.profiler}\n"
                f"# against the echo server; {result}\n"
            )
            path.write_text(head + text)
            print(head + text[:6000])
            return []

        _with_server(settings, "echo", profiled)
    return result


if __name__ == "__main__":
    main()
