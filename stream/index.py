"""The faiss index over ``[v_i, b_i]``: top-k of ``<u, v_i> + b_i`` is a search with ``[u, 1]``.

Exact inner product (``IndexFlatIP``) for small catalogs. Above a threshold, a
:class:`HeadTailIndex`: the ``head_items`` items of highest bias searched exactly, and an
IVF inner-product index over all the others: a plain IVF misses the popular items of
other taste clusters (their bias puts them in the top-k, their vector puts them in lists
that are not probed), the head catches them (the recall figures: benchmarks/results/
NOTES.md, "Index"). Built offline and shipped with the model (``index.faiss``) so loading
a version never trains an index on the request path. HNSW is not offered: on LED queries
(small norms, far from the data) its recall is poor (same section).
"""

from __future__ import annotations

import math
import struct
from typing import cast

import faiss
import numpy as np
import numpy.typing as npt

from ledrec.stream.artifact import Model

HEAD_ITEMS = 2048
_MAGIC = b"LEDHT002"  # a HeadTailIndex: magic, then one faiss IVF blob
_MAGIC_V1 = b"LEDHT001"  # earlier layout: magic, head row count, head rows, two faiss blobs
# The head list's centroid: queries are [u, 1], so its inner product with every query is
# this value, far above any real centroid's: the quantizer always ranks the head list first.
_HEAD_CENTROID_BIAS = 1e30
_ADD_CHUNK = 1 << 20  # rows assigned per step: bounds the build's extra memory


