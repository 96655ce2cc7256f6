"""Fine-tune LED item embeddings and biases on clicks with a (sampled) loss.

Each step takes a minibatch of training users and splits every timeline at random into
input items (kept with probability ``1 - dropout``) and target items (the rest). The user
vector is the mean of the input embeddings, ``u = (1/T) Σ v_in``; every target is a positive
pair ``s(u, i) = <u, v_i> + b_i``; the negatives are drawn per user (shared by all of its
targets) with the user's input items masked out, as at evaluation time. The loss weighs
every positive pair equally (``training.losses``). Only the items a batch touches are
gathered, scored and updated (lazy Adam), so a step of a sampled loss costs
O(B·N·d + P·d + nnz·d), whatever the catalog size; ``loss="mult"`` scores every item.
When the R items a batch touches are few next to its N negatives per user (R ≤ 16·N, the
case on MovieLens), one (B, R) BLAS product scores all the pairs at once, within the
same bound and much faster than gathering B·N vectors.

Variants (LED paper, Table 3): ``"train"`` learns every embedding and bias; ``"proj"``
learns a projection ``P`` (d×d) and the biases, ``v_i = P · v_i^RSVD``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

from ledrec.training.evaluate import evaluate_scores, led_score_fn
from ledrec.training.losses import Loss, make_loss
from ledrec.training.pretrain import popularity_biases
from ledrec.training.split import Split

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune"]

Array = np.ndarray
Params = dict[str, Array]  # "embeddings" (I, d) or "projection" (d, d); "biases" (I,)
_ROW_PARAMS = ("embeddings", "biases")  # indexed by item: updated only on the batch's rows


@dataclass
class FinetuneConfig:
    """Fine-tuning hyper-parameters (defaults: the best sampled setting on ML-1M validation)."""

    loss: str = "css"  # "bpr" | "ns" | "css" | "mult"
    variant: str = "train"  # "proj" (P (d×d) + biases) | "train" (all embeddings + biases)
    init: str = "svd"  # "svd" | "random"
    dim: int = 256
    epochs: int = 40
    lr: float = 5e-3  # Adam
    batch_size: int = 512
    n_negatives: int = 1000  # per user, shared by its targets
    negatives: str = "uniform"  # "uniform" | "popularity"
    dropout: float = 0.5  # timeline dropout on input items during training
    patience: int = 4  # early stopping on validation NDCG@100
    seed: int = 0


@dataclass
class FinetuneResult:
    embeddings: Array  # (I, d) float32, projection folded in
    biases: Array  # (I,) float32
    val_metrics: dict[str, float]
    seconds: float
    # one record per epoch: epoch, validation metrics, seconds, and "loss" (the epoch's mean
    # training loss; epoch 0, the initial model, has none)
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Batch:
    """A minibatch of training users, over the R items it touches (local ids 0..R-1)."""

    items: Array  # (R,) catalog id of each local item
    inputs: sparse.csr_matrix  # (B, R) row-normalised input items: u = inputs @ V_R
    owner: Array  # (P,) user of each positive pair
    targets: Array  # (P,) local id of each positive pair's item
    negatives: Array  # (B, N) local ids of each user's negatives (Mult: every item)
    valid: Array  # (B, N) the negative is not one of the user's input items


def _split_timelines(
    clicks: sparse.csr_matrix, dropout: float, rng: np.random.Generator
) -> tuple[Array, Array, Array]:
    """Per click: its user row and whether it is a target; each user keeps ≥1 input, ≥1 target."""
    lengths = np.diff(clicks.indptr)  # every user has ≥ 2 clicks
    user = np.repeat(np.arange(clicks.shape[0]), lengths)
    is_target = rng.random(clicks.nnz) < dropout
    n_targets = np.bincount(user, weights=is_target, minlength=clicks.shape[0])
    first = clicks.indptr[:-1]
    is_target[first[n_targets == 0]] = True
    is_target[first[n_targets == lengths]] = False
    return user, clicks.indices, is_target


def _sample_batch(
    clicks: sparse.csr_matrix,
    dropout: float,
    negative_sampler: Callable[[int], Array] | None,
    rng: np.random.Generator,
) -> Batch:
    """Split the users' timelines and draw their negatives (all items if no sampler)."""
    n_users, n_items = clicks.shape
    user, item, is_target = _split_timelines(clicks, dropout, rng)
    if negative_sampler is None:
        items = np.arange(n_items)
        sampled = np.broadcast_to(items, (n_users, n_items))  # Mult: every item
    else:
        sampled = negative_sampler(n_users)  # (B, N) catalog ids
        items = np.unique(np.concatenate([item, sampled.ravel()]))
    position = np.empty(n_items, dtype=np.int32)  # catalog id -> local id, set on touched ids
    position[items] = np.arange(len(items))
    local, negatives = position[item], position[sampled]
    n_inputs = np.bincount(user[~is_target], minlength=n_users)
    inputs = sparse.csr_matrix(
        (1.0 / n_inputs[user[~is_target]], (user[~is_target], local[~is_target])),
        shape=(n_users, len(items)),
        dtype=np.float32,
    )
    # A negative is valid unless it is one of its user's inputs (keys user·R + item).
    input_keys = user[~is_target] * len(items) + local[~is_target]
    negative_keys = np.arange(n_users)[:, None] * len(items) + negatives
    valid = ~np.isin(negative_keys, input_keys)  # (B, N)
    valid[~valid.any(axis=1)] = True  # a user whose every negative is an input keeps them all
    return Batch(items, inputs, user[is_target], local[is_target], negatives, valid)


