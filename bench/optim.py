"""Optimizers (a registry; all optax).

``optimizer=<name>`` picks a registered section (its keys and its optax transformation); the
batch-size rules that set its LR and hyperparameters per batch size are bench.rules.lr_scaling
and bench.rules.adam. The learning rate is an injected
hyperparameter (``optax.inject_hyperparams``), so each vectorized replica carries its own value
in its optimizer state; per step, ``lr(step) = peak_lr * multiplier(step)`` with the multiplier
from bench.rules.lr_schedules.

Adding an optimizer: one registered section (keys + ``undecayed``, the contract is
:class:`OptimizerConfig`'s docstring) and ``conf/optimizer/<name>.yaml``. Muon and the
schedule-free optimizers live in bench.optim_contrib.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import jax
import optax

from bench.schema import ConfigError, Registry, frozen, param

if TYPE_CHECKING:  # type hints only: bench.config imports this module
    from bench.config import Config

OPTIMIZERS: Registry["OptimizerConfig"] = Registry("optimizer", default="momentum")

_BETA = {"ge": 0.0, "lt": 1.0}


@frozen
class OptimizerConfig:
    """An optimizer: its keys and its optax transformation.

    The contract. A subclass writes ``undecayed(learning_rate, **hyper)``: the optimizer
    *without* weight decay. ``learning_rate`` is a scalar the train step sets every step;
    ``hyper`` holds hyperparameters a batch-size rule may set per batch size (Adam's b1, b2,
    eps: None means the section's own value). A subclass never
    sees the weight-decay mask: :meth:`transform` (what :func:`make_optimizer` injects) wraps
    ``undecayed`` with ``weight_decay`` on the parameters the model's mask selects (transformer
    and ResNet-50 exempt biases and norms; no mask: every parameter), as ``weight_decay_kind``
    says:

    - ``"decoupled"`` (the default): after the update, theta -= lr * wd * theta
      (Loshchilov & Hutter 2019, optax.adamw's convention: the decay follows the LR schedule);
    - ``"coupled"``: wd * theta is added to the gradient first (L2; SGD, momentum, Adam).

    Optimizers whose library call applies the decay itself (optax's adamw, lamb, lars, the
    schedule-free wrappers) override :meth:`transform` instead and hand it weight_decay and
    mask, so ``weight_decay`` is honoured by every optimizer. ``weight_decay`` is an argument
    of ``transform`` (default: the key) because a rule (``scaling=timescale``) may set it per
    batch size. ``eval_params`` gives the parameters to evaluate (identity; schedule-free: its
    averaged sequence); ``check_with`` refuses settings this optimizer cannot honour.
    """
    name: str = param("momentum", help="optimizer=<name> selects the option")
    lr: float = param(0.05, gt=0, help="base LR, defined at scaling.base_batch_size")
    weight_decay: float = param(0.0, ge=0, help="on the model's decayed parameters (its mask)")
    weight_decay_kind = "decoupled"  # class attribute, not a key

    def undecayed(self, learning_rate: Any, **hyper: Any) -> optax.GradientTransformation:
        """The optax optimizer without weight decay (see the class docstring)."""
        raise NotImplementedError

    def transform(self, learning_rate: Any, mask: Any = None, weight_decay: Any = None,
                  **hyper: Any) -> optax.GradientTransformation:
        """The whole optimizer: ``undecayed`` plus weight decay on ``mask`` (None: all)."""
        wd = self.weight_decay if weight_decay is None else weight_decay
        inner = self.undecayed(learning_rate, **hyper)
        if self.weight_decay_kind == "coupled":
            return optax.chain(optax.add_decayed_weights(wd, mask), inner)
        return optax.chain(inner, optax.add_decayed_weights(-learning_rate * wd, mask))

    def eval_params(self, params: Any, opt_state: Any) -> Any:
        """The parameters to evaluate, of one replica (vmapped over replicas by the caller)."""
        return params

    def check_with(self, cfg: "Config") -> None:
        """Rules that relate this section to the rest of the config."""

    def stability_thresholds(self, lr: float) -> dict[str, float]:
        """Where full-batch training with this optimizer at LR ``lr`` turns unstable along the
        top curvature direction (Cohen et al. 2021, 2022): ``stability_threshold`` compares with
        the Hessian's top eigenvalue, ``preconditioned_stability_threshold`` with Adam's
        preconditioned sharpness. Empty where no such threshold is known (LARS, LAMB)."""
        return {}


@OPTIMIZERS.register("sgd")
@frozen
class SGDConfig(OptimizerConfig):
    """Plain SGD (no momentum), L2 weight decay added to the gradient."""
    lr: float = param(0.1, gt=0, help="base LR, defined at scaling.base_batch_size")
    weight_decay_kind = "coupled"

    def undecayed(self, learning_rate):
        return optax.sgd(learning_rate)

    def stability_thresholds(self, lr):
        return {"stability_threshold": 2.0 / lr}


@OPTIMIZERS.register("momentum")
@frozen
class MomentumConfig(OptimizerConfig):
    """Heavy-ball (or Nesterov) momentum SGD, L2 weight decay added to the gradient."""
    momentum: float = param(0.9, **_BETA)
    nesterov: bool = param(False)
    weight_decay_kind = "coupled"

    def undecayed(self, learning_rate):
        return optax.sgd(learning_rate, momentum=self.momentum, nesterov=self.nesterov)

    def stability_thresholds(self, lr):
        # heavy ball: (2 + 2 beta) / lr (Cohen et al. 2021, appendix); Nesterov's differs: not stated
        return {} if self.nesterov else {"stability_threshold": (2.0 + 2.0 * self.momentum) / lr}


@frozen
class AdamFamily(OptimizerConfig):
    """Adam-type optimizers: b1, b2 and eps can follow the batch size (``beta*_half_life``,
    ``scaling=sde``); the values used are injected per batch size (``adaptive_hyperparams``)."""
    lr: float = param(0.001, gt=0, help="base LR, defined at scaling.base_batch_size")
    b1: float = param(0.9, **_BETA)
    b2: float = param(0.999, **_BETA)
    eps: float = param(1e-8, gt=0)
    beta1_half_life: float | None = param(
        None, gt=0, help="b1 = 0.5 ** (tokens per step / this), in tokens (examples for classifiers)")
    beta2_half_life: float | None = param(
        None, gt=0, help="b2 = 0.5 ** (tokens per step / this) (Marek et al. 2025)")

    def stability_thresholds(self, lr, b1=None):
        # Adam: the preconditioned sharpness equilibrates at (2 + 2 b1) / ((1 - b1) lr), 38 / lr
        # for b1 = 0.9 (Cohen et al. 2022, arXiv:2207.14484)
        b1 = self.b1 if b1 is None else b1
        return {"preconditioned_stability_threshold": (2.0 + 2.0 * b1) / ((1.0 - b1) * lr)}


@OPTIMIZERS.register("adam")
@frozen
class AdamConfig(AdamFamily):
    """Adam with L2 weight decay added to the gradient (coupled)."""
    weight_decay_kind = "coupled"

    def undecayed(self, learning_rate, b1=None, b2=None, eps=None):
        return optax.adam(learning_rate, *_betas(self, b1, b2, eps))


@OPTIMIZERS.register("adamw")
@frozen
class AdamWConfig(AdamFamily):
    """AdamW (decoupled weight decay, Loshchilov & Hutter 2019): optax.adamw."""
    weight_decay: float = param(1e-4, ge=0, help="on the model's decayed parameters (its mask)")

    def transform(self, learning_rate, mask=None, weight_decay=None, b1=None, b2=None, eps=None):
        b1, b2, eps = _betas(self, b1, b2, eps)
        return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, mask=mask,
                           weight_decay=self.weight_decay if weight_decay is None else weight_decay)


@OPTIMIZERS.register("lamb")
@frozen
class LambConfig(AdamFamily):
    """LAMB (You et al. 2019): the decay enters before the layer-wise trust ratio."""
    lr: float = param(0.002, gt=0, help="base LR, defined at scaling.base_batch_size")
    weight_decay: float = param(1e-4, ge=0, help="on the model's decayed parameters (its mask)")
    weight_decay_kind = "trust_ratio"

    def transform(self, learning_rate, mask=None, weight_decay=None, b1=None, b2=None, eps=None):
        b1, b2, eps = _betas(self, b1, b2, eps)
        return optax.lamb(learning_rate, b1=b1, b2=b2, eps=eps, mask=mask,
                          weight_decay=self.weight_decay if weight_decay is None else weight_decay)


@OPTIMIZERS.register("lars")
@frozen
class LarsConfig(OptimizerConfig):
    """LARS (You et al. 2017): the decay enters before the layer-wise trust ratio."""
    lr: float = param(1.0, gt=0, help="base LR, defined at scaling.base_batch_size")
    weight_decay: float = param(1e-4, ge=0, help="on the model's decayed parameters (its mask)")
    momentum: float = param(0.9, **_BETA)
    nesterov: bool = param(False)
    trust_coefficient: float = param(0.001, gt=0)
    weight_decay_kind = "trust_ratio"

    def transform(self, learning_rate, mask=None, weight_decay=None):
        return optax.lars(learning_rate, trust_coefficient=self.trust_coefficient,
                          weight_decay=self.weight_decay if weight_decay is None else weight_decay,
                          momentum=self.momentum, nesterov=self.nesterov,
                          weight_decay_mask=True if mask is None else mask)


def _betas(cfg: AdamFamily, b1: Any, b2: Any, eps: Any) -> tuple[Any, Any, Any]:
    return (cfg.b1 if b1 is None else b1, cfg.b2 if b2 is None else b2,
            cfg.eps if eps is None else eps)


def make_optimizer(cfg: OptimizerConfig, *, mask: Any = None,
                   injected: dict[str, float] | None = None) -> optax.GradientTransformation:
    """``cfg.transform`` with its LR injected (placeholder 1.0; the train step sets it every
    step) and the ``injected`` hyperparameters (b1, b2, eps, weight_decay) that the train step
    sets per batch size; ``mask``: the model's weight-decay mask (None: every parameter)."""
    injected = dict(injected or {})

    def factory(**kwargs: Any) -> optax.GradientTransformation:
        return cfg.transform(**kwargs)
    # inject_hyperparams reads the factory's signature: name exactly the arguments passed
    factory.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None)
         for n in ("learning_rate", "mask", *injected)])
    # the mask is a function of the params: static (inject_hyperparams takes callables for schedules)
    return optax.inject_hyperparams(factory, static_args=("mask",))(
        learning_rate=1.0, mask=mask, **injected)


def evaluation_params(opt: OptimizerConfig, params: Any, opt_state: Any) -> Any:
    """``opt.eval_params`` of every replica (params and state stacked over replicas); the
    params themselves, untouched, for optimizers that evaluate their iterate."""
    if type(opt).eval_params is OptimizerConfig.eval_params:
        return params
    return jax.vmap(opt.eval_params)(params, opt_state)


def decoupled_optimizers() -> list[str]:
    """Optimizers whose weight decay is decoupled (what scaling=timescale needs)."""
    return [n for n in OPTIMIZERS.names if OPTIMIZERS.create(n).weight_decay_kind == "decoupled"]


# Muon and the schedule-free optimizers register into OPTIMIZERS (they import this module).
from bench import optim_contrib  # noqa: E402,F401
