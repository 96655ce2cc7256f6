"""Single node vs Redis Cluster, in the same run, with the same workload: ingest and serving.

Runs ``benchmarks.ingest`` and ``benchmarks.serving`` twice each, back to back, with the
same arguments and seeds: once on one ``redis-server``, once on a local Redis Cluster of
``--primaries`` primaries (no replicas), all on this machine's loopback. Each run keeps its
own same-run floor (ingest: raw pipelined HSETs of the same hashes, grouped per node on the
cluster; serving: the echo server, same load generators). Writes every part's full result
to ``<out>/cluster/`` and the comparison (cluster / single ratios) to ``<out>/cluster.json``.

    python -m benchmarks.cluster                  # ~4 minutes on 2 cores
    python -m benchmarks.cluster --quick          # seconds: the smoke size
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from benchmarks import ingest, serving
from benchmarks.common import RESULTS, write_result

NAME = "cluster"

# the default sizes: short enough for a 2-core machine, long enough for stable medians
INGEST_ARGS = ["--items", "10000", "--events", "200000"]
# the lean generator alone, evenly spaced, no overload: the comparison as first measured
LEAN_ONLY = ["--client", "lean", "--arrivals", "uniform", "--recovery-s", "-1"]
SERVING_ARGS = [
    "--items", "100000", "--users", "5000", "--queries", "100", "--seconds", "4",
    "--clients", "4", "16", "--rate", "1600", "3200", "--nprobes", "4", "8", "16",
    "--exact-max-items-served", "0", "--pin", "scorer-alone", "--spin-us", "2000",
    *LEAN_ONLY,
]  # fmt: skip
QUICK_INGEST = ["--items", "2000", "--events", "5000"]
QUICK_SERVING = [
    "--items", "5000", "--users", "200", "--queries", "50", "--seconds", "1",
    "--clients", "2", "--rate", "200", "--nprobes", "1", "--exact-max-items-served", "0",
    "--spin-us", "500", *LEAN_ONLY,
]  # fmt: skip


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def compare_ingest(single: dict[str, Any], cluster: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for s, c in zip(single["sizes"], cluster["sizes"], strict=True):
        row: dict[str, Any] = {"items": s["items"], "events": s["events"]}
        for key in ("events_per_s", "ratio_to_floor", "consumer_cpu_share",
                    "redis_cpu_us_per_event", "us_per_event"):  # fmt: skip
            row[key] = {"single": s[key], "cluster": c[key], "cluster_over_single":
                        _ratio(c[key], s[key])}  # fmt: skip
        row["floor_writes_per_s"] = {
            "single": s["floor"]["writes_per_s"],
            "cluster": c["floor"]["writes_per_s"],
            "cluster_over_single": _ratio(c["floor"]["writes_per_s"], s["floor"]["writes_per_s"]),
        }
        row["exact"] = {
            "single": s["applied"] + s["skipped"] == s["events"],
            "cluster": c["applied"] + c["skipped"] == c["events"],
        }
        rows.append(row)
    return rows


def _point_key(point: dict[str, Any]) -> str:
    if point["mode"] == "closed":
        return f"closed {point['concurrency']} clients"
    return f"open {point['offered_per_s']}/s"


def compare_serving(single: dict[str, Any], cluster: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for s, c in zip(single["sizes"], cluster["sizes"], strict=True):
        for kind in s["runs"]:
            for ps, pc in zip(s["runs"][kind]["load"], c["runs"][kind]["load"], strict=True):
                row: dict[str, Any] = {"items": s["items"], "server": kind,
                                       "load": _point_key(ps)}  # fmt: skip
                for key, get in (
                    ("answered_per_s", lambda p: p["answered_per_s"]),
                    ("p50_us", lambda p: p["latency"].get("p50_us")),
                    ("p99_us", lambda p: p["latency"].get("p99_us")),
                    ("redis_cpu_us_per_request", lambda p: p["redis_cpu_us_per_request"]),
                ):
                    a, b = get(ps), get(pc)
                    row[key] = {"single": a, "cluster": b, "cluster_over_single": _ratio(b, a)}
                row["errors"] = {"single": ps["errors"], "cluster": pc["errors"]}
                rows.append(row)
    return rows


def _table(ingest_rows: list[dict[str, Any]], serving_rows: list[dict[str, Any]]) -> str:
    lines = [
        "| ingest | single | cluster | cluster / single |",
        "|---|---:|---:|---:|",
    ]
    for r in ingest_rows:
        for key in ("events_per_s", "floor_writes_per_s", "ratio_to_floor"):
            v = r[key]
            lines.append(f"| {r['items']:,} items {key} | {v['single']:,} | {v['cluster']:,} |"
                         f" {v['cluster_over_single']} |")  # fmt: skip
    lines += [
        "",
        "| serving | req/s single / cluster | p50 µs single / cluster"
        " | p99 µs single / cluster | ratio req/s, p50, p99 |",
        "|---|---|---|---|---|",
    ]
    for r in serving_rows:
        a, p50, p99 = r["answered_per_s"], r["p50_us"], r["p99_us"]
        lines.append(
            f"| {r['items']:,} {r['server']} {r['load']} | {a['single']:,} / {a['cluster']:,}"
            f" | {p50['single']} / {p50['cluster']} | {p99['single']} / {p99['cluster']}"
            f" | {a['cluster_over_single']}, {p50['cluster_over_single']},"
            f" {p99['cluster_over_single']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--primaries", type=int, default=3, help="cluster primaries (>= 3)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run, seconds)")
    p.add_argument("--only", choices=["ingest", "serving"], nargs="+",
                   default=["ingest", "serving"])  # fmt: skip
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    parts = args.out / NAME
    parts.mkdir(parents=True, exist_ok=True)
    cluster_flag = ["--redis-cluster", str(args.primaries), "--out", str(parts)]
    result: dict[str, Any] = {
        "what": "the same ingest and serving workloads on one redis-server and on a local"
        f" Redis Cluster of {args.primaries} primaries (no replicas), back to back",
        "processes": "as in benchmarks.ingest / benchmarks.serving; on the cluster every"
        " primary is its own redis-server process on this machine (they share its cores"
        " with everything else), so this measures the cluster's protocol and routing costs,"
        " not the capacity of more machines",
        "parts": str(parts),
    }
    previous = args.out / f"{NAME}.json"
    if set(args.only) != {"ingest", "serving"} and previous.exists():  # keep the other part
        old = json.loads(previous.read_text())
        result.update({k: old[k] for k in old if k.startswith(("ingest", "serving"))})
    started = time.perf_counter()
    if "ingest" in args.only:
        extra = QUICK_INGEST if args.quick else INGEST_ARGS
        print("== ingest, single node", flush=True)
        single = ingest.main([*extra, "--out", str(parts)])
        print(f"== ingest, cluster of {args.primaries}", flush=True)
        cluster = ingest.main([*extra, *cluster_flag])
        result["ingest_args"] = extra
        result["ingest"] = compare_ingest(single, cluster)
    if "serving" in args.only:
        extra = QUICK_SERVING if args.quick else SERVING_ARGS
        print("== serving, single node", flush=True)
        single = serving.main([*extra, "--out", str(parts)])
        print(f"== serving, cluster of {args.primaries}", flush=True)
        cluster = serving.main([*extra, *cluster_flag])
        result["serving_args"] = extra
        result["serving"] = compare_serving(single, cluster)
        result["request_queues"] = {
            "single": single["sizes"][0]["request_queues"],
            "cluster": cluster["sizes"][0]["request_queues"],
        }
    result["seconds"] = round(time.perf_counter() - started, 1)
    table = _table(result.get("ingest", []), result.get("serving", []))
    result["table_md"] = table
    print(table)
    write_result(NAME, result, args.out)
    return result


if __name__ == "__main__":
    main()
