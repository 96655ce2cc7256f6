"""HeadTailIndex: one faiss IVF whose last list (the head) every query probes."""

from __future__ import annotations

import struct

import faiss
import numpy as np
import numpy.typing as npt

from ledrec.stream.index import (
    HeadTailIndex,
    augmented,
    build_head_tail,
    build_index,
    deserialize,
    serialize,
)
from tests.helpers import random_model


def _queries(n: int, dim: int, seed: int = 1) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim + 1)).astype(np.float32)
    x[:, -1] = 1.0  # [u, 1]
    return x


def _reference(
    data: npt.NDArray[np.float32],
    head_rows: set[int],
    lists: list[list[int]],
    centroids: npt.NDArray[np.float32],
    x: npt.NDArray[np.float32],
    k: int,
    nprobe: int,
) -> list[list[int]]:
    """Brute force over the head plus the items of the query's ``nprobe`` best lists."""
    out = []
    for q in x:
        best = np.argsort(-(centroids @ q), kind="stable")[:nprobe]
        rows = sorted(head_rows | {r for lst in best.tolist() for r in lists[lst]})
        scores = data[rows] @ q
        out.append([rows[i] for i in np.argsort(-scores, kind="stable")[:k]])
    return out


def test_search_is_the_exact_head_plus_the_probed_tail_lists() -> None:
    model = random_model(n_items=2000, dim=8, seed=4)
    index = build_index(model, exact_max_items=0, nlist=16, head_items=100)
    assert isinstance(index, HeadTailIndex)
    ivf = index.ivf
    assert index.ntotal == 2000 and index.head_size == 100 and ivf.nlist == 17
    data = augmented(model)
    head_rows = set(np.argsort(-model.biases, kind="stable")[:100].tolist())
    invlists = faiss.extract_index_ivf(ivf).invlists
    lists = [
        faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).tolist() for i in range(16)
    ]
    assert set(faiss.rev_swig_ptr(invlists.get_ids(16), 100).tolist()) == head_rows
    assert not head_rows & {r for lst in lists for r in lst}
    centroids = ivf.quantizer.reconstruct_n(0, 16)
    x = _queries(50, 8)
    for nprobe in (1, 3):
        index.nprobe = nprobe
        _, rows = index.search(x, 10)
        expected = _reference(data, head_rows, lists, centroids, x, 10, nprobe)
        assert rows.tolist() == expected
    index.nprobe = 16  # every list: the exact answer
    _, rows = index.search(x, 10)
    truth = np.argsort(-(x @ data.T), axis=1, kind="stable")[:, :10]
    assert (rows == truth).all()


def test_serialize_round_trip_keeps_the_answers() -> None:
    model = random_model(n_items=1000, dim=8, seed=5)
    index = build_index(model, exact_max_items=0, nlist=8, head_items=64)
    assert isinstance(index, HeadTailIndex)
    index.nprobe = 2
    again = deserialize(serialize(index))
    assert isinstance(again, HeadTailIndex)
    again.nprobe = 2
    x = _queries(20, 8)
    assert (index.search(x, 10)[1] == again.search(x, 10)[1]).all()


def test_the_earlier_two_index_layout_loads_with_the_same_answers() -> None:
    """Model stores hold indexes written as an exact head + a separate tail IVF."""
    model = random_model(n_items=1000, dim=8, seed=6)
    data = augmented(model)
    order = np.argsort(-model.biases, kind="stable")
    head_rows, tail_rows = np.sort(order[:64]), np.sort(order[64:])
    head = faiss.IndexFlatIP(9)
    head.add(data[head_rows])
    tail = faiss.IndexIVFFlat(faiss.IndexFlatIP(9), 9, 8, faiss.METRIC_INNER_PRODUCT)
    tail.train(data[tail_rows])
    tail.add_with_ids(data[tail_rows], tail_rows)
    head_blob = faiss.serialize_index(head).tobytes()
    raw = b"".join(
        [
            b"LEDHT001",
            struct.pack("<QQ", head_rows.size, len(head_blob)),
            head_rows.astype("<i8").tobytes(),
            head_blob,
            faiss.serialize_index(tail).tobytes(),
        ]
    )
    index = deserialize(raw)
    assert isinstance(index, HeadTailIndex) and index.ntotal == 1000
    x = _queries(30, 8)
    for nprobe in (1, 2):
        index.nprobe = tail.nprobe = nprobe
        d_head, i_head = head.search(x, 10)
        d_tail, i_tail = tail.search(x, 10)
        scores = np.hstack([d_head, d_tail])
        rows = np.hstack([head_rows[i_head], i_tail])
        best = np.argsort(-scores, axis=1, kind="stable")[:, :10]
        expected = np.take_along_axis(rows, best, 1)
        got_scores, got = index.search(x, 10)
        np.testing.assert_allclose(got_scores, np.take_along_axis(scores, best, 1), rtol=1e-5)
        assert (got == expected).all()


def test_rows_padded_before_the_bias_give_the_same_results_to_unpadded_queries() -> None:
    rng = np.random.default_rng(3)
    data = rng.normal(size=(4000, 9)).astype(np.float32)  # [v (8), b]
    padded = np.zeros((4000, 16), dtype=np.float32)
    padded[:, :8], padded[:, -1] = data[:, :8], data[:, -1]
    plain = build_head_tail(data, nlist=8, head_items=64)
    wide = build_head_tail(padded, nlist=8, head_items=64, codec="sq8")
    plain.nprobe = wide.nprobe = 8  # every list: exact but for SQ8's rounding
    x = np.hstack([rng.normal(size=(20, 8)), np.ones((20, 1))]).astype(np.float32)

    _, want = plain.search(x, 10)
    _, got = wide.search(x, 10)  # (20, 9) queries against 16-wide rows

    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(want, got, strict=True)]) > 0.9
