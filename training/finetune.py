"""Fine-tune LED item embeddings and biases on clicks with a (sampled) loss.

Each step takes a minibatch of training users and splits every timeline at random into
input items (kept with probability ``1 - dropout``) and target items (the rest). The user
vector is the mean of the input embeddings, ``u = (1/T) Σ v_in``; every target is a positive
pair ``s(u, i) = <u, v_i> + b_i``; the negatives are drawn per user (shared by all of its
targets) with the user's input items masked out, as at evaluation time. The loss weighs
every positive pair equally (``training.losses``).

A step's cost follows the batch, never the catalog. Each user's ``n_negatives`` are
drawn among K ≤ ``negative_pool`` candidates (``_Negatives``: the whole catalog when it
is that small, otherwise a stratified pool drawn per batch), and one (B, K) BLAS product
scores every user against every candidate; the positives are gathered. A step costs
O(B·K·d + P·d + nnz·d), and only the rows it touches are gathered and updated (lazy Adam).
``loss="mult"`` scores every item.

Validation during training is sampled (``training.sampled_eval``): each epoch ranks the
validation users' held-out items against the same ``val_negatives`` items, and picks the
epoch to keep. The kept model is then measured on the full protocol (every item), and
that is the ``val_metrics`` returned.

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
from ledrec.training.sampled_eval import SampledValidation
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
    negative_pool: int = 4096  # candidates per batch the users' negatives are drawn from
    dropout: float = 0.5  # timeline dropout on input items during training
    patience: int = 4  # early stopping on (sampled) validation NDCG@100
    val_negatives: int = 10_000  # items each epoch's validation ranks the held-out ones among
    val_users: int = 10_000  # at most this many validation users per epoch
    seed: int = 0


@dataclass
class FinetuneResult:
    embeddings: Array  # (I, d) float32, projection folded in
    biases: Array  # (I,) float32
    val_metrics: dict[str, float]  # of the kept model, on the full protocol (every item)
    seconds: float
    # one record per epoch: epoch, sampled validation metrics, seconds, and "loss" (the
    # epoch's mean training loss; epoch 0, the initial model, has none)
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Batch:
    """A minibatch of training users, over the R items it touches (local ids 0..R-1)."""

    items: Array  # (R,) catalog id of each local item, sorted
    inputs: sparse.csr_matrix  # (B, R) row-normalised input items: u = inputs @ V_R
    owner: Array  # (P,) user of each positive pair
    targets: Array  # (P,) local id of each positive pair's item
    candidates: Array  # (K,) local ids of the negative pool's distinct items
    negatives: Array  # (B, N) each user's negatives, as indices into ``candidates``
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
    negatives: _Negatives | None,
    rng: np.random.Generator,
) -> Batch:
    """Split the users' timelines and draw their negatives (no sampler: every item is every
    user's negative)."""
    n_users, n_items = clicks.shape
    user, item, is_target = _split_timelines(clicks, dropout, rng)
    if negatives is None:  # Mult
        pool = np.arange(n_items)
        picks = np.broadcast_to(np.arange(n_items), (n_users, n_items))
    else:
        pool, picks = negatives(n_users)  # (K,) catalog ids, (B, N) indices into them
    items = np.union1d(item, pool)  # sorted: catalog id -> local id by searchsorted
    local, candidates = np.searchsorted(items, item), np.searchsorted(items, pool)
    inputs_user, inputs_local = user[~is_target], local[~is_target]
    n_inputs = np.bincount(inputs_user, minlength=n_users)
    inputs = sparse.csr_matrix(
        (1.0 / n_inputs[inputs_user], (inputs_user, inputs_local)),
        shape=(n_users, len(items)),
        dtype=np.float32,
    )
    # A negative is valid unless it is one of its user's inputs: mark the inputs that are
    # candidates in a (B, K) table, then read it at each user's negatives.
    candidate_of = np.full(len(items), -1)  # local id -> index into candidates
    candidate_of[candidates] = np.arange(len(candidates))
    column = candidate_of[inputs_local]
    is_input = np.zeros((n_users, len(candidates)), dtype=bool)
    is_input[inputs_user[column >= 0], column[column >= 0]] = True
    valid = ~np.take_along_axis(is_input, picks, axis=1)  # (B, N)
    valid[~valid.any(axis=1)] = True  # a user whose every negative is an input keeps them all
    return Batch(items, inputs, user[is_target], local[is_target], candidates, picks, valid)


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
    """Loss on a batch and its gradients (row parameters: only the batch's rows, R first).

    Positives are gathered, O(P·d); negatives come from one (B, K) product of every user
    with every candidate, O(B·K·d), then each user's own N are read from it.
    """
    vectors = _item_vectors(params, base, batch.items)  # (R, d)
    biases = params["biases"][batch.items]  # (R,)
    users = batch.inputs @ vectors  # (B, d)
    n_users, n_items = batch.inputs.shape
    n_candidates = len(batch.candidates)
    pos = np.einsum("pd,pd->p", users[batch.owner], vectors[batch.targets])
    pos += biases[batch.targets]  # (P,)
    pool = vectors[batch.candidates]  # (K, d)
    scores = users @ pool.T + biases[batch.candidates]  # (B, K)
    flat = (np.arange(n_users)[:, None] * n_candidates + batch.negatives).ravel()  # (B·N,)
    neg = scores.ravel()[flat].reshape(batch.negatives.shape)  # (B, N)
    value, dpos, dneg = loss(pos, neg, batch.owner, batch.valid)
    dscores = np.bincount(flat, dneg.ravel(), n_users * n_candidates).astype(users.dtype)
    dscores = dscores.reshape(n_users, n_candidates)  # dL/dscores, duplicates summed
    dpairs = sparse.csr_matrix(  # (B, R) dL/ds of the positive pairs
        (dpos.astype(users.dtype), (batch.owner, batch.targets)), shape=(n_users, n_items)
    )
    dusers = dscores @ pool + dpairs @ vectors  # (B, d)
    dvectors = np.asarray(dpairs.T @ users + batch.inputs.T @ dusers)  # (R, d)
    dvectors[batch.candidates] += dscores.T @ users
    dbiases = np.asarray(dpairs.sum(axis=0)).ravel()
    dbiases[batch.candidates] += dscores.sum(axis=0)
    grads = {"biases": dbiases}
    if "projection" in params:
        assert base is not None
        grads["projection"] = dvectors.T @ base[batch.items]  # (d, d)
    else:
        grads["embeddings"] = dvectors
    return value, grads


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


