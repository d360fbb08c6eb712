"""Checks of the configuration against the data's metadata (shapes, classes, split sizes):
a model that cannot take the data, sizes larger than the data, a plan that trains nothing or
whose keys never apply, measurements that cannot be drawn."""

from __future__ import annotations

import math
from typing import Any

from bench.preflight import Check, Context
from bench.schema import ConfigError

IMAGE_MODELS = ("resnet", "resnet50")     # [H, W, C] inputs only
LANGUAGE_MODELS = ("transformer",)        # token sequences only


def _shape(ctx: Context) -> str:
    return f"{ctx.data.name} inputs {list(ctx.data.input_shape)}"


def num_train_within_data(ctx: Context) -> None:
    n, cut = ctx.data.num_train, ctx.cfg.dataset.num_train
    if n is not None and cut is not None and cut > n:
        raise ConfigError(f"dataset.num_train={cut} is larger than the training set of "
                          f"dataset={ctx.cfg.dataset.name} ({n} examples); use at most {n} or null")


def train_examples_within_data(ctx: Context) -> None:
    n, k = ctx.num_train, ctx.cfg.eval.train_examples
    if n is not None and k is not None and k > n:
        raise ConfigError(f"eval.train_examples={k} is larger than the training set ({n} examples);"
                          f" use at most {n} or null (all of them)")


def model_takes_data(ctx: Context) -> None:
    name, data = ctx.cfg.model.name, ctx.data
    language = data.tokens_per_example is not None
    if language and name not in LANGUAGE_MODELS:
        raise ConfigError(f"model={name} cannot take token sequences ({_shape(ctx)}); use "
                          f"model={'|'.join(LANGUAGE_MODELS)} for dataset={ctx.cfg.dataset.name}")
    if not language and name in LANGUAGE_MODELS:
        raise ConfigError(f"model={name} needs token sequences, dataset={ctx.cfg.dataset.name} is "
                          f"classification ({_shape(ctx)}); use a language dataset "
                          f"(pydoc, markov, lm1b, tokens) or another model")
    if name in IMAGE_MODELS and len(data.input_shape) != 3:
        raise ConfigError(f"model={name} needs images [H, W, C], got {_shape(ctx)}; use model=cnn "
                          f"or model=mlp, or an image dataset (digits, mnist, cifar10, ...)")
    if name == "cnn" and len(data.input_shape) not in (2, 3):
        raise ConfigError(f"model=cnn needs [L, C] sequences or [H, W, C] images, got {_shape(ctx)};"
                          f" use model=mlp")


def _windows_fit(m: Any, keys: tuple[str, str], size: int, where: str, fix: str) -> None:
    """Each of ``model.<key>`` (a window and its stride) at most ``size``, the input's width."""
    for key in keys:
        if getattr(m, key) > size:
            raise ConfigError(f"model.{key}={getattr(m, key)} is larger than the input of {where} "
                              f"({size} wide); use at most {size}, {fix}")


def cnn_fits_input(ctx: Context) -> None:
    """Each conv's kernel and stride, and each pool's window and stride, within its input."""
    m = ctx.cfg.model
    if m.name != "cnn" or len(ctx.data.input_shape) not in (2, 3):
        return
    size = min(ctx.data.input_shape[:-1])
    for layer in range(len(m.channels)):
        _windows_fit(m, ("kernel_size", "conv_stride"), size, f"conv {layer + 1} of {_shape(ctx)}",
                     "or fewer model.channels")
        size = math.ceil(size / m.conv_stride)
        if m.pool_size:
            _windows_fit(m, ("pool_size", "pool_stride"), size, f"pool {layer + 1}",
                         "model.pool_size=0 or fewer model.channels")
            size = math.ceil(size / m.pool_stride)


def augment_needs_images(ctx: Context) -> None:
    augment = getattr(ctx.cfg.dataset, "augment", "none")
    if augment != "none" and len(ctx.data.input_shape) != 3:
        raise ConfigError(f"dataset.augment={augment} crops and flips images [H, W, C], got "
                          f"{_shape(ctx)}; use dataset.augment=none")


