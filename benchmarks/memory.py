"""Memory: bytes per user in Redis, and bytes per item in the faiss index (docs/scaling.md).

Users: real states written through the consumer's own write path (``StateWriter.apply``,
the compare-and-set script) into a private ``redis-server`` (and, with
``--redis-cluster N``, a local Redis Cluster too): every user gets more than T_max events,
so the timeline is full (the steady state of an active user), with one and with two live
model versions of dimension d. Then ``MEMORY USAGE <key> SAMPLES 0`` (every field counted)
on a sample of keys, and ``used_memory`` before / after divided by the users (what the
server really spends: key, hash, expiry entry, allocator rounding).

Items: the project's serving index (``stream.index.build_index``: IVFFlat, inner product,
over ``[v_i, b_i]``) and an IVF scalar-quantized (SQ8) one over the same vectors, each
``faiss.serialize_index``-d, beside the formula ``n (4 (d+1) + 8)`` resp. ``n ((d+1) + 8)``
plus the coarse centroids, so the formula can be used at 10^8 items.

    python -m benchmarks.memory                       # ~1 minute
    python -m benchmarks.memory --redis-cluster 3     # the user states on a cluster too
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, connect, private_stack, write_result

NAME = "memory"


def _model(n_items: int, dim: int, version: str, seed: int, id_width: int) -> Any:
    from ledrec.stream.artifact import Model

    rng = np.random.default_rng(seed)
    # ids as a large catalog has them: "i" + a zero-padded row (10^8 items: 9 characters)
    ids = np.char.add("i", np.char.zfill(np.arange(n_items).astype(str), id_width - 1))
    return Model(
        item_ids=ids,
        embeddings=(rng.normal(size=(n_items, dim)) / np.sqrt(dim)).astype(np.float32),
        biases=rng.normal(size=n_items).astype(np.float32) * 0.1,
        version=version,
    )


def _user_states(
    url: str, n_users: int, events_per_user: int, models: list[Any], timeline_max: int,
    partitions: int, sample: int, prefix: str,
) -> dict[str, Any]:  # fmt: skip
    from ledrec.stream.state import StateWriter, TimelineEvent, UserStateStore

    client = connect(url)
    store = UserStateStore(client, prefix, timeline_max, 30 * 24 * 3600)
    writer = StateWriter(store)
    nodes = (
        [client.get_redis_connection(n) for n in client.get_primaries()]
        if hasattr(client, "get_primaries")
        else [client]
    )

    def used() -> int:
        return sum(int(n.info("memory")["used_memory"]) for n in nodes)

    rng = np.random.default_rng(7)
    n_items = len(models[0].item_ids)
    before = used()
    offset = 0
    users = [f"user{u:09d}" for u in range(n_users)]  # 13-character user ids
    chunk = max(1, 20_000 // events_per_user)
    for lo in range(0, n_users, chunk):
        batch: dict[str, list[TimelineEvent]] = {}
        for u in range(lo, min(n_users, lo + chunk)):
            rows = rng.integers(n_items, size=events_per_user)
            part = u % partitions  # one user, one partition (key = user id)
            batch[users[u]] = [
                TimelineEvent(part, offset + j, str(models[0].item_ids[r]), 1.0)
                for j, r in enumerate(rows.tolist())
            ]
            offset += events_per_user
        writer.apply(batch, models)
    after = used()
    picked = rng.choice(n_users, size=min(sample, n_users), replace=False)
    usage = [
        int(client.execute_command("MEMORY USAGE", store.keys.user(users[u]), "SAMPLES", "0"))
        for u in picked.tolist()
    ]
    first = client.hgetall(store.keys.user(users[int(picked[0])]))
    fields = {k.decode(): len(v) for k, v in first.items()}
    encoding = client.object("encoding", store.keys.user(users[int(picked[0])]))
    client.close()
    return {
        "users": n_users,
        "live_versions": len(models),
        "events_per_user": events_per_user,
        "memory_usage_samples0": {
            "keys": len(usage),
            "median": int(statistics.median(usage)),
            "min": min(usage),
            "max": max(usage),
        },
        "used_memory_delta_per_user": round((after - before) / n_users),
        "hash_encoding": encoding.decode() if isinstance(encoding, bytes) else encoding,
        "field_value_bytes": fields,
        "payload_bytes": sum(len(k) + v for k, v in fields.items()),
    }


def _index_sizes(n_items: int, dim: int, nlist: int, id_width: int) -> dict[str, Any]:
    import faiss

    from ledrec.stream.index import augmented, build_index, serialize

    faiss.omp_set_num_threads(2)
    model = _model(n_items, dim, "idx", 3, id_width)
    t0 = time.perf_counter()
    flat_ivf = build_index(model, 0, nlist=nlist)
    built_s = time.perf_counter() - t0
    ivf_bytes = len(serialize(flat_ivf))
    x = augmented(model)
    d1 = x.shape[1]
    quantizer = faiss.IndexFlatIP(d1)
    sq8 = faiss.IndexIVFScalarQuantizer(
        quantizer, d1, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    rng = np.random.default_rng(0)
    sq8.train(x[rng.choice(n_items, size=min(n_items, 256 * nlist), replace=False)])
    sq8.add(x)
    sq8_bytes = int(faiss.serialize_index(sq8).size)
    ids = model.item_ids
    import tracemalloc

    tracemalloc.start()
    _ = model.row_of  # the scorer's and consumer's id -> row dict
    row_of_bytes, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "items": n_items,
        "dim": dim,
        "vector_dim": d1,
        "nlist": nlist,
        "build_s": round(built_s, 1),
        "ivfflat_project_index": {
            "serialized_bytes": ivf_bytes,
            "bytes_per_item": round(ivf_bytes / n_items, 1),
            "formula": "n*(4*(d+1) + 8) + (nlist+1)*4*(d+1)",
            "formula_bytes": n_items * (4 * d1 + 8) + (nlist + 1) * 4 * d1,
        },
        "ivf_sq8": {
            "serialized_bytes": sq8_bytes,
            "bytes_per_item": round(sq8_bytes / n_items, 1),
            "formula": "n*((d+1) + 8) + nlist*4*(d+1) + 2*4*(d+1)",
            "formula_bytes": n_items * (d1 + 8) + nlist * 4 * d1 + 2 * 4 * d1,
        },
        # what the scorer holds besides the index: embeddings (float32), biases, the ids
        "model_arrays_bytes_per_item": round(
            (model.embeddings.nbytes + model.biases.nbytes + ids.nbytes) / n_items, 1
        ),
        "row_of_dict_bytes_per_item": round(row_of_bytes / n_items, 1),
        "item_id_chars": int(np.char.str_len(ids).max()),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=5000)
    p.add_argument("--sample", type=int, default=500, help="keys given to MEMORY USAGE")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--timeline-max", type=int, default=100)
    p.add_argument("--events-per-user", type=int, default=120, help="> T_max: a full window")
    p.add_argument("--partitions", type=int, default=12)
    p.add_argument("--catalog", type=int, default=100_000, help="items the users' events draw on")
    p.add_argument("--id-width", type=int, default=9, help="item id length ('i' + digits)")
    p.add_argument("--index-items", type=int, default=1_000_000)
    p.add_argument("--nlist", type=int, default=1024)
    p.add_argument("--redis-cluster", type=int, default=0, metavar="N")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    models = [
        _model(args.catalog, args.dim, f"v{j}", j, args.id_width) for j in range(1, 3)
    ]  # "v1", "v2": 2-character versions, as short as a real registry's are not
    kinds = [0] + ([args.redis_cluster] if args.redis_cluster else [])
    users: dict[str, Any] = {}
    for kind in kinds:
        with private_stack(kafka=False, redis_cluster=kind) as stack:
            rows = []
            for n_live in (1, 2):
                rows.append(
                    _user_states(
                        stack.redis_url, args.users, args.events_per_user, models[:n_live],
                        args.timeline_max, args.partitions, args.sample, f"mem{n_live}",
                    )
                )  # fmt: skip
                r = rows[-1]
                print(
                    f"  {stack.kind}: {n_live} live version(s): MEMORY USAGE median"
                    f" {r['memory_usage_samples0']['median']:,} B/user, used_memory"
                    f" {r['used_memory_delta_per_user']:,} B/user ({r['hash_encoding']})",
                    flush=True,
                )
            users[stack.kind] = rows
    index = _index_sizes(args.index_items, args.dim, args.nlist, args.id_width)
    print(
        f"  index at {args.index_items:,} items: IVFFlat"
        f" {index['ivfflat_project_index']['bytes_per_item']} B/item,"
        f" IVF-SQ8 {index['ivf_sq8']['bytes_per_item']} B/item",
        flush=True,
    )
    result = {
        "what": "Redis bytes per user state (full T_max window; 1 and 2 live versions) and"
        " faiss index bytes per item",
        "user_state": {
            "timeline_max": args.timeline_max,
            "dim": args.dim,
            "user_id_chars": 13,
            "item_id_chars": args.id_width,
            "version_chars": 2,
            "by_redis": users,
        },
        "index": index,
    }
    write_result(NAME, result, args.out)
    return result


if __name__ == "__main__":
    main()
