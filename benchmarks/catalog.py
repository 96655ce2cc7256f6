"""Catalog scale (#17): per index variant, build time, RAM, recall@10 and search time; then
one scorer process serving the best variant on a real Redis (server-side time, requests/s).

    python -m benchmarks.catalog                      # 10^6 items (make bench's size)
    python -m benchmarks.catalog --items 10000000 --nlists 1024 4096   # the 10^7 table

**The catalog** (generated here, in chunks, straight into the ``[v_i, b_i]`` rows the index
stores, so a 10^7 x 65 float32 catalog, 2.6 GB, is held once; the project's synthetic event
world would need ~10^8 events for counts that shape 10^7 biases): 1,000 taste clusters,
``v_i`` = cluster centre + 0.5 sub-cluster offset (16 per cluster) + 0.5 noise, each
N(0, I/d), as ``benchmarks.common.clustered_model``; popularity Zipf(1) over a random
permutation of the items (``SyntheticConfig.zipf_exponent``), ``b_i`` = 0.1 x centred
log(1 + expected views at 10 views per item) (the paper's log-popularity initialisation;
spread ~1.5, as ``clustered_model``'s).

**Queries** are LED's: a user is the mean of the vectors of a timeline of 1..50 items
(uniform length), each drawn popularity-weighted, with probability 0.8 from the user's taste
cluster (itself drawn by cluster popularity) and otherwise from the whole catalog. Truth is
the exact top-10 of ``<u, v_i> + b_i`` by brute force (``faiss.knn``, blocked).

**Variants**: the exact flat search, and the scorer's ``HeadTailIndex`` (the 2,048
highest-bias items in an always-probed list + an IVF over the rest) with float32 lists
(what ships), 8-bit scalar-quantized lists (SQ8) and product-quantized lists (PQ13:
13 bytes per item at d = 65), each at every nprobe, the compressed ones also with an exact
re-rank of their top ``--rerank`` from the float32 rows (which the scorer holds anyway as
the model's embeddings). The k-means is trained once per nlist and shared by the codecs.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.common import (
    RESULTS,
    bench_settings,
    connect,
    percentiles,
    pin,
    private_stack,
    set_pinning,
    write_result,
)

NAME = "catalog"
TARGET_RECALL = 0.95
TARGET_RATE = 3200
N_CLUSTERS = 1000
CHUNK = 1 << 20  # rows generated per step


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _rss_bytes() -> int:
    """This process's resident set now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Catalog:
    data: npt.NDArray[np.float32]  # (I, d + 1): [v_i, b_i]
    cluster: npt.NDArray[np.int32]  # (I,)
    popularity: npt.NDArray[np.float64]  # (I,), sums to 1

    @property
    def dim(self) -> int:
        return int(self.data.shape[1] - 1)


