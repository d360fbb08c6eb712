"""Matrix-free Hessian probes of a full-data mean loss.

All functions take ``loss_fn(params, batch) -> scalar`` (a per-batch MEAN loss),
``params`` (any pytree) and ``data = {"x": [N, ...], "y": [N]}`` (possibly sharded
along axis 0 over a mesh axis "data"), and act on the Hessian of

    L(params) = (1 / N) * sum_i loss(params, example_i).

Hessian-vector products are forward-over-reverse, ``jax.jvp(jax.grad(f), (p,), (v,))``,
accumulated over chunks of ``chunk_size`` examples inside one jitted program; each
chunk's contribution is weighted by ``n_chunk / N``, so the result is independent of
the chunk size and of the device count up to float round-off.

Each iterative method (Lanczos, power iteration, Hutchinson, SLQ) is one jitted
program: the HVP is traced once and looped over with ``lax`` control flow, with no
host round-trip per iteration. Integer sizes are static arguments; ``loss_fn`` is
keyed by its code, and jax arrays it closes over are traced arguments (see
``lift_closure``), so a fresh closure over this step's BatchNorm statistics reuses
the programs compiled at the previous measurement.

Lanczos is written out here (``lanczos``: full reorthogonalisation, restart on
breakdown) rather than taken from ``matfree.decomp.tridiag_sym``: matfree 0.6
divides by a zero residual when the Krylov space is exhausted (an operator with
fewer distinct eigenvalues than iterations), which silently corrupts every later
Lanczos vector and the SLQ nodes. Hutchinson uses matfree's Rademacher sampler and
trace integrand, looped with ``lax.map`` rather than matfree's ``vmap`` so memory
stays at one HVP whatever the probe count. Lanczos stores its m + 1 basis vectors:
O(m P) memory.
"""

from __future__ import annotations

import functools
import math
import types
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jax.tree_util import Partial
from matfree import stochtrace

PyTree = Any
Batch = dict[str, jax.Array]
LossFn = Callable[[PyTree, Batch], jax.Array]

__all__ = [
    "LanczosResult",
    "chunked_mean",
    "density_from_ritz",
    "hutchinson_trace",
    "hvp",
    "jit_loss",
    "lanczos",
    "lanczos_from_key",
    "lift_closure",
    "lanczos_top_eigenvalues",
    "num_examples",
    "power_iteration_top_eigenvalue",
    "ritz",
    "slq_ritz",
    "spectral_density",
]


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
    """``jax.jit`` for functions whose first argument is ``loss_fn``.

    ``loss_fn`` travels as a pytree (``jax.tree_util.Partial``, see ``lift_closure``):
    jax arrays it closes over, or that a ``Partial(f, *arrays)`` carries, are traced,
    so new values (e.g. this step's BatchNorm statistics) with the same code reuse
    the compiled program instead of compiling again with the values baked in.
    """

    def decorate(fn: Callable) -> Callable:
        jitted = jax.jit(fn, static_argnames=static_argnames)

        @functools.wraps(fn)
        def wrapper(loss_fn: LossFn, *args: Any, **kwargs: Any) -> Any:
            return jitted(lift_closure(loss_fn), *args, **kwargs)

        wrapper.jitted = jitted  # type: ignore[attr-defined]
        return wrapper

    return decorate


def chunked_mean(fn: Callable[[Batch], PyTree], data: Batch, chunk_size: int | None) -> PyTree:
    """Example-weighted mean of ``fn`` over chunks: sum_c (n_c / N) * fn(chunk_c).

    For ``fn`` = (a derivative of) a per-batch mean loss this is exactly the full-data
    quantity. Chunk c holds examples {c, c + q, c + 2q, ...} (a strided split of the
    first q * chunk examples, q = N // chunk), so with data sharded along axis 0 every
    chunk is spread evenly over the devices; the N mod chunk leftover examples form
    one extra, smaller chunk. Call inside jit.
    """
    n = num_examples(data)
    chunk = n if chunk_size is None else max(1, min(int(chunk_size), n))
    q, rem = divmod(n, chunk)
    main = jax.tree.map(lambda a: a[: q * chunk].reshape(chunk, q, *a.shape[1:]), data)

    def take(i: jax.Array) -> Batch:
        return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, axis=1, keepdims=False), main)

    out_shape = jax.eval_shape(fn, take(jnp.int32(0)))
    init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape)

    def body(i: jax.Array, acc: PyTree) -> PyTree:
        return jax.tree.map(jnp.add, acc, fn(take(i)))

    total = jax.lax.fori_loop(0, q, body, init)
    total = jax.tree.map(lambda t: t * (chunk / n), total)
    if rem:
        tail = fn(jax.tree.map(lambda a: a[q * chunk :], data))
        total = jax.tree.map(lambda t, r: t + r * (rem / n), total, tail)
    return total


