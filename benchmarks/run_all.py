"""Run every speed benchmark and write ``benchmarks/results/*.json`` and ``SUMMARY.md``.

python -m benchmarks.run_all                 # make bench: the full sizes (~40 minutes)
python -m benchmarks.run_all --quick         # tiny sizes, for a smoke run
python -m benchmarks.run_all --only serving  # one part (also: ledrec bench serving)
python -m benchmarks.run_all --only catalog --catalog-items 10000000   # the 10^7 table
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import catalog, freshness, gateway, ingest, serving
from benchmarks.common import RESULTS, machine

PARTS: dict[str, Callable[[list[str] | None], dict[str, Any]]] = {
    "ingest": ingest.main,
    "serving": serving.main,
    "freshness": freshness.main,
    "gateway": gateway.main,
    "catalog": catalog.main,  # writes catalog_<items>.json: one file per catalog size
}
QUICK: dict[str, list[str]] = {
    "ingest": ["--items", "2000", "--events", "5000"],
    "serving": [
        "--items", "5000", "--users", "200", "--queries", "50", "--seconds", "1",
        "--clients", "2", "--rate", "200", "--nprobes", "1", "4", "--spin-us", "500",
        "--recovery-s", "0",
    ],
    "freshness": ["--probes", "5", "--items", "1000", "--batch-timeouts", "0.01"],
    "gateway": [
        "--items", "2000", "--users", "100", "--seconds", "1", "--warmup", "0.2",
        "--clients", "2", "--rate", "50",
    ],
    "catalog": [
        "--items", "20000", "--queries", "50", "--exact-queries", "5", "--nlists", "32",
        "--nprobes", "1", "4", "--codecs", "flat", "sq8", "--seconds", "1", "--clients", "2",
        "--rate",  # no open loop: the smoke run stays short
    ],
}  # fmt: skip
# make bench: the default sizes, no profiler (it would tax what it measures); the profiles
# in results/profiles/ come from separate runs with --profile (see NOTES.md)
# Serving: the scorer on a core of its own, polling for requests instead of sleeping
# (serve_spin_us); redis-server and the load generators on the other. On this 2-core VM it
# beat Redis + scorer on one core and the load on the other (NOTES.md has both).
FULL: dict[str, list[str]] = {
    "ingest": [],
    "serving": ["--pin", "scorer-alone", "--spin-us", "2000"],
    "freshness": [],
    "gateway": [],
    "catalog": [],  # 10^6 items; the 10^7 table: --catalog-items 10000000 (~7 GB of RAM)
}


def run(parts: list[str], quick: bool, out: Path, catalog_items: int = 0) -> dict[str, Any]:
    """Run ``parts`` (in order), then rewrite the summary from whatever results exist."""
    for name in parts:
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        extra = QUICK[name] if quick else FULL[name]
        if name == "catalog" and catalog_items:
            extra = [*extra, "--items", str(catalog_items), "--nlists", "1024", "4096"]
        PARTS[name]([*extra, "--out", str(out)])
        print(f"== {name}: {time.perf_counter() - started:.0f}s", flush=True)
    summary = write_summary(out)
    print(f"wrote {summary}")
    return load(out)


def load(out: Path) -> dict[str, Any]:
    return {
        name: json.loads((out / f"{name}.json").read_text())
        for name in PARTS
        if (out / f"{name}.json").exists()
    }


def _ms(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def _met(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def write_summary(out: Path) -> Path:
    """SUMMARY.md: each figure beside its floor and the paper's Table 4, target by target."""
    results = load(out)
    m = next(iter(results.values()))["machine"] if results else machine()
    lines = [
        "# ledrec speed benchmarks",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["libraries"].items())
        + ". Every process (Redis, Tansu, consumer, scorer, load generators) shares these"
        " cores, and other work ran on the machine at the same time (1-minute load average"
        " is in each JSON): read the ratios to the floors measured in the same run before"
        " the absolute figures. Regenerate with `make bench`; one part with"
        " `ledrec bench ingest|serving|freshness|gateway`.",
        "",
    ]
    if "ingest" in results:
        r = results["ingest"]
        lines += [
            "## Ingest (one consumer process: Kafka → decode → state update → commit)",
            "",
            "| items | events | batch | events/s | µs/event | consumer main thread: CPU µs/event,"
            " busy, waiting for Redis | redis-server CPU µs/event"
            " | floor: raw pipelined HSETs of the same bytes /s | ratio | target ≥ 50,000/s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for s in r["sizes"]:
            main_us = 1e6 * s["consumer_main_thread_cpu_s"] / s["events"]
            waits = s.get("main_thread_redis_wait_share")
            lines.append(
                f"| {s['items']:,} | {s['events']:,} | {s['batch_size']:,} |"
                f" {s['events_per_s']:,} | {s['us_per_event']} |"
                f" {main_us:.1f}, {s['consumer_main_thread_share']:.0%}"
                + (f", {waits:.0%}" if waits is not None else "")
                + f" | {s.get('redis_cpu_us_per_event', '–')} |"
                f" {s['floor']['writes_per_s']:,} | {s['ratio_to_floor']} |"
                f" {_met(s['target_met'])} |"
            )
        lines.append("")
    if "serving" in results:
        r = results["serving"]
        lines += ["## Serving (end to end through the Redis RPC)", "", r["processes"] + ".", ""]
        pinning = r.get("pinning", {"name": "none"})
        lines += [
            "CPU placement (`--pin "
            + pinning["name"]
            + "`): "
            + (
                ", ".join(
                    f"{role} on CPU {cpus}" for role, cpus in pinning.items() if role != "name"
                )
                if len(pinning) > 1
                else "none (the kernel places every process)"
            )
            + ".",
            "",
        ]
        for s in r["sizes"]:
            idx = s["index"]
            sweep = idx["recall_sweep"]
            chosen = next(x for x in sweep if x["nprobe"] == idx["nprobe_served"])
            lines += [
                f"### {s['items']:,} items, d={s['dim']}",
                "",
                f"Index: {idx['kind']}, nlist {idx['nlist']}; recall@10 vs exact on"
                f" {idx['recall_queries']} real timeline-average queries: "
                + ", ".join(f"nprobe {x['nprobe']} → {x['recall_at_10']}" for x in sweep)
                + f". Served at nprobe {idx['nprobe_served']} (recall {chosen['recall_at_10']},"
                f" target ≥ 0.95: {_met(chosen['recall_at_10'] >= 0.95)}).",
                "",
                "| server | client | load | answered/s | p50 | p99 | p99.9 | CPU µs/request:"
                " scorer thread, redis-server, load generators | errors |",
                "|---|---|---|---:|---:|---:|---:|---:|---|",
            ]
            for kind, run in s["runs"].items():
                for p in run["load"]:
                    lat = p["latency"]
                    load_desc = (
                        f"closed, {p['concurrency']} clients"
                        if p["mode"] == "closed"
                        else f"open, {p['offered_per_s']:,}/s offered"
                    )
                    if not lat.get("n"):
                        lines.append(
                            f"| {kind} | {p['client']} | {load_desc} | 0 | – | – | – | – |"
                            f" {p['errors']} |"
                        )
                        continue
                    scorer_cpu = (
                        p.get("server", {})
                        .get("per_request_amortised", {})
                        .get("total_thread_cpu", {})
                        .get("mean_us")
                    )
                    cpu = (
                        f"{scorer_cpu:.0f}" if scorer_cpu is not None else "–",
                        f"{p['redis_cpu_us_per_request']:.0f}"
                        if "redis_cpu_us_per_request" in p
                        else "–",
                        f"{p['load_generator_cpu_us_per_request']:.0f}",
                    )
                    lines.append(
                        f"| {kind if kind != 'echo' else 'echo (floor)'} | {p['client']} |"
                        f" {load_desc} |"
                        f" {p['answered_per_s']:,} | {_ms(lat['p50_us'])} | {_ms(lat['p99_us'])}"
                        f" | {_ms(lat['p999_us'])} | {', '.join(cpu)} | {p['errors'] or ''} |"
                    )
            t4 = s["table4_single_request"]
            ivf = s["runs"].get("ivf", {}).get("server", {}).get("per_request_amortised", {})
            lines += [
                "",
                "Breakdown (paper Table 4 beside ours; single requests in one process, and"
                " per request inside the serving scorer, amortised over its batches):",
                "",
                "| measure | paper p50 / p99 | ours p50 / p99 |",
                "|---|---|---|",
                f"| user embedding (ours: state read from Redis + sum/weight) | 30 µs / 65 µs |"
                f" {_ms(t4['user_embedding_incl_state_read']['p50_us'])} /"
                f" {_ms(t4['user_embedding_incl_state_read']['p99_us'])} |",
                f"| kNN search (k + seen) | 160 µs / 450 µs |"
                f" {_ms(t4['knn_search_k_plus_seen']['p50_us'])} /"
                f" {_ms(t4['knn_search_k_plus_seen']['p99_us'])} |",
            ]
            for key, label in (
                ("state_read", "in scorer: state parse (read by Redis in the take round trip)"),
                ("search_top_k", "in scorer: search + seen filter"),
                ("encode_other", "in scorer: encode + query build"),
                ("decode_and_reply", "in scorer: request decode + reply"),
                ("total", "in scorer: total server-side (wall)"),
                ("total_thread_cpu", "in scorer: total server-side (thread CPU)"),
            ):
                if key in ivf:
                    lines.append(
                        f"| {label} | – | {_ms(ivf[key]['p50_us'])} / {_ms(ivf[key]['p99_us'])} |"
                    )
            lines.append("")
        clients = out / "serving_clients.json"
        if clients.exists():
            lines += _clients_summary(json.loads(clients.read_text()))
    if "freshness" in results:
        r = results["freshness"]
        lines += [
            "## Freshness (publish → a recommendation that reflects the event)",
            "",
            "| consume_batch_timeout_s | p50 | p99 | floor: publish → bare consumer p50 |"
            " target p99 ≤ 100 ms |",
            "|---:|---:|---:|---:|---|",
        ]
        for run in r["runs"]:
            f, fl = run["freshness"], run["floor_publish_to_bare_consumer"]
            lines.append(
                f"| {run['consume_batch_timeout_s']} | {_ms(f['p50_us'])} | {_ms(f['p99_us'])}"
                f" | {_ms(fl['p50_us'])} | {_met(run['target_met'])} |"
            )
        lines.append("")
    if "gateway" in results:
        lines += _gateway_summary(results["gateway"])
    for path in sorted(out.glob("catalog_*.json"), key=lambda p: int(p.stem.split("_")[1])):
        lines += _catalog_summary(json.loads(path.read_text()))
    notes = out / "NOTES.md"
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    path = out / "SUMMARY.md"
    path.write_text("\n".join(lines))
    return path


def _clients_summary(r: dict[str, Any]) -> list[str]:
    """The lean generator, the sync and the asyncio client side by side (serving_clients)."""
    lines = ["## Serving through each client (same run, same scorer: `serving_clients.json`)", ""]

    def lat(p: dict[str, Any] | None) -> str:
        return f"{_ms(p['p50_us'])} / {_ms(p['p99_us'])}" if p and p.get("p50_us") else "– / –"

    for size in r["sizes"]:
        rate = next(k for k in next(iter(size["clients"].values())) if k.startswith("open_"))
        lines += [
            f"### {size['items']:,} items",
            "",
            f"| client | closed loop: max answered/s (callers: /s) | {rate.split('_')[1]}/s"
            " offered: answered/s, p50 / p99 | echo floor there: p50 / p99 | vs lean (median"
            " of per-round ratios): closed max, p50; on the echo floor | 2× capacity: offered,"
            " answered/s, errors | recovery: p50 after / before |",
            "|---|---|---|---|---|---|---|",
        ]
        for who, c in size["clients"].items():
            closed = ", ".join(
                f"{n}: {p['answered_per_s']:,.0f}" for n, p in c["closed_loop"].items()
            )
            here = c[rate] or {}
            vs = c.get("vs_lean", {})
            over, rec = c.get("overload"), c.get("recovery")
            lines.append(
                f"| {who} | {c['closed_loop_max_per_s']:,.0f} ({closed}) |"
                f" {here.get('answered_per_s', 0):,.0f}, {lat(here)} |"
                f" {lat(c['echo_floor'][rate])} |"
                + (
                    f" {_ratios(vs, rate)}; {_ratios(c['vs_lean_on_echo_floor'], rate)} |"
                    if vs
                    else " |"
                )
                + (
                    f" {over['offered_per_s']:,}, {over['answered_per_s']:,}, "
                    + ", ".join(f"{k} {v:,}" for k, v in over["errors"].items())
                    + " |"
                    if over
                    else " – |"
                )
                + (
                    f" {rec['p50_after_over_before']}× after {rec['wait_s']:g} s |"
                    if rec
                    else " – |"
                )
            )
        if size.get("targets"):
            lines += [
                "",
                "Targets (issue #17, at 10^6 items): "
                + "; ".join(
                    f"{k}: " + (_met(v) if v is not None else "not measurable (past capacity)")
                    for k, v in size["targets"].items()
                )
                + ".",
            ]
        lines.append("")
    return lines


def _ratios(vs: dict[str, Any], rate: str) -> str:
    """'0.83×, 1.4×' (closed-loop max, p50 at the rate), '–' where not measured."""
    return ", ".join(
        f"{v}×" if v is not None else "–" for v in (vs["closed_loop_max"], vs[f"p50_at_{rate[5:]}"])
    )


def _gateway_summary(r: dict[str, Any]) -> list[str]:
    """The gateway's rows beside the bare RPC's, same run, and their ratios."""
    c = r["config"]
    lines = [
        "## Gateway (HTTP through `ledrec gateway` vs the bare RPC, same scorer, same run)",
        "",
        r["processes"] + f"; {c['items']:,} items, {c['users_with_state']:,} users with a"
        f" state, {c['seconds_per_point']:g} s per point.",
        "",
        "| load | client | answered/s | p50 | p99 | CPU µs/request: load generator, gateway,"
        " scorer, redis-server | errors | gateway / bare: answered/s, p50, p99 |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for point in r["points"].values():
        for name in ("bare", "gateway", "gateway_lean"):
            p = point[name]
            lat = p["latency"]
            load = (
                f"closed, {p['concurrency']} clients"
                if p["mode"] == "closed"
                else f"open (Poisson), {p['offered_per_s']:g}/s"
            )
            cpu = ", ".join(
                f"{v:,.0f}" if v is not None else "–" for v in p["cpu_us_per_request"].values()
            )
            ratio = point.get(f"{name}_over_bare")
            ratios = (
                f"{ratio['answered_per_s']}, {ratio['p50']}, {ratio['p99']}"
                if ratio and ratio["p50"] is not None
                else ""
            )
            latency = f"{_ms(lat['p50_us'])} | {_ms(lat['p99_us'])}" if lat.get("n") else "– | –"
            lines.append(
                f"| {load} | {_GATEWAY_CLIENTS[name]} | {p['answered_per_s']:,} | {latency} |"
                f" {cpu} | {p['errors'] or ''} | {ratios} |"
            )
    lines.append("")
    return lines


def _catalog_summary(r: dict[str, Any]) -> list[str]:
    """The index variants' table at one catalog size, and the scorer serving the best."""
    m = r["machine"]
    lines = [
        f"## Catalog of {r['items']:,} items, d = {r['dim']} (`benchmarks/catalog.py`)",
        "",
        f"Load average {m['loadavg_1m_at_start']} at the start, {m['loadavg_1m_at_end']} at"
        f" the end. recall@10 against the exact top-10 of `<u, v> + b` on {r['recall_queries']}"
        " averaged-timeline queries (1..50 items); search one thread, one query at a time"
        " (as a scorer serving one-request batches) and in batches of 16; builds on 2"
        " threads (k-means + assignment + add).",
        "",
        "| variant | nprobe | build | index RAM (B/item) | recall@10 | 1 query p50 / p99 |"
        " batch of 16, per query p50 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["table"]:
        single, batch = row["search_1_query"], row["search_per_query_batch_16"]
        lines.append(
            f"| {row['variant']}{' **(served)**' if row.get('served') else ''} |"
            f" {row['nprobe'] or '–'} | {row['build_s']:.0f} s |"
            f" {row['index_bytes'] / 1e9:.2f} GB ({row['bytes_per_item']:.0f}) |"
            f" {row['recall_at_10']} | {_ms(single['p50_us'])} / {_ms(single['p99_us'])} |"
            f" {_ms(batch['p50_us'])} |"
        )
    serving = r.get("serving") or {}
    if serving:
        lines += [
            "",
            "One scorer process alone on a core (polling), redis-server and 2 lean load"
            " generators on the other; the echo floor (no state read, no search) in the same"
            " run:",
            "",
            "| server | load | answered/s | p50 | p99 | scorer: mean batch, CPU µs/request"
            " (all batches, one-request batches) | errors |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for kind, run in serving["runs"].items():
            for p in run["load"]:
                lat = p["latency"]
                load = (
                    f"closed, {p['concurrency']} clients"
                    if p["mode"] == "closed"
                    else f"open (Poisson), {p['offered_per_s']:,}/s"
                )
                server = p.get("server", {})
                cpu = server.get("thread_cpu_us_per_request_by_batch_size", {})
                mean = server.get("per_request_amortised", {}).get("total_thread_cpu", {})
                cpus = (
                    f"{server['batch_size_mean']}, {mean['mean_us']:.0f}, {cpu.get('1', '–')}"
                    if server
                    else "–"
                )
                lines.append(
                    f"| {kind} | {load} | {p['answered_per_s']:,} |"
                    + (
                        f" {_ms(lat['p50_us'])} | {_ms(lat['p99_us'])} |"
                        if lat.get("n")
                        else " – | – |"
                    )
                    + f" {cpus} | {p['errors'] or ''} |"
                )
        memory = serving.get("scorer_memory_kb", {}).values()
        if memory:
            lines += [
                "",
                f"Scorer process memory: peak {max(m['VmHWM'] for m in memory) / 1e6:.1f} GB"
                f" (loading the version), {max(m['VmRSS'] for m in memory) / 1e6:.1f} GB"
                " while serving.",
            ]
    lines.append("")
    return lines


_GATEWAY_CLIENTS = {
    "bare": "bare RPC (AsyncRecommenderClient)",
    "gateway": "gateway, httpx.AsyncClient",
    "gateway_lean": "gateway, lean asyncio HTTP client",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=list(PARTS), help="run only these parts")
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    p.add_argument(
        "--catalog-items",
        type=int,
        default=0,
        help="catalog part: this many items (default 10^6; 10^7 is the issue's table)",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    run(args.only or list(PARTS), args.quick, args.out, args.catalog_items)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