def _item_vectors(params: Params, base: Array | None, items: Array) -> Array:
    """v_i for the given items (R, d): trained embeddings, or the projected pretrained ones."""
    if "projection" in params:
        assert base is not None
        projected: Array = base[items] @ params["projection"].T
        return projected
    trained: Array = params["embeddings"][items]
    return trained


def _gradients(
    params: Params, base: Array | None, batch: Batch, loss: Loss
) -> tuple[float, dict[str, Array]]:
    """Loss on a batch and its gradients (row parameters: only the batch's rows, R first)."""
    vectors = _item_vectors(params, base, batch.items)  # (R, d)
    biases = params["biases"][batch.items]  # (R,)
    users = batch.inputs @ vectors  # (B, d)
    scorer: Scorer = _dense_scores if _dense_is_cheaper(batch) else _gathered_scores
    value, dusers, dvectors, dbiases = scorer(users, vectors, biases, batch, loss)
    dvectors += batch.inputs.T @ dusers  # through u = inputs @ V_R
    grads = {"biases": dbiases}
    if "projection" in params:
        assert base is not None
        grads["projection"] = dvectors.T @ base[batch.items]  # (d, d)
    else:
        grads["embeddings"] = dvectors
    return value, grads


# (users, vectors, biases, batch, loss) -> loss, dL/du (B, d), dL/dV_R (R, d), dL/db_R (R,)
Scorer = Callable[[Array, Array, Array, Batch, Loss], tuple[float, Array, Array, Array]]
_DENSE_RATIO = 16  # rough throughput of a BLAS product over numpy gathers of the same size
_GATHER_FLOATS = 1 << 24  # memory bound of one gather of negative vectors (64 MB float32)


def _dense_is_cheaper(batch: Batch) -> bool:
    """One (B, R) product beats gathering B·N vectors unless R ≫ N."""
    return bool(len(batch.items) <= _DENSE_RATIO * batch.negatives.shape[1])


def _dense_scores(
    users: Array, vectors: Array, biases: Array, batch: Batch, loss: Loss
) -> tuple[float, Array, Array, Array]:
    """Scores of every (user, batch item) pair at once; loss, dL/du, dL/dV_R, dL/db_R."""
    n_users, n_items = len(users), len(vectors)
    scores = users @ vectors.T + biases  # (B, R)
    pos = scores[batch.owner, batch.targets]  # (P,)
    neg = np.take_along_axis(scores, batch.negatives, axis=1)  # (B, N)
    value, dpos, dneg = loss(pos, neg, batch.owner, batch.valid)
    flat = np.concatenate([batch.owner * n_items + batch.targets, _flat_negatives(batch)])
    weights = np.concatenate([dpos, dneg.ravel()])
    dscores = np.bincount(flat, weights, n_users * n_items).astype(users.dtype)
    dscores = dscores.reshape(n_users, n_items)
    return value, dscores @ vectors, dscores.T @ users, dscores.sum(axis=0)