def loss_fits_task(ctx: Context) -> None:
    if ctx.cfg.loss == "mse" and ctx.data.tokens_per_example is not None:
        raise ConfigError(f"loss=mse regresses one-hot labels of a classifier; a language model "
                          f"(dataset={ctx.cfg.dataset.name}) trains with loss=cross_entropy")


def plan_fits_data(ctx: Context) -> None:
    """make_plan's own checks (B above the training set, LR warmup longer than training)."""
    ctx.plan  # noqa: B018 -- building it raises


def budget_at_least_one_step(ctx: Context) -> None:
    plan = ctx.plan
    if plan is None:
        return
    from bench.rules.plan import parse_budget

    value, unit = parse_budget(ctx.cfg.budget)
    one = {"steps": 1, "examples": plan.examples(1), "epochs": plan.epoch(1),
           "tokens": plan.tokens(1)}[unit]
    if one is not None and value < one * (1 - 1e-9):
        raise ConfigError(f"budget={ctx.cfg.budget} is less than one training step ({one:g} {unit} "
                          f"at batch_size={plan.batch_size(0)}); use at least {one:g}{unit}")


def batch_warmup_within_training(ctx: Context) -> None:
    plan = ctx.plan
    if plan is None or len(plan.stages) < 2 or ctx.cfg.batch_schedule.name != "warmup":
        return
    last = plan.steps_to_epoch(float(plan.stages[-1][0]))
    if last >= plan.total_steps:
        raise ConfigError(f"batch_schedule.warmup_epochs={ctx.cfg.batch_schedule.warmup_epochs} "
                          f"({last} steps) is not shorter than training ({plan.total_steps} steps, "
                          f"budget={ctx.cfg.budget}); shorten the warmup or lengthen the budget")


def eval_cadence_in_plan(ctx: Context) -> None:
    at, plan = ctx.cfg.eval.every_steps_at, ctx.plan
    if not at or plan is None:
        return
    sizes = plan.sizes()
    if not set(at) & set(sizes):  # a preset's map may cover every B of its sweep, not one job's
        raise ConfigError(f"eval.every_steps_at has no effect: none of its batch sizes "
                          f"({', '.join(map(str, sorted(at)))}) is one the run trains at "
                          f"({', '.join(map(str, sizes))})")


def noise_batches_drawable(ctx: Context) -> None:
    m = ctx.cfg.metrics
    if not (m.hessian and getattr(m, "noise_scale", False)) or ctx.num_train is None:
        return
    pool = ctx.num_train
    if ctx.data.streamed:
        pool = min(pool, m.subset_size or pool)
    need = m.noise_small_batch * m.noise_num_small
    if need > pool:
        raise ConfigError(f"metrics.noise_small_batch={m.noise_small_batch} x metrics.noise_num_small="
                          f"{m.noise_num_small} = {need} examples, more than the {pool} the noise "
                          f"scale draws from; use metrics.noise_small_batch <= {pool // m.noise_num_small}")


def top_k_below_parameters(ctx: Context) -> None:
    m = ctx.cfg.metrics
    if not m.hessian:
        return
    n = num_params(ctx)
    for key in ("top_k", "lanczos_iters"):
        if getattr(m, key, 0) >= n:
            raise ConfigError(f"metrics.{key}={getattr(m, key)} is not below the model's parameter "
                              f"count ({n}); use at most {n - 1}")


def num_params(ctx: Context) -> int:
    """The model's parameter count from its shapes (traced, nothing computed or compiled)."""
    import jax
    from flax import nnx

    abstract = nnx.eval_shape(lambda: ctx.cfg.model.build(
        ctx.data.input_shape, ctx.data.num_classes, nnx.Rngs(0)))
    return int(sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(abstract, nnx.Param))))


CHECKS: list[Check] = [
    num_train_within_data, train_examples_within_data, model_takes_data, cnn_fits_input,
    augment_needs_images, loss_fits_task, plan_fits_data, budget_at_least_one_step,
    batch_warmup_within_training, eval_cadence_in_plan, noise_batches_drawable,
    top_k_below_parameters,
]
