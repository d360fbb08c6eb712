"""Hoisted Hessian-vector products: linearize the gradient once, apply the linear map per HVP.

A forward-over-reverse HVP ``jvp(grad f)(p; v)`` recomputes the primal forward and backward
pass at every call, though ``p`` is fixed for a whole Krylov run. ``jax.linearize`` splits it:
the primal part runs once per chunk and leaves residuals (activations and their derivatives),
and each HVP then evaluates only the tangent part. Measured with ``python -m
bench.perf.curvature`` on 2 CPU cores: one HVP costs 1.25-1.6 gradients instead of 1.9-2.4.
PyHessian does the same (it keeps the ``create_graph`` backward graph for every product).

Host-driven operators only (bench.metrics.operator); residuals stay on device between HVPs,
for all chunks at once, so hoisting applies only while they fit in ``max_bytes`` (default
``MAX_BYTES``), else HVPs are computed from scratch as before. Same numbers up to round-off.

The linear map is a ``jax.tree_util.Partial`` whose tree structure holds its jaxpr, so each
program is compiled ahead of time from one trace that also yields that structure, and cached
per input signature: later operators (new parameters, same shapes) reuse both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

__all__ = ["Linearized", "MAX_BYTES", "clear_programs", "linearize"]

MAX_BYTES = 1 << 30  # residual memory (all chunks) above which HVPs are not hoisted

_PROGRAMS: dict[Any, tuple[Any, Any]] = {}  # signature -> (compiled linearize program, treedef of its map)


def clear_programs() -> None:
    """Forget the compiled linearization programs (with ``jax.clear_caches()``: a cold start)."""
    _PROGRAMS.clear()


def _signature(*args: Any) -> Any:
    leaves, treedef = jax.tree.flatten(args)
    return treedef, tuple((np.shape(a), getattr(a, "dtype", type(a)), getattr(a, "sharding", None)) for a in leaves)


def _program(batch_of: Callable, loss: Any, params: Any, data: Any, index: int, static: tuple) -> tuple[Any, Any]:
    """(compiled ``(loss, params, data, index) -> residual leaves``, treedef of the linear map)."""
    key = (batch_of, static, _signature(loss, params, data, index))
    if key not in _PROGRAMS:
        box: dict[str, Any] = {}

        def residuals(loss: Any, params: Any, data: Any, index: Any) -> list:
            batch = batch_of(data, index, *static)
            flat, unravel = ravel_pytree(params)
            _, linear = jax.linearize(lambda f: ravel_pytree(jax.grad(loss)(unravel(f), batch))[0], flat)
            leaves, box["treedef"] = jax.tree.flatten(linear)
            return leaves

        compiled = jax.jit(residuals).trace(loss, params, data, index).lower().compile()
        _PROGRAMS[key] = (compiled, box["treedef"])
    return _PROGRAMS[key]


@jax.jit
def _add(acc: jax.Array, linear: Any, v: jax.Array) -> jax.Array:
    return acc + linear(v)


@dataclasses.dataclass(eq=False)
class Linearized:
    """Per-chunk linear maps v -> H_c v, weighted and summed as ``chunked_mean`` does."""

    main: list[Any]  # linear maps (Partials) of the q full chunks
    tail: Any | None  # that of the leftover chunk, if any
    weights: tuple[float, float]  # chunk / N, rem / N

    def matvec(self, v: jax.Array) -> jax.Array:
        acc = jax.numpy.zeros_like(v)
        for linear in self.main:
            acc = _add(acc, linear, v)
        return _finish(acc, self.tail, v, self.weights)

    @property
    def nbytes(self) -> int:
        return sum(leaf.nbytes for leaf in jax.tree.leaves([self.main, self.tail]))


@jax.jit
def _finish(acc: jax.Array, tail: Any, v: jax.Array, weights: tuple[float, float]) -> jax.Array:
    total = acc * weights[0]
    return total if tail is None else total + tail(v) * weights[1]


def linearize(loss: Any, params: Any, data: Any, take: Callable, tail_of: Callable, chunking: tuple[int, int, int],
              n: int, *, max_bytes: int | None = None) -> Linearized | None:
    """The hoisted operator, or None when its residuals would exceed ``max_bytes``.

    ``take(data, i, chunk, q)`` gives full chunk i, ``tail_of(data, i, start)`` the leftover.
    """
    chunk, q, rem = chunking
    budget = MAX_BYTES if max_bytes is None else max_bytes
    programs = []
    if q:
        programs.append((_program(take, loss, params, data, 0, (chunk, q)), q))
    if rem:
        programs.append((_program(tail_of, loss, params, data, 0, (q * chunk,)), 1))
    size = sum(count * sum(int(np.prod(o.shape)) * o.dtype.itemsize for o in jax.tree.leaves(p[0].out_info))
               for p, count in programs)
    if size > budget:
        return None

    def build(program: tuple[Any, Any], index: int) -> Any:
        compiled, treedef = program
        return jax.tree.unflatten(treedef, compiled(loss, params, data, index))

    main = [build(programs[0][0], i) for i in range(q)] if q else []
    tail = build(programs[-1][0], 0) if rem else None
    return Linearized(main, tail, (chunk / n, rem / n))