def make_catalog(n_items: int, dim: int, seed: int = 0, pad_to: int = 0) -> Catalog:
    """The clustered, popularity-skewed catalog of the module docstring; ``pad_to``: rows
    of that width, zeros between ``v_i`` and ``b_i`` (no inner product changes; faiss's
    SIMD scalar-quantizer code wants a multiple of 8)."""
    rng = np.random.default_rng(seed)
    popularity = np.arange(1, n_items + 1, dtype=np.float64) ** -1.0
    popularity = popularity[rng.permutation(n_items)]
    popularity /= popularity.sum()
    n_clusters = min(N_CLUSTERS, max(2, n_items // 100))
    cluster = rng.integers(n_clusters, size=n_items).astype(np.int32)
    scale = np.float32(1 / math.sqrt(dim))
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32) * scale
    sub = rng.standard_normal((n_clusters, 16, dim), dtype=np.float32) * (0.5 * scale)
    data = np.zeros((n_items, max(pad_to, dim + 1)), dtype=np.float32)
    for lo in range(0, n_items, CHUNK):
        hi = min(n_items, lo + CHUNK)
        c = cluster[lo:hi]
        v = rng.standard_normal((hi - lo, dim), dtype=np.float32) * (0.5 * scale)
        v += centres[c]
        v += sub[c, rng.integers(16, size=hi - lo)]
        data[lo:hi, :dim] = v
    bias = np.log1p(10.0 * n_items * popularity)
    data[:, -1] = 0.1 * (bias - bias.mean())
    return Catalog(data, cluster, popularity)


def timelines(
    cat: Catalog, n_users: int, max_len: int = 50, in_taste: float = 0.8, seed: int = 1
) -> list[npt.NDArray[np.int64]]:
    """Users' timelines (catalog rows), as the module docstring draws them."""
    rng = np.random.default_rng(seed)
    by_cluster = np.argsort(cat.cluster, kind="stable")
    starts = np.searchsorted(cat.cluster[by_cluster], np.arange(int(cat.cluster.max()) + 2))
    cdf_all = np.cumsum(cat.popularity)
    weight = np.bincount(cat.cluster, weights=cat.popularity)
    tastes = rng.choice(weight.size, size=n_users, p=weight / weight.sum())
    out = []
    for taste in tastes.tolist():
        n = int(rng.integers(1, max_len + 1))
        mine = by_cluster[starts[taste] : starts[taste + 1]]
        p = cat.popularity[mine]
        local = rng.choice(mine, size=n, p=p / p.sum())
        far = np.minimum(
            np.searchsorted(cdf_all, rng.random(n) * cdf_all[-1]), cat.cluster.size - 1
        )
        out.append(np.where(rng.random(n) < in_taste, local, far).astype(np.int64))
    return out


def queries_of(cat: Catalog, users: list[npt.NDArray[np.int64]]) -> npt.NDArray[np.float32]:
    """``[u, 1]`` per user, ``u`` = the mean of their timeline's vectors (LED's encoder)."""
    x = np.empty((len(users), cat.dim + 1), dtype=np.float32)
    for j, rows in enumerate(users):
        x[j, :-1] = cat.data[rows, :-1].mean(axis=0)
    x[:, -1] = 1.0
    return x


# --------------------------------------------------------------------------- measurements


def _search_times(
    search: Any, x: npt.NDArray[np.float32], k: int, batch: int
) -> tuple[npt.NDArray[np.int64], dict[str, Any], dict[str, Any]]:
    """Rows found one query at a time (as a scorer with one request per batch searches),
    and the time per query searched alone and in batches of ``batch``."""
    found = np.empty((len(x), k), dtype=np.int64)
    single = []
    for j in range(len(x)):
        t0 = time.perf_counter()
        found[j] = search(x[j : j + 1], k)[0]
        single.append(time.perf_counter() - t0)
    batched = []
    for lo in range(0, len(x) - batch + 1, batch):
        t0 = time.perf_counter()
        search(x[lo : lo + batch], k)
        batched.append((time.perf_counter() - t0) / batch)
    return found, percentiles(single), percentiles(batched)


def _recall(truth: npt.NDArray[np.int64], found: npt.NDArray[np.int64]) -> float:
    return round(
        float(
            np.mean(
                [len(set(a) & set(b)) / truth.shape[1] for a, b in zip(truth, found, strict=True)]
            )
        ),
        4,
    )


def _searcher(index: Any, data: npt.NDArray[np.float32], fetch: int) -> Any:
    """``search(x, k) -> rows``: ``index``'s top k, or (``fetch`` > 0) its top ``fetch``
    re-ranked by the exact ``<[u, 1], [v, b]>`` from ``data``."""

    def search(x: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.int64]:
        if not fetch:
            return np.asarray(index.search(x, k)[1])
        _, rows = index.search(x, fetch)
        safe = np.maximum(rows, 0)
        exact = np.einsum("qd,qcd->qc", x, data[safe])
        exact[rows < 0] = -np.inf
        best = np.argsort(-exact, axis=1)[:, :k]
        return np.take_along_axis(rows, best, axis=1)

    return search


def _index_bytes(index: Any) -> dict[str, int]:
    """What the index holds: codes + ids in its lists, and the coarse quantizer."""
    ivf = index.ivf
    lists = ivf.invlists
    n = sum(lists.list_size(i) for i in range(ivf.nlist))
    return {
        "codes_and_ids": int(n * (ivf.code_size + 8)),
        "quantizer": int(ivf.nlist * ivf.d * 4),
        "code_bytes_per_item": int(ivf.code_size),
    }


def index_table(
    cat: Catalog, x: npt.NDArray[np.float32], args: argparse.Namespace
) -> tuple[list[dict[str, Any]], Any]:
    """One row per (variant, nprobe); returns the rows and the best variant's index
    (rebuilt at the end: holding it while the others are built would double the RAM)."""
    import faiss

    from ledrec.stream.index import assign_lists, build_head_tail, head_rows_of, train_centroids

    k = 10
    faiss.omp_set_num_threads(2)  # builds and the brute-force truth: both cores
    t0 = time.perf_counter()
    _, truth = faiss.knn(x, cat.data, k, metric=faiss.METRIC_INNER_PRODUCT)
    _log(f"exact top-{k} of {len(x)} queries by brute force: {time.perf_counter() - t0:.1f}s")
    faiss.omp_set_num_threads(1)  # searches: one thread, as the scorer

    def exact(q: npt.NDArray[np.float32], kk: int) -> npt.NDArray[np.int64]:
        return np.asarray(faiss.knn(q, cat.data, kk, metric=faiss.METRIC_INNER_PRODUCT)[1])

    n_exact = min(len(x), args.exact_queries)
    _, single, batched = _search_times(exact, x[:n_exact], k, min(16, n_exact))
    rows: list[dict[str, Any]] = [
        {
            "variant": "exact flat (IndexFlatIP)",
            "codec": "exact",
            "nlist": 0,
            "nprobe": 0,
            "build_s": 0.0,
            "index_bytes": int(cat.data.nbytes),
            "bytes_per_item": round(cat.data.nbytes / len(cat.data), 1),
            "recall_at_10": 1.0,
            "search_1_query": single,
            "search_per_query_batch_16": batched,
            "queries_timed": n_exact,
        }
    ]
    _log(f"exact flat: p50 {single['p50_us']:,.0f} µs per single query")
    head_rows = head_rows_of(cat.data[:, -1])
    is_head = np.zeros(len(cat.data), dtype=bool)
    is_head[head_rows] = True
    best: tuple[float, dict[str, Any]] | None = None
    kept: dict[int, Any] = {}  # nlist -> (centroids, lists) of the best so far
    for nlist in args.nlists:
        faiss.omp_set_num_threads(2)
        t0 = time.perf_counter()
        centroids = train_centroids(cat.data, is_head, nlist)
        kmeans_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        lists = assign_lists(cat.data, centroids, head_rows)
        assign_s = time.perf_counter() - t0
        _log(f"nlist {nlist}: k-means {kmeans_s:.1f}s, assignment {assign_s:.1f}s")
        for codec in args.codecs:
            faiss.omp_set_num_threads(2)
            gc.collect()
            rss0 = _rss_bytes()
            t0 = time.perf_counter()
            index = build_head_tail(cat.data, centroids=centroids, codec=codec, lists=lists)
            add_s = time.perf_counter() - t0
            rss = _rss_bytes() - rss0
            size = _index_bytes(index)
            total = size["codes_and_ids"] + size["quantizer"]
            _log(
                f"  {codec}: built in {add_s:.1f}s (+ k-means and assignment), "
                f"{total / 1e9:.3f} GB ({total / len(cat.data):.1f} B/item),"
                f" RSS +{rss / 1e9:.3f} GB"
            )
            faiss.omp_set_num_threads(1)
            for rerank in [0] if codec == "flat" else args.rerank:
                for nprobe in args.nprobes:
                    index.nprobe = nprobe
                    search = _searcher(index, cat.data, rerank)
                    found, single, batched = _search_times(search, x, k, 16)
                    recall = _recall(truth, found)
                    row = {
                        "variant": f"head+IVF{nlist},{codec}"
                        + (f", exact re-rank of top {rerank}" if rerank else ""),
                        "codec": codec,
                        "nlist": nlist,
                        "nprobe": nprobe,
                        "rerank": rerank,
                        "build_s": round(kmeans_s + assign_s + add_s, 1),
                        "kmeans_s": round(kmeans_s, 1),
                        "assign_s": round(assign_s, 1),
                        "codec_train_and_add_s": round(add_s, 1),
                        "index_bytes": total,
                        "bytes_per_item": round(total / len(cat.data), 1),
                        "rss_growth_bytes": rss,
                        **size,
                        "recall_at_10": recall,
                        "search_1_query": single,
                        "search_per_query_batch_16": batched,
                        "queries_timed": len(x),
                    }
                    rows.append(row)
                    _log(
                        f"    nprobe {nprobe:3d}{f' re-rank {rerank}' if rerank else ''}:"
                        f" recall@10 {recall}, "
                        f"1 query p50 {single['p50_us']:,.0f} / p99 {single['p99_us']:,.0f} µs, "
                        f"batch-16 p50 {batched['p50_us']:,.0f} µs/query"
                    )
                    # servable as is (no re-rank: the scorer has none), meets the target:
                    # the fastest serves
                    if not rerank and recall >= TARGET_RECALL and (args.serve_codec in ("", codec)):
                        score = single["p50_us"]
                        if best is None or score < best[0]:
                            best = (score, row)
                            kept = {nlist: (centroids, lists)}
            del index
        del lists
    if best is None:
        return rows, None
    row = best[1]
    row["served"] = True
    centroids, lists = kept[row["nlist"]]
    return rows, build_head_tail(cat.data, centroids=centroids, codec=row["codec"], lists=lists)


# --------------------------------------------------------------------------- serving


def _status_kb(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                name, value = line.split(":")
                out[name] = int(value.split()[0])
    return out


def serve(
    held: list[Any], users: list[npt.NDArray[np.int64]], nprobe: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Save ``held`` = [catalog, index] as a model version, free them (the list is
    emptied: the caller keeps no reference), and measure one scorer process (alone on a
    core, polling) on a real Redis: closed and open loop, the echo floor in the same run."""
    import multiprocessing as mp

    import faiss

    from benchmarks.serving import PINNINGS, _populate, _run_load, _with_server
    from ledrec.stream.artifact import Model, save_model
    from ledrec.stream.index import _MAGIC
    from ledrec.stream.registry import Registry

    cat, index = held
    held.clear()
    set_pinning(PINNINGS["scorer-alone"], ("scorer", "redis", "load"))
    n, dim = len(cat.data), args.dim  # rows may be padded: [v, 0..., b]
    out: dict[str, Any] = {}
    with private_stack(kafka=False) as stack:
        settings = bench_settings(stack, key_prefix="cat", request_queue="cat:rpc:requests")
        settings = settings.model_copy(
            update={"serve_spin_us": 2000, "ivf_nprobe": nprobe, "exact_index_max_items": 0}
        )
        pin("redis", stack.redis_pids)
        t0 = time.perf_counter()
        ids = np.char.add("i", np.arange(n).astype(f"U{len(str(n - 1))}"))
        model = Model(
            ids, cat.data[:, :dim], np.ascontiguousarray(cat.data[:, -1]), version=f"cat{n}"
        )
        # the index streamed to a file behind the artifact's magic and handed over mapped
        # (serialize() would hold the index three times at once)
        blob = stack.home / "index.blob"
        with blob.open("wb") as f:
            f.write(_MAGIC)
            faiss.write_index(index.ivf, faiss.PyCallbackIOWriter(f.write))  # type: ignore[attr-defined]
        del index
        gc.collect()
        raw = np.memmap(blob, dtype=np.uint8, mode="r")
        save_model(model, settings.model_store_path, raw.data)  # the array's buffer
        out["artifact_bytes"] = {
            p.name: p.stat().st_size for p in Path(model.path or ".").iterdir()
        }
        out["save_s"] = round(time.perf_counter() - t0, 1)
        _log(f"saved the model version in {out['save_s']}s: {out['artifact_bytes']}")
        # states in Redis: sums computed over a model of just the users' items (the same
        # vectors, so the same sums), so this process needs no 10^7-item lookup
        items = np.unique(np.concatenate(users))
        small = Model(
            ids[items],
            np.ascontiguousarray(cat.data[items, :dim]),
            cat.data[items, -1].copy(),
            version=model.version,
        )
        registry = Registry(connect(settings.redis_url), settings.key_prefix)
        registry.register(model)
        registry.set_state(model.version, "warming")
        registry.activate(model.version)
        del raw, model, ids, cat
        blob.unlink()
        gc.collect()
        user = np.repeat(np.arange(len(users)), [len(u) for u in users])
        events = SimpleNamespace(
            user=user, item=np.concatenate(users), kind=np.zeros(user.size, np.int8)
        )
        names = _populate(settings, events, [small], len(users))
        out["parent_rss_before_scorer_bytes"] = _rss_bytes()
        _log(f"{len(names)} users' states written; parent RSS {_rss_bytes() / 1e9:.2f} GB")

        def loads(kind: str) -> Any:
            def run() -> list[dict[str, Any]]:
                scorer = [c.pid for c in mp.active_children()]
                mem = {pid: _status_kb(pid) for pid in scorer if pid}
                points = []
                for c in args.clients:
                    points.append(_run_load(settings, names, "closed", c, 2, args.seconds, "lean"))
                    _log(f"  {kind} closed {c} clients: {_line(points[-1])}")
                closed_max = max((p["answered_per_s"] for p in points), default=0)
                for rate in args.rate:
                    if closed_max < rate:  # overloaded: every request would time out
                        skipped.append({"kind": kind, "rate": rate, "closed_loop_max": closed_max})
                        _log(f"  {kind} open {rate}/s skipped: closed loop max {closed_max}/s")
                        continue
                    points.append(
                        _run_load(settings, names, "open", rate, 2, args.seconds, "lean", "poisson")
                    )
                    _log(f"  {kind} open {rate}/s (Poisson): {_line(points[-1])}")
                if kind != "echo":
                    out["scorer_memory_kb"] = {
                        str(p): {**m, **_status_kb(p)}
                        for p, m in mem.items()
                        if Path(f"/proc/{p}").exists()
                    }
                return points

            return run

        runs = {}
        skipped: list[dict[str, Any]] = []
        out["open_loop_skipped"] = skipped
        for kind in ("echo", "scorer"):
            t0 = time.perf_counter()
            points, breakdown = _with_server(
                settings, "echo" if kind == "echo" else "ivf", loads(kind)
            )
            runs[kind] = {
                "load": points,
                "server": breakdown,
                "started_and_ran_s": round(time.perf_counter() - t0, 1),
            }
        out["runs"] = runs
    return out


def _line(point: dict[str, Any]) -> str:
    lat = point["latency"]
    if not lat.get("n"):
        return f"no answers, errors {point['errors']}"
    return (
        f"{point['answered_per_s']:>6,}/s  p50 {lat['p50_us']:,.0f} µs  p99 {lat['p99_us']:,.0f} µs"
        f"  errors {point['errors']}"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=500, help="recall queries (users)")
    p.add_argument("--exact-queries", type=int, default=20, help="exact searches timed")
    p.add_argument("--nlists", type=int, nargs="+", default=[1024])
    p.add_argument("--codecs", nargs="+", default=["flat", "sq8", "pq13"])
    p.add_argument("--nprobes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument(
        "--rerank", type=int, nargs="+", default=[0, 50], help="compressed codecs: 0 = none"
    )
    p.add_argument(
        "--serve-codec",
        default="",
        help="serve only this codec (default: the fastest meeting the recall target)",
    )
    p.add_argument("--no-serve", action="store_true", help="the index table only")
    p.add_argument(
        "--pad-to",
        type=int,
        default=0,
        help="rows [v, 0..., b] of this width (HeadTailIndex pads the scorer's queries)",
    )
    p.add_argument("--seconds", type=float, default=8.0, help="per load point")
    p.add_argument("--clients", type=int, nargs="+", default=[4, 16])
    p.add_argument("--rate", type=int, nargs="*", default=[TARGET_RATE], help="open loop, req/s")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    started = time.perf_counter()
    t0 = time.perf_counter()
    cat = make_catalog(args.items, args.dim, pad_to=args.pad_to)
    gen_s = time.perf_counter() - t0
    _log(
        f"catalog {args.items:,} x {args.dim}: generated in {gen_s:.1f}s"
        f" ({cat.data.nbytes / 1e9:.2f} GB)"
    )
    users = timelines(cat, args.queries)
    x = queries_of(cat, users)
    rows, index = index_table(cat, x, args)
    served = next((r for r in rows if r.get("served")), None)
    serving: dict[str, Any] = {}
    if served is not None and not args.no_serve:
        _log(f"serving {served['variant']} at nprobe {served['nprobe']}")
        held = [cat, index]
        del cat, index
        serving = serve(held, users, served["nprobe"], args)
    result = {
        "what": "index variants at catalog scale: build time, RAM, recall@10 on averaged-timeline"
        " queries, search time; one scorer process serving the best one",
        "items": args.items,
        "dim": args.dim,
        "generator": "benchmarks.catalog.make_catalog (module docstring), seed 0",
        "generate_s": round(gen_s, 1),
        "recall_queries": len(x),
        "timeline_lengths": "uniform 1..50",
        "search_threads": 1,
        "build_threads": 2,
        "table": rows,
        "served": served and {k: served[k] for k in ("variant", "nprobe", "recall_at_10")},
        "serving": serving,
        "parent_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    name = f"{NAME}_{args.items}" + (f"_pad{args.pad_to}" if args.pad_to else "")
    result["pad_to"] = args.pad_to
    path = write_result(name, result, args.out)
    _log(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
