"""Pure train and eval steps over K vectorized replicas.

A job trains K replicas (LR values x seeds) at once: every leaf of :class:`TrainState` has a
leading replica axis and the per-replica step is ``jax.vmap``-ed. Several steps are fused into
one jitted call, a *block*, with ``lax.scan`` (fewer dispatches, identical numbers). Where a
batch comes from is the data source's ``take`` (bench.core.source): gathered on device from
indices (in memory) or the batch itself (streamed); either way it is sharded over the mesh's
``data`` axis, so 1 and N devices (and processes) compute the same global-batch quantities.
How the programs are shaped on this backend (scan unrolling, replica loops) is the caller's
bench.core.execution.ExecutionPolicy, passed in explicitly.

A replica whose loss or gradient becomes non-finite is frozen (its state stops changing) and
``diverged_step`` records when; the other replicas go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from bench.core.parallel import FixedOrderReduction
from bench.core.source import gather_chunk
from bench.core.execution import ExecutionPolicy, current

Batch = dict[str, jax.Array]


def over_replicas(fn: Callable, in_axes: tuple, loop: bool) -> Callable:
    """``jax.vmap(fn, in_axes)``, or (``loop``: ExecutionPolicy.loop_over_replicas) the same
    result computed by an unrolled loop over the leading replica axis of the mapped arguments."""
    if not loop:
        return jax.vmap(fn, in_axes=in_axes)

    def looped(*args):
        mapped = [a for a, ax in zip(args, in_axes) if ax is not None]
        count = jax.tree.leaves(mapped)[0].shape[0]
        outs = [fn(*(a if ax is None else jax.tree.map(lambda leaf: leaf[k], a)
                     for a, ax in zip(args, in_axes)))
                for k in range(count)]
        return jax.tree.map(lambda *leaves: jnp.stack(leaves), *outs)

    return looped


@flax.struct.dataclass
class TrainState:
    params: Any
    stats: Any                 # BatchNorm running statistics (empty State without BatchNorm)
    opt_state: Any
    peak_lr: jax.Array         # LR after the batch-size scaling rule, before the schedule
    dropout_key: jax.Array     # raw uint32[2] key; folded with the step
    alive: jax.Array           # False once the replica diverged
    diverged_step: jax.Array   # step at which it diverged, -1 while alive
    step: jax.Array
    ewa: Any = None            # exponentially weighted average of params (eval.ewa_decay), or None


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def squared_error(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Cohen et al. 2021's square loss: 0.5 ||f(x) - onehot(y)||^2 (summed over classes)."""
    return 0.5 * jnp.sum((logits - jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)) ** 2, -1)


# Per-example (per-token) losses by the config's ``loss`` name.
LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "cross_entropy": cross_entropy, "mse": squared_error}