class HeadTailIndex:
    """Exact search over the highest-bias items, IVF over the rest, in one faiss search.

    One IVF index (float32 lists, or SQ8 / PQ codes) of ``nlist + 1`` lists: the tail's
    k-means lists, and a last list holding the head whose centroid ``[0, ..., 0, 1e30]``
    tops every query's ranking, so probing ``nprobe + 1`` lists scans the whole head plus
    the tail's ``nprobe`` best lists and faiss merges them in its own heap. The same
    answer as searching the head exactly and the tail's IVF separately and merging by
    score, without the second call and the numpy merge (~45% of the search time at 1-4
    queries per batch, measured). Queries must end with the 1 of ``[u, 1]``. Rows may be
    padded with zeros before the bias (SQ8 wants a multiple of 8: NOTES.md, "10^7
    items"); narrower queries are padded alike.

    Same ``search(x, k) -> (scores, rows)`` surface as a faiss index (rows are catalog
    rows, -1 where there are fewer than k results).
    """

    def __init__(self, ivf: faiss.IndexIVF) -> None:
        self.ivf = ivf
        self._lists = _invlists(ivf)

    @property
    def ntotal(self) -> int:
        return int(self.ivf.ntotal)

    @property
    def d(self) -> int:
        return int(self.ivf.d)

    @property
    def head_size(self) -> int:
        return int(self._lists.list_size(self.ivf.nlist - 1))

    @property
    def nprobe(self) -> int:
        """Tail lists probed per query (the head list is probed on top of them)."""
        return int(self.ivf.nprobe) - 1

    @nprobe.setter
    def nprobe(self, nprobe: int) -> None:
        self.ivf.nprobe = min(nprobe, self.ivf.nlist - 1) + 1

    def search(
        self, x: npt.NDArray[np.float32], k: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        # search_c directly: faiss's Python wrapper checks and converts for µs per call
        x = np.ascontiguousarray(x, dtype=np.float32)
        n, d = x.shape
        if d < self.ivf.d and d > 1:  # rows padded with zeros before the bias (SIMD width)
            padded = np.zeros((n, self.ivf.d), dtype=np.float32)
            padded[:, : d - 1], padded[:, -1] = x[:, :-1], x[:, -1]
            x, d = padded, self.ivf.d
        if d != self.ivf.d or k <= 0:
            raise ValueError(f"queries of dimension {self.ivf.d} and k > 0 expected")
        scores = np.empty((n, k), dtype=np.float32)
        rows = np.empty((n, k), dtype=np.int64)
        self.ivf.search_c(  # type: ignore[attr-defined]  # a SWIG method the stubs lack
            n, faiss.swig_ptr(x), k, faiss.swig_ptr(scores), faiss.swig_ptr(rows)
        )
        return scores, rows


def augmented(model: Model) -> npt.NDArray[np.float32]:
    """Rows ``[v_i, b_i]`` (I, d+1), C-contiguous float32."""
    return np.ascontiguousarray(np.hstack([model.embeddings, model.biases[:, None]]), np.float32)


def build_index(
    model: Model,
    exact_max_items: int,
    nlist: int | None = None,
    seed: int = 0,
    head_items: int = HEAD_ITEMS,
    codec: str = "flat",
) -> faiss.Index | HeadTailIndex:
    """Exact index up to ``exact_max_items`` items, a :class:`HeadTailIndex` above."""
    data = augmented(model)
    if model.n_items <= exact_max_items:
        index = faiss.IndexFlatIP(data.shape[1])
        index.add(data)
        return index
    return build_head_tail(data, nlist, seed, head_items, codec)


def build_head_tail(
    data: npt.NDArray[np.float32],
    nlist: int | None = None,
    seed: int = 0,
    head_items: int = HEAD_ITEMS,
    codec: str = "flat",
    centroids: npt.NDArray[np.float32] | None = None,
    lists: npt.NDArray[np.int64] | None = None,
) -> HeadTailIndex:
    """A :class:`HeadTailIndex` over rows ``[v_i, b_i]`` (bias last), built list by list.

    ``codec``: how the lists store vectors: ``flat`` (float32), ``sq8`` (8 bits per
    dimension) or ``pq<M>`` (M bytes; M divides the dimension). ``centroids`` and
    ``lists`` (each row's list, from :func:`assign_lists`): the tail's k-means and the
    assignment when already computed (shared by several codecs). Each list is filled in
    one step, so it holds exactly its entries (appending grows faiss's lists by up to 2x)
    and the catalog is never copied whole (NOTES.md, "10^7 items").
    """
    n = data.shape[0]
    head_rows = head_rows_of(data[:, -1], head_items)
    if centroids is None:
        is_head = np.zeros(n, dtype=bool)
        is_head[head_rows] = True
        centroids = train_centroids(data, is_head, nlist, seed)
    nlist = centroids.shape[0]
    if lists is None:
        lists = assign_lists(data, centroids, head_rows)
    ivf = _with_head_list(centroids, codec)
    if not ivf.is_trained:  # sq8 / pq: the codec learns from the head and a tail sample
        rng = np.random.default_rng(seed)
        tail_rows = np.flatnonzero(lists != nlist)
        sample = rng.choice(tail_rows, size=min(tail_rows.size, 100_000), replace=False)
        ivf.train(np.ascontiguousarray(data[np.sort(np.concatenate([head_rows, sample]))]))
    order = np.argsort(lists, kind="stable")  # catalog order within each list
    bounds = np.searchsorted(lists[order], np.arange(nlist + 2))
    invlists = _invlists(ivf)
    for list_no in range(nlist + 1):
        rows = np.ascontiguousarray(order[bounds[list_no] : bounds[list_no + 1]])
        if not rows.size:
            continue
        x = np.ascontiguousarray(data[rows])
        codes = np.empty((rows.size, ivf.code_size), dtype=np.uint8)
        where = np.full(rows.size, list_no, dtype=np.int64)
        ivf.encode_vectors(
            rows.size, faiss.swig_ptr(x), faiss.swig_ptr(where), faiss.swig_ptr(codes)
        )
        invlists.add_entries(list_no, rows.size, faiss.swig_ptr(rows), faiss.swig_ptr(codes))
    ivf.ntotal = n
    return HeadTailIndex(ivf)


def assign_lists(
    data: npt.NDArray[np.float32],
    centroids: npt.NDArray[np.float32],
    head_rows: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    """Each row's list: its nearest centroid (as the tail's own IVF would assign it), or
    the head list (number ``len(centroids)``) for ``head_rows``; in chunks."""
    quantizer = faiss.IndexFlatIP(centroids.shape[1])
    quantizer.add(centroids)
    lists = np.empty(data.shape[0], dtype=np.int64)
    for lo in range(0, data.shape[0], _ADD_CHUNK):
        _, nearest = quantizer.search(np.ascontiguousarray(data[lo : lo + _ADD_CHUNK]), 1)
        lists[lo : lo + len(nearest)] = nearest[:, 0]
    lists[head_rows] = centroids.shape[0]
    return lists


def head_rows_of(
    biases: npt.NDArray[np.float32], head_items: int = HEAD_ITEMS
) -> npt.NDArray[np.int64]:
    """The rows of the head: the ``head_items`` highest biases (at most an eighth), sorted."""
    n_head = min(head_items, biases.shape[0] // 8)  # the head stays a small exact search
    order = np.argsort(-biases, kind="stable")
    return np.sort(order[:n_head]).astype(np.int64)


def train_centroids(
    data: npt.NDArray[np.float32],
    is_head: npt.NDArray[np.bool_],
    nlist: int | None = None,
    seed: int = 0,
) -> npt.NDArray[np.float32]:
    """k-means (inner product) centroids of the tail rows, on a sample of 64 per list."""
    tail_rows = np.flatnonzero(~is_head)
    nlist = nlist or max(1, int(4 * math.sqrt(tail_rows.size)))
    dim = data.shape[1]
    kmeans = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = rng.choice(tail_rows, size=min(tail_rows.size, 64 * nlist), replace=False)
    kmeans.train(np.ascontiguousarray(data[sample]))
    return np.asarray(kmeans.quantizer.reconstruct_n(0, nlist), dtype=np.float32)


def _with_head_list(centroids: npt.NDArray[np.float32], codec: str = "flat") -> faiss.IndexIVF:
    """An empty IVF over ``centroids`` plus the always-probed head list (the last one)."""
    nlist, dim = centroids.shape
    head_centroid = np.zeros((1, dim), dtype=np.float32)
    head_centroid[0, -1] = _HEAD_CENTROID_BIAS
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(np.vstack([centroids, head_centroid]))
    ip = faiss.METRIC_INNER_PRODUCT
    ivf: faiss.IndexIVF
    # codes of the vectors themselves, not of residuals: a residual from the head list's
    # 1e30 centroid would be meaningless
    if codec == "flat":
        ivf = faiss.IndexIVFFlat(quantizer, dim, nlist + 1, ip)
    elif codec == "sq8":
        qt = faiss.ScalarQuantizer.QT_8bit
        ivf = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist + 1, qt, ip, False)
    elif codec.startswith("pq") and codec[2:].isdigit() and dim % int(codec[2:]) == 0:
        ivf = faiss.IndexIVFPQ(quantizer, dim, nlist + 1, int(codec[2:]), 8, ip)
        ivf.by_residual = False
    else:
        raise ValueError(f"unknown codec {codec!r} for dimension {dim}")
    return ivf


def _add(
    ivf: faiss.IndexIVF,
    x: npt.NDArray[np.float32],
    rows: npt.NDArray[np.int64],
    lists: npt.NDArray[np.int64],
) -> None:
    """Add ``x`` (ids: catalog ``rows``) to the given ``lists``, not the quantizer's choice."""
    x, rows, lists = (
        np.ascontiguousarray(x),
        np.ascontiguousarray(rows),
        np.ascontiguousarray(lists),
    )
    ivf.add_core(len(x), faiss.swig_ptr(x), faiss.swig_ptr(rows), faiss.swig_ptr(lists))


def _invlists(ivf: faiss.IndexIVF) -> faiss.InvertedLists:
    invlists = ivf.invlists
    if invlists is None:
        raise ValueError("an IVF index without inverted lists")
    return invlists


def serialize(index: faiss.Index | HeadTailIndex) -> bytes:
    if isinstance(index, HeadTailIndex):
        return _MAGIC + serialize(index.ivf)
    return bytes(faiss.serialize_index(index).tobytes())


def deserialize(raw: bytes) -> faiss.Index | HeadTailIndex:
    if raw[: len(_MAGIC)] == _MAGIC:
        ivf = faiss.deserialize_index(np.frombuffer(raw, dtype=np.uint8, offset=len(_MAGIC)))
        return HeadTailIndex(cast(faiss.IndexIVF, ivf))  # deserialize_index downcasts
    if raw[: len(_MAGIC_V1)] == _MAGIC_V1:
        return _from_v1(raw)
    return faiss.deserialize_index(np.frombuffer(raw, dtype=np.uint8))


def _from_v1(raw: bytes) -> HeadTailIndex:
    """Convert the earlier two-index layout (exact head + tail IVF): same search results."""
    n_head, head_len = struct.unpack_from("<QQ", raw, len(_MAGIC_V1))
    at = len(_MAGIC_V1) + 16
    head_rows = np.frombuffer(raw, dtype="<i8", count=n_head, offset=at).astype(np.int64)
    at += 8 * n_head
    head = faiss.deserialize_index(np.frombuffer(raw[at : at + head_len], dtype=np.uint8))
    tail = cast(
        faiss.IndexIVFFlat,
        faiss.deserialize_index(np.frombuffer(raw[at + head_len :], dtype=np.uint8)),
    )
    nlist = int(tail.nlist)
    ivf = _with_head_list(tail.quantizer.reconstruct_n(0, nlist))
    src, dst = _invlists(tail), _invlists(ivf)
    for list_no in range(nlist):
        size = src.list_size(list_no)
        if size:
            dst.add_entries(list_no, size, src.get_ids(list_no), src.get_codes(list_no))
    ivf.ntotal = tail.ntotal
    if n_head:
        vectors = head.reconstruct_n(0, int(n_head))
        _add(ivf, vectors, head_rows, np.full(int(n_head), nlist, dtype=np.int64))
    return HeadTailIndex(ivf)


def set_nprobe(index: faiss.Index | HeadTailIndex, nprobe: int) -> None:
    """Probe count of an IVF index (no-op for exact indexes)."""
    if isinstance(index, HeadTailIndex):
        index.nprobe = nprobe
        return
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = nprobe