def _hvp(loss_fn: LossFn, params: PyTree, data: Batch, v: PyTree, chunk_size: int | None) -> PyTree:
    def one_chunk(batch: Batch) -> PyTree:
        grad = lambda p: jax.grad(loss_fn)(p, batch)  # noqa: E731
        return jax.jvp(grad, (params,), (v,))[1]

    return chunked_mean(one_chunk, data, chunk_size)


@jit_loss("chunk_size")
def hvp(loss_fn: LossFn, params: PyTree, data: Batch, v: PyTree, *, chunk_size: int | None) -> PyTree:
    """Hessian-vector product H v of the full-data mean loss (same pytree as ``v``)."""
    return _hvp(loss_fn, params, data, v, chunk_size)


def _flat_operator(
    loss_fn: LossFn, params: PyTree, data: Batch, chunk_size: int | None
) -> tuple[Callable[[jax.Array], jax.Array], jax.Array]:
    """(v_flat -> H v_flat, ravelled params) for use inside a jitted program."""
    flat, unravel = ravel_pytree(params)

    def matvec(v: jax.Array) -> jax.Array:
        return ravel_pytree(_hvp(loss_fn, params, data, unravel(v.astype(flat.dtype)), chunk_size))[0]

    return matvec, flat


class LanczosResult(NamedTuple):
    """Top-k Ritz pairs of a Lanczos run (``eigenvalues`` descending)."""

    eigenvalues: jax.Array  # [k]
    residuals: jax.Array  # [k], ||H u - theta u|| for the unit Ritz vectors u (explicit HVPs)
    ritz_values: jax.Array  # [num_iters], all Ritz values, ascending
    eigenvectors: jax.Array  # [k, P], flat unit Ritz vectors


