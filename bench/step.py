"""Pure train and eval steps over K vectorized replicas.

A job trains K replicas (LR values x seeds) at once: every leaf of :class:`TrainState` has a
leading replica axis and the per-replica step is ``jax.vmap``-ed. Several steps are fused into
one jitted call with ``lax.scan`` (fewer dispatches, identical numbers). In memory, the dataset
lives on device and a step receives integer indices and gathers its batch there; streamed
(bench.data.stream), a call receives the batches themselves. Either way a batch is sharded over
the mesh's ``data`` axis, so 1 and N devices (and processes) compute the same global-batch
quantities.

A replica whose loss or gradient becomes non-finite is frozen (its state stops changing) and
``diverged_step`` records when; the other replicas go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from bench.parallel import batch_sharded

Batch = dict[str, jax.Array]


def scan_unroll(unroll_on_cpu: bool = True) -> int | bool:
    """How far to unroll a ``lax.scan`` of model evaluations (the same rule for every length:
    ``unroll=1`` would still emit a while loop).

    XLA:CPU runs convolutions inside a while loop several times slower than outside one
    (measured with jax 0.10.2: a 1-D CNN step at 11.8 ms in a rolled scan vs 0.9 ms unrolled),
    so on CPU scans are unrolled fully; on accelerators they stay rolled (small programs,
    fast compiles). Models that gain nothing from it (``unroll_on_cpu=False``: the transformer,
    whose unrolled 25-step program took minutes to compile) stay rolled everywhere.
    """
    return True if unroll_on_cpu and jax.default_backend() == "cpu" else 1


def map_replicas_by_loop() -> bool:
    """Whether evaluation maps over replicas with a loop rather than ``jax.vmap``.

    A vmapped convolution over per-replica kernels lowers to a grouped convolution, which
    XLA:CPU runs far slower than K separate ones; a loop over the K replicas compiles K copies
    of the forward pass instead (a few seconds more). On accelerators vmap stays.
    """
    return jax.default_backend() == "cpu"


def over_replicas(fn: Callable, in_axes: tuple, loop: bool | None = None) -> Callable:
    """``jax.vmap(fn, in_axes)``, or (``loop``; default ``map_replicas_by_loop()``) the same
    result computed by an unrolled loop over the leading replica axis of the mapped arguments."""
    if not (map_replicas_by_loop() if loop is None else loop):
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


def make_replica_step(fns: ModelFns, tx: optax.GradientTransformation,
                      lr_multiplier: Callable, accumulate: int,
                      hyperparams: Callable[[int], dict[str, float]] | None = None,
                      ewa_decay: float | None = None) -> Callable:
    """One SGD step of one replica on its batch (x [B, ...], y [B] or [B, T]).

    ``hyperparams(B)``: optimizer hyperparameters (Adam's b1, b2, eps) that follow the batch
    size, set in the optimizer state like the LR (B is static in each compiled program);
    ``ewa_decay``: also update ``state.ewa``, the weights' exponentially weighted average.
    """

    def grads_and_stats(params, stats, x, y, key):
        def loss_fn(p):
            logits, new_stats = fns.apply(p, stats, x, train=True, dropout_key=key)
            losses = fns.losses(logits, y)
            return losses.mean(), (new_stats, (jnp.argmax(logits, -1) == y).mean())
        (loss, (new_stats, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, acc, grads, new_stats

    def accumulated(params, stats, x, y, key):
        # Microbatch j holds examples j, j+A, j+2A, ...: the leading (sharded) axis stays whole
        # on each device, so accumulation keeps the data-parallel layout.
        def split(a):
            a = a.reshape((a.shape[0] // accumulate, accumulate) + a.shape[1:])
            return jnp.moveaxis(a, 1, 0)

        def body(carry, inp):
            stats, gsum, lsum, asum = carry
            xm, ym, j = inp
            loss, acc, g, stats = grads_and_stats(params, stats, xm, ym, jax.random.fold_in(key, j))
            gsum = jax.tree.map(jnp.add, gsum, g)
            return (stats, gsum, lsum + loss, asum + acc), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        init = (stats, zeros, jnp.zeros(()), jnp.zeros(()))
        (stats, gsum, lsum, asum), _ = jax.lax.scan(
            body, init, (split(x), split(y), jnp.arange(accumulate)))
        # Rolled on every backend: memory is that of one microbatch, the point of accumulating
        # (unrolled, XLA keeps several microbatches live). On CPU this costs speed for convs.
        grads = jax.tree.map(lambda g: g / accumulate, gsum)
        return lsum / accumulate, asum / accumulate, grads, stats

    compute = grads_and_stats if accumulate == 1 else accumulated

    def step(state: TrainState, x: jax.Array, y: jax.Array):
        key = jax.random.fold_in(state.dropout_key, state.step)
        loss, acc, grads, new_stats = compute(state.params, state.stats, x, y, key)
        lr = state.peak_lr * lr_multiplier(state.step)
        per_batch = {k: jnp.float32(v) for k, v in (hyperparams(x.shape[0]) if hyperparams else {}).items()}
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


def _run_steps(vstep: Callable, state: TrainState, inputs: Any, batch: Callable,
               unroll_on_cpu: bool) -> tuple[TrainState, Any]:
    """Steps over the leading axis of ``inputs``; ``batch(inputs_t) -> (x, y)``."""
    def body(state, inputs_t):
        return vstep(state, *batch(inputs_t))
    if jax.tree.leaves(inputs)[0].shape[0] == 1:  # XLA:CPU runs a length-1 scan ~10x slower
        state, metrics = body(state, jax.tree.map(lambda a: a[0], inputs))
        return state, jax.tree.map(lambda m: m[None], metrics)
    return jax.lax.scan(body, state, inputs, unroll=scan_unroll(unroll_on_cpu))


def make_train_chunk(fns: ModelFns, tx: optax.GradientTransformation, lr_multiplier: Callable,
                     accumulate: int, mesh: Mesh, unroll_on_cpu: bool = True,
                     **step_options: Any) -> Callable:
    """``chunk(state, x_all, y_all, idx[n, K, B]) -> (state, metrics[n, K])``, not yet jitted
    (``step_options``: ``make_replica_step``'s ``hyperparams`` and ``ewa_decay``)."""
    vstep = jax.vmap(make_replica_step(fns, tx, lr_multiplier, accumulate, **step_options))

    def chunk(state: TrainState, x_all: jax.Array, y_all: jax.Array, idx: jax.Array):
        def gather(idx_t):
            x = jax.lax.with_sharding_constraint(x_all[idx_t], batch_sharded(mesh, 1, x_all.ndim + 1))
            y = jax.lax.with_sharding_constraint(y_all[idx_t], batch_sharded(mesh, 1, y_all.ndim + 1))
            return x, y
        return _run_steps(vstep, state, idx, gather, unroll_on_cpu)

    return chunk


def make_streamed_train_chunk(fns: ModelFns, tx: optax.GradientTransformation,
                              lr_multiplier: Callable, accumulate: int, unroll_on_cpu: bool = True,
                              **step_options: Any) -> Callable:
    """``chunk(state, x[n, K, B, ...], y[n, K, B, ...]) -> (state, metrics[n, K])`` on batches
    already sharded over B (streamed input), not yet jitted."""
    vstep = jax.vmap(make_replica_step(fns, tx, lr_multiplier, accumulate, **step_options))

    def chunk(state: TrainState, x: jax.Array, y: jax.Array):
        return _run_steps(vstep, state, (x, y), lambda xy: xy, unroll_on_cpu)

    return chunk


def _chunk_sums(fns: ModelFns, params, stats, x, y, m) -> tuple[jax.Array, jax.Array]:
    """Masked sums of the loss and of correct predictions over one evaluation chunk."""
    logits, _ = fns.apply(params, stats, x, train=False)
    losses = fns.losses(logits, y)
    correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
    if losses.ndim > 1:  # sequences [c, T]: every one has T targets, so the mean of
        losses, correct = losses.mean(-1), correct.mean(-1)  # means is the token mean
    return jnp.sum(losses * m), jnp.sum(correct * m)


def make_evaluate(fns: ModelFns, mesh: Mesh, loop_replicas: bool | None = None,
                  unroll_on_cpu: bool = True) -> Callable:
    """``evaluate(params, stats, x_all, y_all, idx[C, c], mask[C, c]) -> (loss[K], acc[K])``.

    Exact mean over the whole set: chunks of ``c`` examples, padding masked out. Replicas are
    vmapped, or looped over on CPU (``over_replicas``; ``loop_replicas`` overrides).
    """

    def one_replica(params, stats, x_all, y_all, idx, mask):
        def body(carry, inp):
            i, m = inp
            x = jax.lax.with_sharding_constraint(x_all[i], batch_sharded(mesh, 0, x_all.ndim))
            loss, correct = _chunk_sums(fns, params, stats, x, y_all[i], m)
            return (carry[0] + loss, carry[1] + correct), None

        (loss_sum, correct_sum), _ = jax.lax.scan(body, (jnp.zeros(()), jnp.zeros(())), (idx, mask),
                                                  unroll=scan_unroll(unroll_on_cpu))
        n = jnp.sum(mask)
        return loss_sum / n, correct_sum / n

    return over_replicas(one_replica, in_axes=(0, 0, None, None, None, None), loop=loop_replicas)


def make_evaluate_chunk(fns: ModelFns, loop_replicas: bool | None = None) -> Callable:
    """``add(params, stats, x[c, ...], y[c, ...], mask[c], sums[K, 2]) -> sums[K, 2]``: one
    streamed evaluation chunk's masked loss and correct-prediction sums added to the running
    ``sums`` (in the order the in-memory scan adds them); the mean is ``sums / mask total``."""

    def one_replica(params, stats, x, y, mask, sums):
        loss, correct = _chunk_sums(fns, params, stats, x, y, mask)
        return jnp.stack([sums[0] + loss, sums[1] + correct])

    return over_replicas(one_replica, in_axes=(0, 0, None, None, None, 0), loop=loop_replicas)
