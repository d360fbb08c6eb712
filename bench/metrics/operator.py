"""The Hessian of a full-data mean loss as an operator, and the loops that apply it.

``HessianOperator(loss, params, data, chunk_size, rolled)`` acts on the Hessian of

    L(params) = (1 / N) * sum_i loss(params, example_i),

with ``loss(params, batch)`` a per-batch MEAN loss and ``data = {"x": [N, ...], "y": [N]}``
(possibly sharded along axis 0). Hessian-vector products are forward-over-reverse,
``jax.jvp(jax.grad(f), (p,), (v,))``, summed over chunks of ``chunk_size`` examples, each chunk
weighted by ``n_chunk / N``: the result is independent of the chunk size and of the device
count up to float round-off.

Two ways to run the loops (chunks, Krylov iterations, probes), same numbers up to round-off:

- ``rolled=True`` (accelerators): each estimator is one jitted program; chunks and iterations
  are ``lax`` loops, with no host round-trip per iteration.
- ``rolled=False`` (CPU): the host drives the loops; each chunk's contribution is one jitted
  program (compiled once, shared by every estimator and every measurement), and each
  iteration's vector update another. XLA:CPU runs convolutions inside a ``while`` loop several
  times slower than outside one (the finding behind ``bench.core.step.scan_unroll``): measured with
  ``python -m bench.perf.curvature``, a default-CNN HVP costs ~14 gradients inside
  ``lax.fori_loop`` and ~1.5 host-driven. Per-iteration dispatch costs microseconds.
  Estimators that run many HVPs also hoist them (``hoisted``, bench.metrics.linearize).

Integer sizes are static; ``loss`` travels as a pytree (``lift_closure``): jax arrays it closes
over are traced arguments, so a fresh closure over this step's BatchNorm statistics reuses the
programs compiled at the previous measurement.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jax.tree_util import Partial

from bench.core import execution
from bench.metrics.linearize import Linearized, linearize

PyTree = Any
Batch = dict[str, jax.Array]
LossFn = Callable[[PyTree, Batch], jax.Array]

__all__ = [
    "HessianOperator",
    "chunked_mean",
    "estimator",
    "jit_loss",
    "lift_closure",
    "num_examples",
    "rolled_loops",
]


def rolled_loops() -> bool:
    """Default loop style, the execution policy's (bench.core.execution): ``lax`` loops in one program
    off CPU, host-driven loops on CPU."""
    return execution.current().rolled_curvature_loops


def num_examples(data: Batch) -> int:
    """Number of examples N (leading axis of every leaf of ``data``)."""
    return int(jax.tree.leaves(data)[0].shape[0])


class _Same:
    """Hashes and compares by identity (and keeps the object alive, so ids stay unique)."""

    def __init__(self, obj: Any):
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj


_LIFTED: dict[tuple, Callable] = {}


def _is_array_tree(value: Any) -> bool:
    """A pytree whose leaves are all jax arrays; an empty container (e.g. the BatchNorm
    statistics of a model without BatchNorm) counts, so it is lifted rather than keyed by
    identity (which would recompile for every new closure)."""
    if isinstance(value, (jax.Array, list, tuple, dict)) or jax.tree_util.all_leaves([value]) is False:
        return all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(value))
    return False


def lift_closure(loss_fn: LossFn) -> Partial:
    """``loss_fn`` as a ``Partial(g, arrays)``: the jax arrays it closes over become arguments.

    A closure such as ``lambda p, b: apply(p, stats, b)`` built afresh at every
    measurement would otherwise be a new static function each time (a recompile,
    with ``stats`` baked in as constants). ``g`` is cached per code object and
    per identity of the non-array closure values, so a new closure over new arrays
    reuses the compiled program. Anything else (a Partial, a function without
    array-valued closure cells) is passed through unchanged, keyed by identity.
    """
    if isinstance(loss_fn, Partial):
        return loss_fn
    try:
        contents = [cell.cell_contents for cell in (getattr(loss_fn, "__closure__", None) or ())]
    except ValueError:  # an empty cell
        return Partial(loss_fn)
    lift = tuple(_is_array_tree(v) for v in contents)
    if not any(lift):
        return Partial(loss_fn)
    static = tuple(None if lifted else v for v, lifted in zip(contents, lift))
    code, defaults, kwdefaults = loss_fn.__code__, loss_fn.__defaults__, loss_fn.__kwdefaults__
    key = (code, _Same(loss_fn.__globals__), _Same(defaults), _Same(kwdefaults), lift, tuple(map(_Same, static)))
    if key not in _LIFTED:
        glob, name = loss_fn.__globals__, loss_fn.__name__

        def rebuilt(arrays: list, *args: Any, **kwargs: Any) -> Any:
            values = iter(arrays)
            cells = tuple(types.CellType(next(values) if lifted else v) for v, lifted in zip(static, lift))
            fn = types.FunctionType(code, glob, name, defaults, cells)
            fn.__kwdefaults__ = kwdefaults
            return fn(*args, **kwargs)

        _LIFTED[key] = rebuilt
    return Partial(_LIFTED[key], [v for v, lifted in zip(contents, lift) if lifted])


def jit_loss(*static_argnames: str) -> Callable[[Callable], Callable]:
    """``jax.jit`` for functions whose first argument is ``loss_fn`` (passed through
    ``lift_closure``, so new closures with the same code reuse the compiled program)."""

    def decorate(fn: Callable) -> Callable:
        jitted = jax.jit(fn, static_argnames=static_argnames)

        @functools.wraps(fn)
        def wrapper(loss_fn: LossFn, *args: Any, **kwargs: Any) -> Any:
            return jitted(lift_closure(loss_fn), *args, **kwargs)

        wrapper.jitted = jitted  # type: ignore[attr-defined]
        return wrapper

    return decorate


def _chunking(n: int, chunk_size: int | None) -> tuple[int, int, int]:
    """(chunk, q, rem): q full chunks of ``chunk`` examples and a leftover of ``rem``."""
    chunk = n if chunk_size is None else max(1, min(int(chunk_size), n))
    q, rem = divmod(n, chunk)
    return chunk, q, rem


def _take(data: Batch, i: jax.Array, chunk: int, q: int) -> Batch:
    """Chunk i of q: examples {i, i + q, i + 2q, ...} (strided, so a sharded axis 0 stays balanced)."""
    main = jax.tree.map(lambda a: a[: q * chunk].reshape(chunk, q, *a.shape[1:]), data)
    return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, axis=1, keepdims=False), main)


def _tail_from(data: Batch, i: jax.Array, start: int) -> Batch:
    del i  # one tail chunk
    return jax.tree.map(lambda a: a[start:], data)


def chunked_mean(fn: Callable[[Batch], PyTree], data: Batch, chunk_size: int | None) -> PyTree:
    """Example-weighted mean of ``fn`` over chunks: sum_c (n_c / N) * fn(chunk_c), as a ``lax``
    loop (call inside jit). Chunk c holds examples {c, c + q, ...} of the first q * chunk; the
    N mod chunk leftover examples form one extra, smaller chunk."""
    n = num_examples(data)
    chunk, q, rem = _chunking(n, chunk_size)
    out_shape = jax.eval_shape(fn, _take(data, jnp.int32(0), chunk, q))
    init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape)

    def body(i: jax.Array, acc: PyTree) -> PyTree:
        return jax.tree.map(jnp.add, acc, fn(_take(data, i, chunk, q)))

    total = jax.lax.fori_loop(0, q, body, init)
    return _finish(total, fn, data, chunk, q, rem, n)


def _finish(total: PyTree, fn: Callable[[Batch], PyTree], data: Batch, chunk: int, q: int, rem: int, n: int) -> PyTree:
    total = jax.tree.map(lambda t: t * (chunk / n), total)
    if rem:
        tail = fn(jax.tree.map(lambda a: a[q * chunk :], data))
        total = jax.tree.map(lambda t, r: t + r * (rem / n), total, tail)
    return total


# Host-driven chunk loop: one program per (fn, shapes), shared by every caller.
@functools.partial(jax.jit, static_argnames=("fn", "chunk", "q"), donate_argnames=("acc",))
def _add_chunk(fn: Callable, loss: Partial, params: PyTree, data: Batch, args: tuple, acc: PyTree,
               i: jax.Array, *, chunk: int, q: int) -> PyTree:
    return jax.tree.map(jnp.add, acc, fn(loss, params, _take(data, i, chunk, q), *args))


@functools.partial(jax.jit, static_argnames=("fn", "chunk", "q", "rem"), donate_argnames=("acc",))
def _finish_chunks(fn: Callable, loss: Partial, params: PyTree, data: Batch, args: tuple, acc: PyTree, *,
                   chunk: int, q: int, rem: int) -> PyTree:
    return _finish(acc, lambda b: fn(loss, params, b, *args), data, chunk, q, rem, num_examples(data))


@dataclasses.dataclass(frozen=True)
class HessianOperator:
    """The Hessian of the full-data mean of ``loss`` at ``params`` (a pytree: jit it freely)."""

    loss: Partial
    params: PyTree
    data: Batch
    chunk_size: int | None = dataclasses.field(default=None, metadata={"static": True})
    rolled: bool = dataclasses.field(default=True, metadata={"static": True})
    linear: Linearized | None = dataclasses.field(default=None, metadata={"static": True})  # see hoisted()

    @classmethod
    def of(cls, loss_fn: LossFn, params: PyTree, data: Batch, chunk_size: int | None = None,
           rolled: bool | None = None) -> HessianOperator:
        return cls(lift_closure(loss_fn), params, data, chunk_size, rolled_loops() if rolled is None else rolled)

    def hoisted(self, max_bytes: int | None = None) -> HessianOperator:
        """This operator with its HVPs hoisted (bench.metrics.linearize: the primal pass of each
        chunk runs once, each ``matvec`` only the tangent pass), when host-driven and the
        residuals of all chunks fit in ``max_bytes``; otherwise itself."""
        if self.rolled or self.linear is not None:
            return self
        n = num_examples(self.data)
        loss, params = self.place((self.loss, self.params))
        linear = linearize(loss, params, self.data, _take, _tail_from, _chunking(n, self.chunk_size), n,
                           max_bytes=max_bytes)
        return self if linear is None else dataclasses.replace(self, linear=linear)

    def place(self, tree: PyTree) -> PyTree:
        """``tree`` replicated over the devices that hold ``data``, when host-driven: jit keys its
        cache on input shardings, so host-made vectors (uncommitted) and program outputs
        (committed) would otherwise compile every program twice."""
        if self.rolled:
            return tree
        sharding = _replicated_like(jax.tree.leaves(self.data)[0])
        return tree if sharding is None else jax.device_put(tree, sharding)

    def mean(self, fn: Callable, params: PyTree, *args: Any) -> PyTree:
        """Full-data mean of ``fn(loss, params, batch, *args)`` (``fn`` a module-level function)."""
        if self.rolled:
            return chunked_mean(lambda b: fn(self.loss, params, b, *args), self.data, self.chunk_size)
        chunk, q, rem = _chunking(num_examples(self.data), self.chunk_size)
        shape = jax.eval_shape(fn, self.loss, params, _take(self.data, jnp.int32(0), chunk, q), *args)
        acc = self.place(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shape))
        params, args = self.place((params, args))
        for i in range(q):
            acc = _add_chunk(fn, self.loss, params, self.data, args, acc, i, chunk=chunk, q=q)
        return _finish_chunks(fn, self.loss, params, self.data, args, acc, chunk=chunk, q=q, rem=rem)

    def hvp(self, v: PyTree) -> PyTree:
        """H v for a pytree ``v`` shaped like ``params``."""
        return self.mean(_hvp_on_batch, self.params, v)

    def matvec(self, v: jax.Array) -> jax.Array:
        """H v for a flat vector ``v`` (``ravel_pytree`` order of ``params``)."""
        if self.linear is not None:
            return self.linear.matvec(self.place(v))
        return self.mean(_hvp_flat_on_batch, self.params, v)

    def fori(self, n: int, update: Callable, v: jax.Array, state: PyTree, *consts: Any) -> tuple[jax.Array, PyTree]:
        """``n`` Krylov steps ``v, state = update(j, v, H v, state, *consts)``; returns (v, state).

        ``update`` must be a module-level function (its jitted program is cached by identity).
        """
        if self.rolled:
            body = lambda j, c: update(j, c[0], self.matvec(c[0]), c[1], *consts)  # noqa: E731
            return jax.lax.fori_loop(0, n, body, (v, state))
        step = _jit_update(update)
        v, state, consts = self.place((v, state, consts))
        for j in range(n):
            v, state = step(j, v, self.matvec(v), state, *consts)
        return v, state

    def while_(self, cond: Callable, update: Callable, v: jax.Array, state: PyTree) -> tuple[jax.Array, PyTree]:
        """Krylov steps ``v, state = update(j, v, H v, state)`` while ``cond(state)`` holds (the host
        reads the condition after each step when not rolled)."""
        if self.rolled:
            def body(c: tuple) -> tuple:
                j, v, s = c
                return (j + 1, *update(j, v, self.matvec(v), s))

            _, v, state = jax.lax.while_loop(lambda c: cond(c[2]), body, (jnp.int32(0), v, state))
            return v, state
        step, check = _jit_update(update), _jit_static(cond, ())
        v, state = self.place((v, state))
        j = 0
        while bool(check(state)):
            v, state = step(j, v, self.matvec(v), state)
            j += 1
        return v, state

    def call(self, fn: Callable, *args: Any, **static: Any) -> Any:
        """``fn(*args, **static)``: inline when rolled (the caller is being traced), else one cached
        jitted program (``fn`` module-level; ``static`` its static arguments), so host-driven
        estimators do not compile every small eager op of their set-up and read-out."""
        if self.rolled:
            return fn(*args, **static)
        return _jit_static(fn, tuple(sorted(static)))(*self.place(args), **static)

    def map(self, fn: Callable[[jax.Array], PyTree], xs: jax.Array) -> PyTree:
        """``lax.map(fn, xs)``; a host loop (``fn`` runs eagerly, its HVPs host-driven) when not rolled."""
        if self.rolled:
            return jax.lax.map(fn, xs)
        outs = [fn(xs[i]) for i in range(xs.shape[0])]  # (iterating would compile an unstack)
        return jax.tree.map(lambda *leaves: jnp.stack(leaves), *outs)


jax.tree_util.register_dataclass(HessianOperator)


def _replicated_like(a: Any) -> jax.sharding.Sharding | None:
    """The replicated sharding over ``a``'s devices (None when that is not expressible)."""
    sharding = getattr(a, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
        return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    if isinstance(sharding, jax.sharding.SingleDeviceSharding):
        return sharding
    return None


def _hvp_on_batch(loss: Partial, params: PyTree, batch: Batch, v: PyTree) -> PyTree:
    return jax.jvp(lambda p: jax.grad(loss)(p, batch), (params,), (v,))[1]


def _hvp_flat_on_batch(loss: Partial, params: PyTree, batch: Batch, v: jax.Array) -> jax.Array:
    flat, unravel = ravel_pytree(params)
    return ravel_pytree(_hvp_on_batch(loss, params, batch, unravel(v.astype(flat.dtype))))[0]


def _module_level(fn: Callable) -> None:
    if fn.__name__ == "<lambda>" or "<locals>" in fn.__qualname__:
        raise ValueError(f"{fn.__qualname__}: host-driven steps must be module-level functions "
                         "(a fresh function per call would compile again at every measurement)")


@functools.cache
def _jit_update(update: Callable) -> Callable:
    """The jitted Krylov step; the state (argument 3) is donated, so O(m P) bases update in place."""
    _module_level(update)
    return jax.jit(update, donate_argnums=(3,))


@functools.cache
def _jit_static(fn: Callable, static_argnames: tuple[str, ...]) -> Callable:
    _module_level(fn)
    return jax.jit(fn, static_argnames=static_argnames)


def estimator(*static_argnames: str, hoist: bool = False) -> Callable[[Callable], Callable]:
    """Turn ``impl(op: HessianOperator, *args, **static)`` into
    ``f(loss_fn, params, data, *args, chunk_size=None, rolled=None, **static)``.

    Rolled, ``impl`` runs as one jitted program; otherwise it runs eagerly on the host, its
    HVPs and Krylov updates each a cached jitted program, and (``hoist``, for estimators that
    run many HVPs) with the HVPs hoisted (``HessianOperator.hoisted``).
    """

    def decorate(impl: Callable) -> Callable:
        jitted = jax.jit(impl, static_argnames=static_argnames)

        @functools.wraps(impl)
        def wrapper(loss_fn: LossFn, params: PyTree, data: Batch, *args: Any, chunk_size: int | None = None,
                    rolled: bool | None = None, **kwargs: Any) -> Any:
            op = HessianOperator.of(loss_fn, params, data, chunk_size, rolled)
            if op.rolled:
                return jitted(op, *args, **kwargs)
            return impl(op.hoisted() if hoist else op, *args, **kwargs)

        wrapper.jitted = jitted  # type: ignore[attr-defined]
        return wrapper

    return decorate