def lanczos(
    matvec: Callable[[jax.Array], jax.Array], v0: jax.Array, num_iters: int, key: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Lanczos with full reorthogonalisation: (Q [m, P] orthonormal rows, alpha [m], beta [m]).

    T = tridiag(beta[:-1], alpha, beta[:-1]) = Q H Q^T; beta[-1] is the norm of the
    final residual (H Q^T = Q^T T + beta[-1] q_{m+1} e_m^T). Each new vector is
    orthogonalised twice against all previous ones (classical Gram-Schmidt). On breakdown
    (beta <= 100 eps |T|: the Krylov space is H-invariant, as for an operator with
    fewer than m distinct eigenvalues) the iteration restarts from a random vector
    orthogonal to Q with beta = 0, so T stays exactly Q H Q^T (block diagonal) and
    the first block still carries all of v0's quadrature weight.
    """
    m, size, dtype = num_iters, v0.shape[0], v0.dtype
    tol = 100 * jnp.finfo(dtype).eps

    def orthogonalise(w: jax.Array, q: jax.Array) -> jax.Array:
        w = w - q.T @ (q @ w)
        return w - q.T @ (q @ w)

    def restart(j: jax.Array, q: jax.Array) -> jax.Array:
        r = orthogonalise(jax.random.normal(jax.random.fold_in(key, j), (size,), dtype), q)
        return r / jnp.linalg.norm(r)

    def step(j: jax.Array, state: tuple) -> tuple:
        q, alpha, beta, scale = state
        w = matvec(q[j])
        a = jnp.vdot(q[j], w)
        w = orthogonalise(w, q)  # removes a q_j + b q_{j-1} and any round-off drift
        b = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.maximum(jnp.abs(a), b))
        broke = b <= tol * scale
        nxt = jax.lax.cond(broke, restart, lambda j_, q_: w / b, j, q)
        return q.at[j + 1].set(nxt), alpha.at[j].set(a), beta.at[j].set(jnp.where(broke, 0.0, b)), scale

    q = jnp.zeros((m + 1, size), dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    init = (q, jnp.zeros(m, dtype), jnp.zeros(m, dtype), jnp.zeros((), dtype))
    q, alpha, beta, _ = jax.lax.fori_loop(0, m, step, init)
    return q[:m], alpha, beta


def lanczos_from_key(
    matvec: Callable[[jax.Array], jax.Array], flat: jax.Array, num_iters: int, key: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``lanczos`` from the Gaussian start vector and restart key that ``key`` determines, as
    ``lanczos_top_eigenvalues`` uses them (the same key gives the same Krylov basis)."""
    start_key, restart_key = jax.random.split(key)
    v0 = jax.random.normal(start_key, flat.shape, flat.dtype)
    return lanczos(matvec, v0, num_iters, restart_key)


def ritz(alpha: jax.Array, beta: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Eigen-decomposition of tridiag(beta, alpha, beta): (values ascending, vectors [m, m])."""
    t = jnp.diag(alpha) + jnp.diag(beta, 1) + jnp.diag(beta, -1)
    return jnp.linalg.eigh(t)


@jit_loss("k", "num_iters", "chunk_size")
def lanczos_top_eigenvalues(
    loss_fn: LossFn,
    params: PyTree,
    data: Batch,
    key: jax.Array,
    *,
    k: int = 1,
    num_iters: int = 30,
    chunk_size: int | None = None,
) -> LanczosResult:
    """Top-k Hessian eigenvalues by Lanczos (full reorthogonalisation, Gaussian start).

    Costs ``min(num_iters, P)`` HVPs plus k for the residuals ||H u - theta u||,
    which tell whether each Ritz pair has converged: the nearest eigenvalue of H
    lies within r of theta. They are computed with explicit HVPs, not as
    beta_m |y_m| from the Lanczos relation, which underflows to 0 for a converged
    pair and hides the round-off floor (~1e-6 relative in float32).
    """
    matvec, flat = _flat_operator(loss_fn, params, data, chunk_size)
    m = min(num_iters, flat.size)
    if not 1 <= k <= m:
        raise ValueError(f"need 1 <= k <= min(num_iters, num_params) = {m}, got k={k}")
    q, alpha, beta = lanczos_from_key(matvec, flat, m, key)
    theta, y = ritz(alpha, beta[:-1])
    top, vecs = theta[::-1][:k], y[:, ::-1][:, :k].T @ q  # [k], [k, P]
    vecs = vecs / jnp.linalg.norm(vecs, axis=1, keepdims=True)
    residuals = jnp.linalg.norm(jax.lax.map(matvec, vecs) - top[:, None] * vecs, axis=1)
    return LanczosResult(top, residuals, theta, vecs)


@jit_loss("num_iters", "chunk_size")
def power_iteration_top_eigenvalue(
    loss_fn: LossFn,
    params: PyTree,
    data: Batch,
    key: jax.Array,
    *,
    num_iters: int = 100,
    tol: float = 1e-6,
    chunk_size: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(eigenvalue, residual ||H v - lambda v||) by ``optax.power_iteration``.

    This is the LARGEST-MAGNITUDE eigenvalue (negative if the most negative
    eigenvalue dominates), unlike Lanczos' algebraically largest. Stops after
    ``num_iters`` iterations or when the relative change is below ``tol``.
    """
    matvec, flat = _flat_operator(loss_fn, params, data, chunk_size)
    v0 = jax.random.normal(key, flat.shape, flat.dtype)
    eig, vec = optax.power_iteration(matvec, v0=v0, num_iters=num_iters, error_tolerance=tol)
    return eig, jnp.linalg.norm(matvec(vec) - eig * vec)


@jit_loss("num_probes", "chunk_size")
def hutchinson_trace(
    loss_fn: LossFn,
    params: PyTree,
    data: Batch,
    key: jax.Array,
    *,
    num_probes: int = 100,
    chunk_size: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Hutchinson estimate of tr(H) with Rademacher probes: (mean, standard error).

    The standard error is std(ddof=1) / sqrt(num_probes) (NaN for one probe).
    """
    matvec, flat = _flat_operator(loss_fn, params, data, chunk_size)
    probes = stochtrace.sampler_signs(flat, num=num_probes)(key)
    integrand = stochtrace.monte_carlo_trace()
    samples = jax.lax.map(lambda v: integrand(matvec, v), probes)
    stderr = jnp.std(samples, ddof=1) / math.sqrt(num_probes) if num_probes > 1 else jnp.nan
    return jnp.mean(samples), jnp.asarray(stderr, samples.dtype)


@jit_loss("num_probes", "num_iters", "chunk_size")
def slq_ritz(
    loss_fn: LossFn,
    params: PyTree,
    data: Batch,
    key: jax.Array,
    *,
    num_probes: int = 1,
    num_iters: int = 30,
    chunk_size: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Stochastic Lanczos quadrature nodes and weights, each [num_probes, m].

    Per probe v (Rademacher, normalised), Lanczos gives T = Y diag(theta) Y^T; the
    nodes are theta and the weights Y[0, :]^2 (they sum to 1), so
    sum_j w_j delta(t - theta_j) approximates the spectral density of H
    (Ghorbani et al. 2019; Ubaru et al. 2017).
    """
    matvec, flat = _flat_operator(loss_fn, params, data, chunk_size)
    m = min(num_iters, flat.size)
    probe_key, restart_key = jax.random.split(key)
    probes = stochtrace.sampler_signs(flat, num=num_probes)(probe_key)

    def one(v: jax.Array) -> tuple[jax.Array, jax.Array]:
        _, alpha, beta = lanczos(matvec, v, m, restart_key)
        theta, y = ritz(alpha, beta[:-1])
        return theta, y[0, :] ** 2

    return jax.lax.map(one, probes)


def density_from_ritz(
    nodes: np.ndarray,
    weights: np.ndarray,
    *,
    grid_size: int = 256,
    sigma_rel: float = 0.01,
    pad_sigmas: float = 4.0,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Gaussian-smoothed SLQ density on a grid: (grid, density, sigma).

    sigma = sigma_rel * (max - min of the nodes); the grid spans
    [min - delta, max + delta] with delta = pad_sigmas * sigma, and the density is
    renormalised so its trapezoid integral over the grid is exactly 1.
    """
    nodes = np.asarray(nodes, np.float64).reshape(-1)
    weights = np.asarray(weights, np.float64).reshape(-1)
    lo, hi = float(nodes.min()), float(nodes.max())
    spread = max(hi - lo, 1e-3 * max(abs(lo), abs(hi)), 1e-12)
    sigma = sigma_rel * spread
    delta = pad_sigmas * sigma
    grid = np.linspace(lo - delta, hi + delta, grid_size)
    kernel = np.exp(-0.5 * ((grid[:, None] - nodes[None, :]) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    density = kernel @ weights
    density = density / np.trapezoid(density, grid)
    return grid, density, sigma


def _round(x: np.ndarray, digits: int) -> list:
    """Round to ``digits`` significant digits, as nested Python floats."""
    x = np.asarray(x, np.float64)
    return [float(f"{v:.{digits}g}") for v in x.reshape(-1)] if x.ndim <= 1 else [_round(r, digits) for r in x]


def spectral_density(
    loss_fn: LossFn,
    params: PyTree,
    data: Batch,
    key: jax.Array,
    *,
    num_probes: int = 1,
    num_iters: int = 30,
    grid_size: int = 256,
    sigma_rel: float = 0.01,
    chunk_size: int | None = None,
    digits: int = 5,
) -> dict[str, Any]:
    """Hessian spectral density by SLQ, as a compact JSON-able dict.

    Keys: ``grid`` and ``density`` (``grid_size`` points, integrating to 1 by the
    trapezoid rule), ``sigma`` (Gaussian kernel width), and the raw quadrature
    ``nodes`` / ``weights`` ([num_probes][m]), all rounded to ``digits`` significant
    digits.
    """
    nodes, weights = slq_ritz(
        loss_fn, params, data, key, num_probes=num_probes, num_iters=num_iters, chunk_size=chunk_size
    )
    nodes, weights = np.asarray(nodes), np.asarray(weights)
    grid, density, sigma = density_from_ritz(nodes, weights, grid_size=grid_size, sigma_rel=sigma_rel)
    return {
        "grid": _round(grid, digits),
        "density": _round(density, digits),
        "sigma": float(f"{sigma:.{digits}g}"),
        "nodes": _round(nodes, digits),
        "weights": _round(weights, digits),
    }