@dataclass(frozen=True)
class ModelFns:
    """The Flax model turned into pure functions of (params, stats); ``loss`` names the
    per-example loss (``LOSSES``) that training, evaluation and curvature all use."""

    graphdef: Any
    loss: str = "cross_entropy"

    def losses(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
        return LOSSES[self.loss](logits, labels)

    def apply(self, params, stats, x, *, train: bool, dropout_key=None):
        model = nnx.merge(self.graphdef, params, stats, copy=True)
        rngs = nnx.Rngs(dropout=dropout_key) if dropout_key is not None else None
        logits = model(x, train=train, rngs=rngs)
        return logits, nnx.state(model, nnx.BatchStat)

    def eval_loss_fn(self, stats) -> Callable[[Any, Batch], jax.Array]:
        """``loss(params, batch)``: the mean loss in eval mode (for curvature metrics)."""
        def loss(params, batch: Batch) -> jax.Array:
            logits, _ = self.apply(params, stats, batch["x"], train=False)
            return self.losses(logits, batch["y"]).mean()
        return loss


def split_model(model: nnx.Module):
    """(graphdef, params, stats); every variable must be a Param or a BatchStat."""
    graphdef, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    if jax.tree.leaves(rest):
        raise ValueError(f"model has state other than Params and BatchStats: {rest}")
    return graphdef, params, stats


def _tree_all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def block_gradients(fns: ModelFns) -> Callable:
    """``(params, stats, x, y, key) -> (loss, accuracy, grads, new_stats)`` of one batch."""
    def grads_and_stats(params, stats, x, y, key):
        def loss_fn(p):
            logits, new_stats = fns.apply(p, stats, x, train=True, dropout_key=key)
            losses = fns.losses(logits, y)
            return losses.mean(), (new_stats, (jnp.argmax(logits, -1) == y).mean())
        (loss, (new_stats, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, acc, grads, new_stats
    return grads_and_stats


def accumulated(compute: Callable, accumulate: int) -> Callable:
    """``compute`` over ``accumulate`` microbatches in a scan, gradients averaged."""
    def split(a):
        # Microbatch j holds examples j, j+A, j+2A, ...: the leading (sharded) axis stays whole
        # on each device, so accumulation keeps the data-parallel layout.
        a = a.reshape((a.shape[0] // accumulate, accumulate) + a.shape[1:])
        return jnp.moveaxis(a, 1, 0)

    def run(params, stats, x, y, key):
        def body(carry, inp):
            stats, gsum, lsum, asum = carry
            xm, ym, j = inp
            loss, acc, g, stats = compute(params, stats, xm, ym, jax.random.fold_in(key, j))
            return (stats, jax.tree.map(jnp.add, gsum, g), lsum + loss, asum + acc), None

        init = (stats, jax.tree.map(jnp.zeros_like, params), jnp.zeros(()), jnp.zeros(()))
        (stats, gsum, lsum, asum), _ = jax.lax.scan(
            body, init, (split(x), split(y), jnp.arange(accumulate)))
        # Rolled on every backend: memory is that of one microbatch, the point of accumulating
        # (unrolled, XLA keeps several microbatches live). On CPU this costs speed for convs.
        grads = jax.tree.map(lambda g: g / accumulate, gsum)
        return lsum / accumulate, asum / accumulate, grads, stats
    return run


def make_replica_step(fns: ModelFns, tx: optax.GradientTransformation,
                      lr_multiplier: Callable, accumulate: int,
                      hyperparams: Mapping[int, dict[str, float]] | None = None,
                      ewa_decay: float | None = None,
                      reduction: FixedOrderReduction | None = None) -> Callable:
    """One SGD step of one replica on its batch (x [B, ...], y [B] or [B, T]).

    ``hyperparams[B]``: optimizer hyperparameters (Adam's b1, b2, eps) that follow the batch
    size, set in the optimizer state like the LR (B is static in each compiled program);
    ``ewa_decay``: also update ``state.ewa``, the weights' exponentially weighted average;
    ``reduction``: each (micro)batch's gradient summed in a fixed order (bit-identical on any
    device layout), else by XLA's all-reduce.
    """
    compute = block_gradients(fns)
    if reduction is not None:
        compute = reduction(compute)
    if accumulate > 1:
        compute = accumulated(compute, accumulate)

    def step(state: TrainState, x: jax.Array, y: jax.Array):
        key = jax.random.fold_in(state.dropout_key, state.step)
        loss, acc, grads, new_stats = compute(state.params, state.stats, x, y, key)
        lr = state.peak_lr * lr_multiplier(state.step)
        per_batch = {k: jnp.float32(v) for k, v in (hyperparams[x.shape[0]] if hyperparams else {}).items()}
        opt_state = state.opt_state._replace(hyperparams={
            **state.opt_state.hyperparams, **per_batch, "learning_rate": lr.astype(jnp.float32)})
        updates, new_opt = tx.update(grads, opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _tree_all_finite(new_params)
        keep = state.alive & finite

        def pick(new, old):
            return jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, old)

        new_state = TrainState(
            params=pick(new_params, state.params), stats=pick(new_stats, state.stats),
            opt_state=pick(new_opt, state.opt_state), peak_lr=state.peak_lr,
            dropout_key=state.dropout_key, alive=keep,
            diverged_step=jnp.where(state.alive & ~finite, state.step, state.diverged_step),
            step=state.step + 1,
            ewa=None if state.ewa is None else pick(jax.tree.map(
                lambda e, p: ewa_decay * e + (1.0 - ewa_decay) * p, state.ewa, new_params), state.ewa))
        metrics = {"loss": loss, "accuracy": acc, "lr": lr, "grad_norm": grad_norm}
        return new_state, metrics

    return step


def make_train_block(fns: ModelFns, tx: optax.GradientTransformation, lr_multiplier: Callable,
                     accumulate: int, take: Callable, *, unroll: int | bool,
                     hyperparams: Mapping[int, dict[str, float]] | None = None,
                     ewa_decay: float | None = None,
                     reduction: FixedOrderReduction | None = None) -> Callable:
    """``block(state, data, inputs[n, ...]) -> (state, metrics[n, K])``: n fused steps (a block),
    not yet jitted. ``take(data, inputs_t) -> (x, y)`` [K, B, ...] is the data source's (a
    gather from the device-resident set, or the streamed batch itself); ``unroll``: the
    ExecutionPolicy's ``scan_unroll``; ``hyperparams``, ``ewa_decay``, ``reduction``:
    ``make_replica_step``'s."""
    vstep = jax.vmap(make_replica_step(fns, tx, lr_multiplier, accumulate, hyperparams, ewa_decay,
                                       reduction))

    def block(state: TrainState, data: Any, inputs: Any) -> tuple[TrainState, Any]:
        def body(state, inputs_t):
            return vstep(state, *take(data, inputs_t))
        if jax.tree.leaves(inputs)[0].shape[0] == 1:  # XLA:CPU runs a length-1 scan ~10x slower
            state, metrics = body(state, jax.tree.map(lambda a: a[0], inputs))
            return state, jax.tree.map(lambda m: m[None], metrics)
        return jax.lax.scan(body, state, inputs, unroll=unroll)

    return block


def chunk_sums(fns: ModelFns, params, stats, x, y, m,
               reduction: FixedOrderReduction | None = None) -> tuple[jax.Array, jax.Array]:
    """Masked sums of the loss and of correct predictions over one evaluation chunk
    (``reduction``: summed across devices in a fixed order)."""
    logits, _ = fns.apply(params, stats, x, train=False)
    losses = fns.losses(logits, y)
    correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
    if losses.ndim > 1:  # sequences [c, T]: every one has T targets, so the mean of
        losses, correct = losses.mean(-1), correct.mean(-1)  # means is the token mean
    total = jnp.sum if reduction is None else reduction.total
    return total(losses * m), total(correct * m)


def make_evaluate_sums(fns: ModelFns, take: Callable, *, loop_replicas: bool, unroll: int | bool,
                       reduction: FixedOrderReduction | None = None) -> Callable:
    """``evaluate(params, stats, data, inputs[C, ...], sums[K, 2]) -> sums[K, 2]``: the masked
    loss and correct-prediction sums of C evaluation chunks added, in order, to ``sums``; the
    mean over a set is ``sums / mask total`` (padding masked out). ``take(data, inputs_c) ->
    (x, y, mask)`` is the data source's. Replicas are vmapped, or looped over
    (``loop_replicas``: ExecutionPolicy.loop_over_replicas); ``reduction``: :func:`chunk_sums`'."""

    def one_replica(params, stats, data, inputs, sums):
        def body(sums, inputs_c):
            loss, correct = chunk_sums(fns, params, stats, *take(data, inputs_c), reduction)
            return jnp.stack([sums[0] + loss, sums[1] + correct]), None

        if jax.tree.leaves(inputs)[0].shape[0] == 1:  # one chunk: no loop (see make_train_block)
            return body(sums, jax.tree.map(lambda a: a[0], inputs))[0]
        return jax.lax.scan(body, sums, inputs, unroll=unroll)[0]

    return over_replicas(one_replica, in_axes=(0, 0, None, None, 0), loop=loop_replicas)


def make_evaluate(fns: ModelFns, mesh: Mesh, policy: ExecutionPolicy | None = None) -> Callable:
    """``evaluate(params, stats, x_all, y_all, idx[C, c], mask[C, c]) -> (loss[K], acc[K])``:
    the in-memory evaluation of :func:`make_evaluate_sums` over device-resident arrays as one
    function (for tools that evaluate parameters outside a job, e.g. bench.tools.interpolate);
    ``policy``: an ExecutionPolicy (default: the current backend's)."""
    policy = policy or current()
    sums_of = make_evaluate_sums(fns, gather_chunk(mesh), loop_replicas=policy.loop_over_replicas, unroll=policy.scan_unroll())

    def evaluate(params, stats, x_all, y_all, idx, mask):
        k = jax.tree.leaves(params)[0].shape[0]
        sums = sums_of(params, stats, (x_all, y_all), (idx, mask), jnp.zeros((k, 2), jnp.float32))
        n = jnp.sum(mask)
        return sums[:, 0] / n, sums[:, 1] / n

    return evaluate
