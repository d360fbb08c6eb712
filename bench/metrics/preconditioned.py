"""Adam's preconditioned sharpness (Cohen et al. 2022, "Adaptive Gradient Methods at the Edge of
Stability", arXiv:2207.14484): the top eigenvalue of P^-1 H, with P Adam's diagonal preconditioner.

Written with the un-corrected first moment m_t (the EMA the stability threshold
(2 + 2 b1) / ((1 - b1) lr) is derived for), the step optax's Adam takes after t updates is

    theta_t = theta_{t-1} - lr P_t^-1 m_t,   P_t = (1 - b1^t) (sqrt(nu_t / (1 - b2^t)) + eps),

so P_t is the bias-corrected second moment's diag(sqrt(nu_hat) + eps) times the first moment's
bias correction (1 - b1^t), which differs from 1 by < 1e-4 after 90 steps at b1 = 0.9
(``adam_preconditioner``; tested against optax's own step). P^-1 H is not symmetric, but it is
similar to S H S with S = P^-1/2, which has the same eigenvalues: ``preconditioned_top_eigenvalues``
runs the harness's Lanczos on the Hessian of u -> L(theta + S u) at u = 0, which is S H S. So it
costs exactly what ``lanczos_top_eigenvalues`` costs (num_iters + k HVPs, one elementwise scaling
each) and reuses its compiled programs: the closed-over theta, S and loss are traced arguments.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from bench.metrics.hessian import (Batch, LanczosResult, LossFn, PyTree, lanczos_top_eigenvalues, lift_closure,
                                   num_examples)
from bench.metrics.registry import Cost, Float, Measurement, Metric, num
from bench.schema import frozen, param

__all__ = ["adam_preconditioner", "adam_state", "preconditioned_loss", "preconditioned_top_eigenvalues"]


def _is_adam(x: Any) -> bool:
    return isinstance(x, optax.ScaleByAdamState)


def adam_state(opt_state: Any) -> optax.ScaleByAdamState | None:
    """The one ``ScaleByAdamState`` inside an optax state (chains, inject_hyperparams), else None."""
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=_is_adam) if _is_adam(s)]
    if len(found) > 1:
        raise ValueError(f"optimizer state holds {len(found)} Adam states; expected one")
    return found[0] if found else None


def adam_preconditioner(opt_state: Any, *, b1: float, b2: float, eps: float) -> PyTree | None:
    """P_t (shaped like the parameters) of the last Adam step the state records; None when the
    state has no Adam moments or no step was taken yet (t = 0: nu_hat is 0 / 0)."""
    state = adam_state(opt_state)
    if state is None:
        return None
    t = int(state.count)
    if t == 0:
        return None
    first, second = 1.0 - float(b1) ** t, 1.0 - float(b2) ** t
    return jax.tree.map(lambda nu: first * (jnp.sqrt(nu / second) + eps), state.nu)


def preconditioned_loss(loss_fn: LossFn, params: PyTree, preconditioner: PyTree) -> LossFn:
    """u -> loss(params + P^-1/2 u): its Hessian at u = 0 is P^-1/2 H P^-1/2."""
    loss = lift_closure(loss_fn)  # a pytree: closed over below as a traced argument
    scale = jax.tree.map(lambda p: jax.lax.rsqrt(p), preconditioner)

    def shifted(u: PyTree, batch: Batch) -> jax.Array:
        return loss(jax.tree.map(lambda p, s, x: p + s * x, params, scale, u), batch)

    return shifted


def preconditioned_top_eigenvalues(loss_fn: LossFn, params: PyTree, data: Batch, key: jax.Array,
                                   preconditioner: PyTree, *, k: int = 1, num_iters: int = 30,
                                   chunk_size: int | None = None, rolled: bool | None = None) -> LanczosResult:
    """Top-k eigenvalues of P^-1 H (Lanczos on P^-1/2 H P^-1/2; eigenvectors and residuals are
    those of the symmetric form). ``num_iters + k`` HVPs."""
    zeros = jax.tree.map(jnp.zeros_like, params)
    return lanczos_top_eigenvalues(preconditioned_loss(loss_fn, params, preconditioner), zeros, data, key,
                                   k=k, num_iters=num_iters, chunk_size=chunk_size, rolled=rolled)


# The curvature-suite entry (bench.metrics.registry): on the curvature subset, with the P of the
# replica's own optimizer state (bench.metrics.probe); skipped when no P is given.
KEY_PRECONDITIONED = 8


@frozen
class PreconditionedKeys:
    preconditioned: bool = param(
        False, help="Adam's preconditioned sharpness lambda_max(P^-1 H) (Cohen et al. 2022); "
                    "optimizer=adam|adamw")


def _measure(cfg: Any, m: Measurement) -> dict[str, Any]:
    if m.preconditioner is None:
        return {}
    res = preconditioned_top_eigenvalues(m.loss_fn, m.params, m.subset, m.key(KEY_PRECONDITIONED),
                                         m.preconditioner, k=1, num_iters=cfg.lanczos_iters,
                                         chunk_size=m.chunk_size, rolled=m.rolled)
    return {"preconditioned_top_eigenvalue": num(res.eigenvalues[0]),
            "preconditioned_lanczos_residual": num(res.residuals[0])}  # in the symmetric form


PRECONDITIONED = Metric(
    "preconditioned", PreconditionedKeys,
    record={"preconditioned_top_eigenvalue": Float, "preconditioned_lanczos_residual": Float},
    measure=_measure, enabled=lambda cfg: cfg.preconditioned,
    cost=lambda cfg, m: Cost(hvp_examples=(min(cfg.lanczos_iters, m.num_params) + 1) * num_examples(m.subset)),
    folds=(KEY_PRECONDITIONED,))
