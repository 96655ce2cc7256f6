"""The faiss index over ``[v_i, b_i]``: top-k of ``<u, v_i> + b_i`` is a search with ``[u, 1]``.

Exact inner product (``IndexFlatIP``) for small catalogs; an IVF inner-product index above
a threshold, built offline and shipped with the model (``index.faiss``) so that loading a
version never trains an index on the request path. HNSW is not offered: on LED queries
(averages of item vectors: small norms, far from the data) its recall measured poor.
"""

from __future__ import annotations

import math

import faiss
import numpy as np
import numpy.typing as npt

from stream.artifact import Model


def augmented(model: Model) -> npt.NDArray[np.float32]:
    """Rows ``[v_i, b_i]`` (I, d+1), C-contiguous float32."""
    return np.ascontiguousarray(np.hstack([model.embeddings, model.biases[:, None]]), np.float32)


def build_index(
    model: Model, exact_max_items: int, nlist: int | None = None, seed: int = 0
) -> faiss.Index:
    """Exact index up to ``exact_max_items`` items, IVF inner-product above."""
    data = augmented(model)
    dim = data.shape[1]
    if model.n_items <= exact_max_items:
        index = faiss.IndexFlatIP(dim)
        index.add(data)
        return index
    nlist = nlist or int(4 * math.sqrt(model.n_items))
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = data[rng.choice(model.n_items, size=min(model.n_items, 64 * nlist), replace=False)]
    ivf.train(sample)
    ivf.add(data)
    return ivf


def serialize(index: faiss.Index) -> bytes:
    return bytes(faiss.serialize_index(index).tobytes())


def deserialize(raw: bytes) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(raw, dtype=np.uint8))


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    """Probe count of an IVF index (no-op for exact indexes)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = nprobe