def _gathered_scores(
    users: Array, vectors: Array, biases: Array, batch: Batch, loss: Loss
) -> tuple[float, Array, Array, Array]:
    """Scores of the scored pairs only, O((P + B·N)·d); same outputs as ``_dense_scores``."""
    n_users, n_items = len(users), len(vectors)
    pos = np.einsum("pd,pd->p", users[batch.owner], vectors[batch.targets])
    pos += biases[batch.targets]  # (P,)
    chunk = max(1, _GATHER_FLOATS // (batch.negatives.shape[1] * vectors.shape[1]))  # users
    neg = np.concatenate(
        [
            np.einsum("bd,bnd->bn", users[s : s + chunk], vectors[batch.negatives[s : s + chunk]])
            for s in range(0, n_users, chunk)
        ]
    )
    neg += biases[batch.negatives]  # (B, N)
    value, dpos, dneg = loss(pos, neg, batch.owner, batch.valid)
    flat = np.concatenate([batch.owner * n_items + batch.targets, _flat_negatives(batch)])
    dscores = sparse.csr_matrix(  # (B, R), summing duplicate pairs
        (np.concatenate([dpos, dneg.ravel()]), np.divmod(flat, n_items)),
        shape=(n_users, n_items),
    )
    dbiases = np.asarray(dscores.sum(axis=0)).ravel()
    return value, np.asarray(dscores @ vectors), np.asarray(dscores.T @ users), dbiases


def _flat_negatives(batch: Batch) -> Array:
    """(B·N,) flat index user·R + item of every negative."""
    n_users, n_negatives = batch.negatives.shape
    rows = np.repeat(np.arange(n_users) * len(batch.items), n_negatives)
    flat: Array = rows + batch.negatives.ravel()
    return flat


class _Adam:
    """Adam; row parameters are updated lazily, only on the rows a batch touched."""

    def __init__(self, params: Params, lr: float, beta1: float = 0.9, beta2: float = 0.999):
        self.lr, self.beta1, self.beta2, self.steps = lr, beta1, beta2, 0
        self.mean = {name: np.zeros_like(p) for name, p in params.items()}
        self.var = {name: np.zeros_like(p) for name, p in params.items()}

    def step(self, params: Params, grads: dict[str, Array], rows: Array) -> None:
        self.steps += 1
        correction1 = 1.0 - self.beta1**self.steps
        correction2 = 1.0 - self.beta2**self.steps
        for name, grad in grads.items():
            # batch.items are sorted and unique: all of them means every row, in order
            every_row = name not in _ROW_PARAMS or len(rows) == len(params[name])
            index = slice(None) if every_row else rows
            mean = self.beta1 * self.mean[name][index] + (1.0 - self.beta1) * grad
            var = self.beta2 * self.var[name][index] + (1.0 - self.beta2) * grad * grad
            self.mean[name][index], self.var[name][index] = mean, var
            step = self.lr * (mean / correction1) / (np.sqrt(var / correction2) + 1e-8)
            params[name][index] -= step.astype(params[name].dtype)


def _negative_sampler(
    config: FinetuneConfig, clicks: sparse.csr_matrix, rng: np.random.Generator
) -> Callable[[int], Array] | None:
    """Draws (B, N) catalog ids: uniform, or in proportion to click counts; None for Mult."""
    if config.loss == "mult":
        return None
    n_items, n = clicks.shape[1], config.n_negatives
    if config.negatives == "uniform":
        return lambda n_users: rng.integers(0, n_items, size=(n_users, n), dtype=np.int32)
    if config.negatives == "popularity":
        cdf = np.cumsum(np.asarray(clicks.sum(axis=0)).ravel() + 1.0)
        return lambda n_users: np.searchsorted(cdf, rng.random((n_users, n)) * cdf[-1], "right")
    raise ValueError(f"unknown negatives {config.negatives!r}")


def _initial_params(
    config: FinetuneConfig, split: Split, init: Array | None, rng: np.random.Generator
) -> Params:
    n_items = split.train_clicks.shape[1]
    # Log popularity relative to uniform, log(I·p_i): the softmax losses and BPR ignore a
    # global shift, but NS reads scores as logits, and p_i alone starts every one near -8.
    params = {"biases": popularity_biases(split.train_clicks) + np.float32(np.log(n_items))}
    if config.variant == "proj":
        if init is None:
            raise ValueError('variant="proj" projects pretrained embeddings: pass init')
        params["projection"] = np.eye(init.shape[1], dtype=np.float32)
    elif config.variant != "train":
        raise ValueError(f"unknown variant {config.variant!r}")
    elif config.init == "svd":
        if init is None:
            raise ValueError('init="svd" needs the pretrained embeddings')
        params["embeddings"] = init.astype(np.float32, copy=True)
    elif config.init == "random":
        scale = 1.0 / np.sqrt(config.dim)
        params["embeddings"] = rng.normal(0, scale, (n_items, config.dim)).astype(np.float32)
    else:
        raise ValueError(f"unknown init {config.init!r}")
    return params


def _export(params: Params, base: Array | None) -> tuple[Array, Array]:
    """(embeddings (I, d), biases (I,)) as float32 copies, projection folded in."""
    n_items = len(params["biases"])
    vectors = _item_vectors(params, base, np.arange(n_items))
    return vectors.astype(np.float32, copy=True), params["biases"].astype(np.float32, copy=True)


def finetune(
    split: Split,
    config: FinetuneConfig,
    init: Array | None,
    progress: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """Fine-tune on ``split.train_clicks``; keep the epoch with the best validation NDCG@100.

    ``init``: pretrained embeddings (I, d), for init="svd" or variant="proj". Epoch 0 is the
    initial model. Ctrl-C (KeyboardInterrupt) stops training and returns the best so far.
    """
    start = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    base = None if init is None else np.asarray(init, dtype=np.float32)
    params = _initial_params(config, split, base, rng)
    clicks = split.train_clicks.tocsr()
    clicks = clicks[np.diff(clicks.indptr) >= 2]  # a timeline needs an input and a target
    loss = make_loss(config.loss, clicks.shape[1])
    sampler = _negative_sampler(config, clicks, rng)
    adam = _Adam(params, config.lr)

    def validate(epoch: int, epoch_loss: float | None) -> dict[str, float]:
        """Validation metrics of the current parameters, recorded and reported. Epoch 0 is
        the initial model, before any step: it has no training loss (``epoch_loss`` None),
        so its record has no "loss" and its line says "initial model" instead."""
        metrics = evaluate_scores(led_score_fn(*_export(params, base)), split.val_in, split.val_out)
        seconds = time.perf_counter() - start
        record = {"epoch": float(epoch), **metrics, "seconds": seconds}
        if epoch_loss is not None:
            record["loss"] = epoch_loss
        history.append(record)
        if progress is not None:
            trained = "initial model" if epoch_loss is None else f"loss {epoch_loss:.4f}"
            progress(
                f"epoch {epoch:3d}  {trained:13}  "
                f"val ndcg@100 {metrics['ndcg@100']:.4f}  {seconds:.1f}s"
            )
        return metrics

    history: list[dict[str, float]] = []
    best_metrics = validate(0, None)
    best = _export(params, base)
    stale = 0
    try:
        for epoch in range(1, config.epochs + 1):
            total, n_pairs = 0.0, 0
            order = rng.permutation(clicks.shape[0])
            for first in range(0, len(order), config.batch_size):
                batch = _sample_batch(
                    clicks[order[first : first + config.batch_size]], config.dropout, sampler, rng
                )
                value, grads = _gradients(params, base, batch, loss)
                adam.step(params, grads, batch.items)
                total += value * len(batch.owner)
                n_pairs += len(batch.owner)
            metrics = validate(epoch, total / n_pairs if n_pairs else None)
            if metrics["ndcg@100"] > best_metrics["ndcg@100"]:
                best_metrics, best, stale = metrics, _export(params, base), 0
            else:
                stale += 1
                if stale >= config.patience:
                    break
    except KeyboardInterrupt:
        if progress is not None:
            progress("interrupted: keeping the best epoch so far")
    embeddings, biases = best
    return FinetuneResult(embeddings, biases, best_metrics, time.perf_counter() - start, history)
