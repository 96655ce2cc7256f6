"""The faiss index over ``[v_i, b_i]``: top-k of ``<u, v_i> + b_i`` is a search with ``[u, 1]``.

Exact inner product (``IndexFlatIP``) for small catalogs. Above a threshold, a
:class:`HeadTailIndex`: the ``head_items`` items of highest bias searched exactly, and an
IVF inner-product index over all the others, merged by score. Measured on LED queries
(averages of timeline item vectors) at 10^6 × 64, a plain IVF misses the popular items of
other taste clusters (their bias puts them in the top-k, their vector puts them in lists
that are not probed): recall@10 stalled at 0.94–0.96 for nprobe 8–32 (0.3–1 ms); with a
2,000-item exact head it was 0.998 at nprobe 2 (≈0.1 ms). Built offline and shipped with
the model (``index.faiss``) so loading a version never trains an index on the request
path. HNSW is not offered: on LED queries (small norms, far from the data) its recall
measured poor.
"""

from __future__ import annotations

import math
import struct

import faiss
import numpy as np
import numpy.typing as npt

from stream.artifact import Model

HEAD_ITEMS = 2048
_MAGIC = b"LEDHT001"  # a HeadTailIndex: magic, head row count, head rows, two faiss blobs


class HeadTailIndex:
    """Exact search over the highest-bias items, IVF over the rest, merged by score.

    Same ``search(x, k) -> (scores, rows)`` surface as a faiss index (rows are catalog
    rows, -1 where there are fewer than k results).
    """

    def __init__(
        self, head_rows: npt.NDArray[np.int64], head: faiss.Index, tail: faiss.Index
    ) -> None:
        self.head_rows = head_rows
        self.head = head
        self.tail = tail

    @property
    def ntotal(self) -> int:
        return int(self.head.ntotal + self.tail.ntotal)

    @property
    def d(self) -> int:
        return int(self.tail.d)

    def search(
        self, x: npt.NDArray[np.float32], k: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        if self.head.ntotal == 0:
            return self.tail.search(x, k)
        d_head, i_head = self.head.search(x, min(k, self.head.ntotal))
        i_head = np.where(i_head >= 0, self.head_rows[np.maximum(i_head, 0)], -1)
        d_tail, i_tail = self.tail.search(x, k)  # the tail's ids are catalog rows
        scores = np.concatenate([d_head, d_tail], axis=1)
        rows = np.concatenate([i_head, i_tail], axis=1)
        scores[rows < 0] = -np.inf
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, best, 1), np.take_along_axis(rows, best, 1)


def augmented(model: Model) -> npt.NDArray[np.float32]:
    """Rows ``[v_i, b_i]`` (I, d+1), C-contiguous float32."""
    return np.ascontiguousarray(np.hstack([model.embeddings, model.biases[:, None]]), np.float32)


def build_index(
    model: Model,
    exact_max_items: int,
    nlist: int | None = None,
    seed: int = 0,
    head_items: int = HEAD_ITEMS,
) -> faiss.Index | HeadTailIndex:
    """Exact index up to ``exact_max_items`` items, a :class:`HeadTailIndex` above."""
    data = augmented(model)
    dim = data.shape[1]
    if model.n_items <= exact_max_items:
        index = faiss.IndexFlatIP(dim)
        index.add(data)
        return index
    order = np.argsort(-model.biases, kind="stable")
    n_head = min(head_items, model.n_items // 8)  # the head stays a small exact search
    head_rows = np.sort(order[:n_head]).astype(np.int64)
    tail_rows = np.sort(order[n_head:]).astype(np.int64)
    head = faiss.IndexFlatIP(dim)
    head.add(data[head_rows])
    nlist = nlist or max(1, int(4 * math.sqrt(tail_rows.size)))
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = rng.choice(tail_rows, size=min(tail_rows.size, 64 * nlist), replace=False)
    ivf.train(data[sample])
    ivf.add_with_ids(data[tail_rows], tail_rows)
    return HeadTailIndex(head_rows, head, ivf)


def serialize(index: faiss.Index | HeadTailIndex) -> bytes:
    if isinstance(index, HeadTailIndex):
        head, tail = serialize(index.head), serialize(index.tail)
        return b"".join(
            [
                _MAGIC,
                struct.pack("<QQ", index.head_rows.size, len(head)),
                index.head_rows.astype("<i8").tobytes(),
                head,
                tail,
            ]
        )
    return bytes(faiss.serialize_index(index).tobytes())


def deserialize(raw: bytes) -> faiss.Index | HeadTailIndex:
    if raw[: len(_MAGIC)] == _MAGIC:
        n_head, head_len = struct.unpack_from("<QQ", raw, len(_MAGIC))
        at = len(_MAGIC) + 16
        rows = np.frombuffer(raw, dtype="<i8", count=n_head, offset=at).astype(np.int64)
        at += 8 * n_head
        head = faiss.deserialize_index(np.frombuffer(raw[at : at + head_len], dtype=np.uint8))
        tail = faiss.deserialize_index(np.frombuffer(raw[at + head_len :], dtype=np.uint8))
        return HeadTailIndex(rows, head, tail)
    return faiss.deserialize_index(np.frombuffer(raw, dtype=np.uint8))


def set_nprobe(index: faiss.Index | HeadTailIndex, nprobe: int) -> None:
    """Probe count of an IVF index (no-op for exact indexes)."""
    ivf = faiss.try_extract_index_ivf(index.tail if isinstance(index, HeadTailIndex) else index)
    if ivf is not None:
        ivf.nprobe = nprobe