class _Negatives:
    """Each batch's candidate items, and each user's negatives as indices among them.

    A catalog of at most ``pool_size`` items is every batch's candidates, and each user
    draws its negatives independently from the distribution (uniform, or ``weights``).
    A larger catalog gives each batch a pool of ``pool_size`` stratified draws: systematic
    sampling along a random order of the catalog, fixed for the run, so that item i is in
    the pool ⌊M·p_i⌋ or ⌈M·p_i⌉ times rather than a Poisson number of times (a noisier
    pool made worse models on ML-1M). Each user then draws its negatives among the pool's
    entries: every negative still follows the distribution, and a batch scores at most
    ``pool_size`` candidates whatever the catalog size.
    """

    def __init__(
        self,
        weights: Array | None,
        n_items: int,
        n_negatives: int,
        pool_size: int,
        rng: np.random.Generator,
    ) -> None:
        self.n_items, self.n_negatives, self.pool_size, self.rng = (
            n_items, n_negatives, pool_size, rng,
        )  # fmt: skip
        self.cdf = None if weights is None else np.cumsum(weights)  # catalog order
        if n_items > pool_size:  # (a small catalog leaves rng as before pools existed)
            self.order = rng.permutation(n_items)  # the pool's strata
            self.order_cdf = np.cumsum(np.ones(n_items) if weights is None else weights[self.order])

    def __call__(self, n_users: int) -> tuple[Array, Array]:
        """(K,) sorted candidate catalog ids, (B, N) each user's negatives among them."""
        shape = (n_users, self.n_negatives)
        if self.n_items <= self.pool_size:
            return np.arange(self.n_items), self._draw(shape)
        strata = np.arange(self.pool_size) + self.rng.random()  # one offset, M evenly spaced
        spots = strata * (self.order_cdf[-1] / self.pool_size)
        rank = np.minimum(np.searchsorted(self.order_cdf, spots, "right"), self.n_items - 1)
        candidates, entry = np.unique(self.order[rank], return_inverse=True)
        return candidates, entry[self.rng.integers(0, self.pool_size, size=shape)]

    def _draw(self, shape: tuple[int, int]) -> Array:
        """Independent draws of catalog ids."""
        if self.cdf is None:
            return self.rng.integers(0, self.n_items, size=shape, dtype=np.int32)
        spots = self.rng.random(shape) * self.cdf[-1]
        drawn: Array = np.minimum(np.searchsorted(self.cdf, spots, "right"), self.n_items - 1)
        return drawn


def _negative_sampler(
    config: FinetuneConfig, clicks: sparse.csr_matrix, rng: np.random.Generator
) -> _Negatives | None:
    """Uniform negatives, or in proportion to click counts (add-one); None for Mult."""
    if config.loss == "mult":
        return None
    if config.negatives == "uniform":
        weights = None
    elif config.negatives == "popularity":
        weights = np.asarray(clicks.sum(axis=0), dtype=np.float64).ravel() + 1.0
    else:
        raise ValueError(f"unknown negatives {config.negatives!r}")
    pool_size = max(config.negative_pool, config.n_negatives)
    return _Negatives(weights, clicks.shape[1], config.n_negatives, pool_size, rng)


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


def _copy(params: Params) -> Params:
    """A snapshot of the parameters (Proj: only P and the biases, not the frozen base)."""
    return {name: value.copy() for name, value in params.items()}


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
    """Fine-tune on ``split.train_clicks``; keep the epoch with the best (sampled)
    validation NDCG@100, and measure it on the full protocol.

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
    sampled = SampledValidation(
        split.val_in, split.val_out, config.val_negatives, config.val_users, config.seed
    )
    if progress is not None and sampled.n_sampled < clicks.shape[1]:
        progress(
            f"validation each epoch: {sampled.n_users} users, their held-out items ranked "
            f"among {sampled.n_sampled} sampled items"
        )

    def item_vectors(items: Array) -> tuple[Array, Array]:
        return _item_vectors(params, base, items), params["biases"][items]

    def validate(epoch: int, epoch_loss: float | None) -> dict[str, float]:
        """Sampled validation metrics of the current parameters, recorded and reported.
        Epoch 0 is the initial model, before any step: it has no training loss
        (``epoch_loss`` None), so its record has no "loss" and its line says "initial
        model" instead."""
        metrics = sampled(item_vectors)
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
    best_epoch, best = 0, _copy(params)
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
                best_metrics, best_epoch, best, stale = metrics, epoch, _copy(params), 0
            else:
                stale += 1
                if stale >= config.patience:
                    break
    except KeyboardInterrupt:
        if progress is not None:
            progress("interrupted: keeping the best epoch so far")
    embeddings, biases = _export(best, base)
    val_metrics = evaluate_scores(led_score_fn(embeddings, biases), split.val_in, split.val_out)
    if progress is not None:
        figures = ", ".join(f"{k} {v:.4f}" for k, v in val_metrics.items())
        progress(f"kept epoch {best_epoch}: validation on every item {figures}")
    return FinetuneResult(embeddings, biases, val_metrics, time.perf_counter() - start, history)
