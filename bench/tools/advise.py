"""Which batch size and learning rate to use: ``python -m bench.tools.advise``.

    python -m bench.tools.advise                                     # default CNN on MNIST-1D (profiles, measures)
    python -m bench.tools.advise model=resnet dataset=cifar10 --profile outputs/profile/cifar10-resnet \\
        --memory-gb 16 --noise-steps 500 --out outputs/advice/cifar10-resnet

Three limits, each from a measurement, bound the useful batch size:

1. **Memory** (``bench.tools.profile``): the largest profiled B whose compiled peak memory fits the
   budget (``--memory-gb``). A larger B does not fit (gradient accumulation can emulate it,
   but buys no speed: the step time grows with it).
2. **Gradient noise scale** B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018, measured with
   the two-batch estimator of ``bench.metrics.noise_scale``), the estimate of the critical batch
   size. Their model: steps S = S_min (1 + B_noise / B) and examples E = E_min (1 + B / B_noise).
   Well below B_noise doubling B halves the steps (perfect scaling); above it, steps barely fall
   while examples (compute) grow. At B = B_noise both are twice their minimum: the compromise
   the paper recommends.
3. **Throughput** (``bench.tools.profile``): the saturation batch size, the smallest B reaching 90% of
   the best examples/s. Beyond it a step costs proportionally more time, so a larger B cannot
   shorten an epoch; it only trades steps for examples.

Recommended B = the largest profiled B not above min(memory, noise-scale, throughput limits);
the smallest limit is the *binding* one. Learning rate, from ``optimizer.lr`` defined at
``scaling.base_batch_size``: linear scaling up to B_noise (Goyal et al. 2017; McCandlish's optimal
SGD step eps_opt(B) = eps_max / (1 + B_noise / B) is linear in B for B << B_noise), square-root
scaling beyond it (Hoffer et al. 2017; the linear rule fails there), with Goyal's 5-epoch gradual
warmup whenever the LR is scaled up. ``--rule`` picks linear, sqrt or McCandlish's formula instead.

:func:`recommend` holds the whole decision and is pure (constructed inputs in tests). The CLI
reads a profile (``--profile DIR`` from ``bench.tools.profile``) or runs one, takes B_noise from
``--noise-scale``, from a run record (``--record``, last ``noise_scale_simple_ema``), or measures
it: trains the configured job ``--noise-steps`` steps at its own batch size (B_noise grows as
training proceeds; at initialization it is an underestimate), then averages |G|^2 and tr(Sigma)
over ``--noise-draws`` two-batch estimates before dividing (numerator and denominator smoothed
separately, as the paper advises). It prints the interval it used with what that interval
averages over (the draws; for a record, the smoothed measurements). Writes ``advice.json`` and
``advice.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bench.config import Config, ConfigError
from bench.hydra_conf import compose_config
from bench.tools.profile import (DEFAULT_BATCH_SIZES, GIB, fit_line, saturation_batch_size,
                           split_overrides)

RULES = ("linear-sqrt", "linear", "sqrt", "mccandlish")
SOURCES = {
    "mccandlish": "McCandlish et al. 2018, An Empirical Model of Large-Batch Training (arXiv:1812.06162)",
    "goyal": "Goyal et al. 2017, Accurate, Large Minibatch SGD (arXiv:1706.02677)",
    "hoffer": "Hoffer et al. 2017, Train longer, generalize better (arXiv:1705.08741)",
    "shallue": "Shallue et al. 2019, Measuring the Effects of Data Parallelism (JMLR 20(112))",
}
GOYAL_WARMUP_EPOCHS = 5.0


@dataclass(frozen=True)
class Recommendation:
    batch_size: int
    lr: float
    binding: str                       # memory | noise_scale | throughput
    limits: dict[str, float | None]    # each limit's batch size (None: not constraining / unknown)
    rule: str
    lr_factor: float                   # lr / base_lr
    base_lr: float
    base_batch_size: int
    noise_scale: float | None
    warmup_epochs: float
    predicted: dict[str, float | None] = field(default_factory=dict)
    explanation: str = ""
    sources: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------- pure decision


def lr_factor(batch_size: float, base_batch_size: float, noise_scale: float | None,
              rule: str = "linear-sqrt") -> float:
    """lr(B) / lr(B_base) under a scaling rule (see the module docstring)."""
    b, b0 = float(batch_size), float(base_batch_size)
    if rule == "linear" or (rule == "linear-sqrt" and noise_scale is None):
        return b / b0
    if rule == "sqrt":
        return math.sqrt(b / b0)
    if noise_scale is None or noise_scale <= 0:
        raise ValueError(f"rule {rule!r} needs a positive noise scale, got {noise_scale}")
    if rule == "linear-sqrt":
        shape = lambda x: x if x <= noise_scale else noise_scale * math.sqrt(x / noise_scale)
        return shape(b) / shape(b0)
    if rule == "mccandlish":   # eps_opt(B) = eps_max / (1 + B_noise / B)
        return (1 + noise_scale / b0) / (1 + noise_scale / b)
    raise ValueError(f"unknown rule {rule!r}; valid: {', '.join(RULES)}")


def _rows(table) -> list[dict[str, Any]]:
    rows = table.to_dict("records") if hasattr(table, "to_dict") else [dict(r) for r in table]
    if not rows:
        raise ValueError("the profile table is empty")
    return sorted(rows, key=lambda r: r["batch_size"])


def recommend(profile_table, noise_scale: float | None, memory_budget_bytes: float | None,
              base_lr: float, base_batch_size: int, *, saturation: float = 0.9,
              rule: str = "linear-sqrt", warmup_epochs: float = GOYAL_WARMUP_EPOCHS) -> Recommendation:
    """The batch size and LR the three limits imply (pure; see the module docstring).

    ``profile_table``: rows with batch_size, peak_memory_bytes, step_seconds and
    examples_per_second (a DataFrame from bench.tools.profile or a list of dicts). ``noise_scale``:
    B_simple (None: unknown, no noise limit). ``memory_budget_bytes``: None for no budget.
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; valid: {', '.join(RULES)}")
    rows = _rows(profile_table)
    sizes = [int(r["batch_size"]) for r in rows]
    fitting = [r for r in rows if memory_budget_bytes is None or r["peak_memory_bytes"] <= memory_budget_bytes]
    if not fitting:
        smallest = rows[0]
        raise ValueError(
            f"no profiled batch size fits {memory_budget_bytes / GIB:.3g} GiB: B={smallest['batch_size']} "
            f"needs {smallest['peak_memory_bytes'] / GIB:.3g} GiB; profile smaller B or use accumulate=")
    limits: dict[str, float | None] = {
        "memory": float(max(int(r["batch_size"]) for r in fitting)) if memory_budget_bytes is not None else None,
        "noise_scale": float(noise_scale) if noise_scale is not None and noise_scale > 0 else None,
        "throughput": float(saturation_batch_size(sizes, [r["examples_per_second"] for r in rows], saturation)),
    }
    active = {k: v for k, v in limits.items() if v is not None}
    binding = min(active, key=lambda k: (active[k], list(limits).index(k)))
    cap = active[binding]
    allowed = [int(r["batch_size"]) for r in fitting if r["batch_size"] <= cap]
    chosen = max(allowed) if allowed else int(fitting[0]["batch_size"])
    factor = lr_factor(chosen, base_batch_size, limits["noise_scale"], rule)
    lr = base_lr * factor
    warm = warmup_epochs if factor > 1.0 + 1e-9 else 0.0

    row = next(r for r in rows if int(r["batch_size"]) == chosen)
    tfit = fit_line(sizes, [r["step_seconds"] for r in rows])
    bn = limits["noise_scale"]
    predicted: dict[str, float | None] = {
        "step_seconds": float(row["step_seconds"]),
        "examples_per_second": float(row["examples_per_second"]),
        "peak_memory_bytes": float(row["peak_memory_bytes"]),
        "steps_over_min": 1 + bn / chosen if bn else None,          # S / S_min = 1 + B_noise / B
        "examples_over_min": 1 + chosen / bn if bn else None,       # E / E_min = 1 + B / B_noise
        # minimizes S(B) * (c + d B): B* = sqrt(B_noise * c / d)
        "time_optimal_batch_size": (math.sqrt(bn * tfit["intercept"] / tfit["slope"])
                                    if bn and tfit["slope"] > 0 and tfit["intercept"] > 0 else None),
        "mccandlish_lr": base_lr * lr_factor(chosen, base_batch_size, bn, "mccandlish") if bn else None,
    }
    rec = Recommendation(
        batch_size=chosen, lr=lr, binding=binding, limits=limits, rule=rule, lr_factor=factor,
        base_lr=float(base_lr), base_batch_size=int(base_batch_size), noise_scale=bn,
        warmup_epochs=warm, predicted=predicted,
        sources=tuple(SOURCES[k] for k in ("mccandlish", "goyal", "hoffer", "shallue")))
    return dataclasses.replace(rec, explanation=explain(rec, allowed_exists=bool(allowed),
                                                        saturation=saturation))


def explain(rec: Recommendation, *, allowed_exists: bool = True, saturation: float = 0.9) -> str:
    """Plain-language reasoning for a recommendation."""
    lim, p = rec.limits, rec.predicted
    fmt = lambda v: "-" if v is None else f"{v:.0f}"
    why = {
        "memory": "it is the largest profiled batch that fits the memory budget",
        "noise_scale": (f"beyond the gradient noise scale (B_simple ~ {fmt(lim['noise_scale'])}) a larger batch "
                        "barely reduces the number of steps but multiplies the examples (compute) needed"),
        "throughput": (f"examples/s already reach {saturation:.0%} of the best at this size; a larger batch makes "
                       "each step proportionally slower, so it cannot shorten an epoch"),
    }[rec.binding]
    lines = [
        f"Use batch size {rec.batch_size} with learning rate {rec.lr:.4g}.",
        f"Limits: memory {fmt(lim['memory'])}, gradient noise scale {fmt(lim['noise_scale'])}, "
        f"throughput saturation {fmt(lim['throughput'])} -> the {rec.binding.replace('_', ' ')} limit binds: {why}.",
    ]
    if not allowed_exists:
        lines.append(f"No profiled batch size lies below that limit; {rec.batch_size} is the smallest profiled one.")
    rule_text = {
        "linear-sqrt": ("linear scaling up to the noise scale (Goyal et al. 2017), square-root scaling beyond it "
                        "(Hoffer et al. 2017)" if rec.noise_scale else
                        "linear scaling (Goyal et al. 2017; no noise scale measured, so no square-root regime)"),
        "linear": "linear scaling (Goyal et al. 2017)",
        "sqrt": "square-root scaling (Hoffer et al. 2017)",
        "mccandlish": "McCandlish et al.'s optimal SGD step eps(B) = eps_max / (1 + B_noise / B)",
    }[rec.rule]
    lines.append(f"Learning rate: {rec.base_lr:.4g} at B={rec.base_batch_size} x {rec.lr_factor:.4g} by {rule_text}.")
    if rec.warmup_epochs:
        lines.append(f"Warm the LR up gradually over the first {rec.warmup_epochs:g} epochs (Goyal et al. ramp "
                     f"from the unscaled LR: schedule=goyal_warmup; or schedule.warmup_epochs={rec.warmup_epochs:g},"
                     f" a ramp from zero).")
    if p.get("steps_over_min"):
        lines.append(f"McCandlish et al.'s model predicts {p['steps_over_min']:.2f}x the minimum number of steps and "
                     f"{p['examples_over_min']:.2f}x the minimum number of examples at this batch size.")
    if p.get("time_optimal_batch_size"):
        lines.append(f"With the measured step time (c + d B), the wall-clock optimum of that model is "
                     f"B ~ {p['time_optimal_batch_size']:.0f}.")
    if rec.noise_scale:
        lines.append("The noise scale grows as the loss falls: measure it again later in training (or use "
                     "batch_schedule=increase) before raising B.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- noise scale


def measure_noise_scale(cfg: Config, *, data=None, train_steps: int = 200, draws: int = 8,
                        small_batch: int | None = None, num_small: int | None = None,
                        seed: int = 0) -> dict[str, float]:
    """B_simple of the configured job after ``train_steps`` steps (replica 0, eval-mode loss).

    Uses :func:`bench.metrics.noise_scale.gradient_noise_scale`; |G|^2 and tr(Sigma) are averaged
    over ``draws`` independent estimates before dividing.
    """
    import jax

    from bench.config import ReplicasConfig
    from bench.rules.batch_schedules import BATCH_SCHEDULES
    from bench.core.job import Job
    from bench.metrics.noise_scale import gradient_noise_scale

    cfg = dataclasses.replace(cfg, replicas=ReplicasConfig(), batch_schedule=BATCH_SCHEDULES.create("constant"),
                              metrics=dataclasses.replace(cfg.metrics, hessian=False),
                              budget=f"{max(train_steps, 1)}steps", progress=False)
    job = Job(cfg, data)
    state = job.init_state()
    step = 0
    while step < train_steps:
        count = min(cfg.steps_per_call, train_steps - step)
        state, _ = job.train(state, step, count)
        step += count
    params = jax.tree.map(lambda a: a[0], state.params)
    stats = jax.tree.map(lambda a: a[0], state.stats)
    loss_fn = job.fns.eval_loss_fn(stats)
    batch = {"x": job.x_train, "y": job.y_train}
    small = small_batch or cfg.metrics.noise_small_batch
    num = num_small or cfg.metrics.noise_num_small
    num = min(num, job.data.num_train // small)
    from bench.metrics.noise_scale import summarize

    g2, tr = [], []
    for i in range(draws):
        est = gradient_noise_scale(loss_fn, params, batch, jax.random.PRNGKey(seed * 1000 + i),
                                   small_batch=small, num_small=num)
        g2.append(float(est.grad_norm_sq))
        tr.append(float(est.trace_sigma))
    s = summarize(g2, tr)
    return {"b_simple": s.b_simple if s.grad_norm_sq > 0 else math.inf, "grad_norm_sq": s.grad_norm_sq,
            "trace_sigma": s.trace_sigma, "b_simple_stderr": s.b_simple_stderr,
            "b_simple_interval": list(s.interval()), "interval": _INTERVAL.format(draws=draws),
            "draws": draws, "small_batch": small, "num_small": num,
            "train_steps": train_steps, "batch_size": cfg.batch_size,
            "per_draw_b_simple": [t / g if g else math.nan for g, t in zip(g2, tr)]}


_INTERVAL = ("95%, delta method on the ratio of the means over {draws} independent two-batch "
             "draws (Student-t, draws - 1 dof)")


def noise_scale_from_record(path: Path | str) -> float | None:
    """The last ``noise_scale_simple_ema`` (else ``noise_scale_simple``) in a run record's history."""
    return noise_scale_estimate_from_record(path)["b_simple"]


def noise_scale_estimate_from_record(path: Path | str) -> dict[str, Any]:
    """The last smoothed B_simple of a run record (else the last raw one) with its interval and
    what that interval averages over."""
    record = json.loads(Path(path).read_text())
    for key in ("noise_scale_simple_ema", "noise_scale_simple"):
        rows = [row for row in record.get("history", []) if row.get(key) is not None]
        if rows:
            row = rows[-1]
            over = (f"smoothed over {row.get('noise_ema_measurements', 1):.3g} effective measurements "
                    f"(mean age {row.get('noise_ema_lag', 0):.3g})" if key.endswith("_ema") else "one measurement")
            return {"b_simple": float(row[key]), "b_simple_interval": row.get(f"{key}_interval"),
                    "interval": f"95%, {over}, from the record's draws at step {row['step']}", "key": key}
    return {"b_simple": None, "b_simple_interval": None, "interval": None, "key": None}


# ---------------------------------------------------------------------------- figure and CLI


def figure(profile_table, rec: Recommendation, title: str = ""):
    from matplotlib.figure import Figure

    rows = _rows(profile_table)
    b = np.array([r["batch_size"] for r in rows], float)
    fig = Figure(figsize=(11, 4), constrained_layout=True)
    ax_t, ax_m = fig.subplots(1, 2)
    ax_t.plot(b, [r["examples_per_second"] for r in rows], "o-", label="examples/s (profile)")
    colors = {"memory": "r", "noise_scale": "purple", "throughput": "g"}
    for name, value in rec.limits.items():
        if value is not None:
            ax_t.axvline(value, color=colors[name], ls="--", label=f"{name.replace('_', ' ')} limit {value:.0f}")
    ax_t.axvline(rec.batch_size, color="k", lw=2, alpha=0.4, label=f"recommended B={rec.batch_size}")
    ax_t.set(xscale="log", xlabel="batch size B", ylabel="examples / s", title="limits on B")
    ax_t.set_xscale("log", base=2)
    ax_t.set_ylim(bottom=0)
    ax_t.legend(fontsize=8)
    bn = rec.noise_scale
    if bn:
        grid = np.geomspace(min(b.min(), bn / 8), max(b.max(), bn * 8), 200)
        steps = 1 + bn / grid
        examples = 1 + grid / bn
        tfit = fit_line(b, [r["step_seconds"] for r in rows])
        ax_m.plot(grid, steps, label="steps / S_min = 1 + B_noise/B")
        ax_m.plot(grid, examples, label="examples / E_min = 1 + B/B_noise")
        step_time = tfit["intercept"] + tfit["slope"] * grid
        if np.all(step_time > 0):
            wall = steps * step_time
            ax_m.plot(grid, wall / wall.min(), label="time / min (with step-time fit)")
        ax_m.axvline(bn, color="purple", ls="--")
        ax_m.axvline(rec.batch_size, color="k", lw=2, alpha=0.4)
        ax_m.set(xscale="log", yscale="log", xlabel="batch size B", ylabel="relative cost",
                 title="McCandlish et al. 2018 model")
        ax_m.legend(fontsize=8)
    else:
        ax_m.text(0.5, 0.5, "no noise scale measured", ha="center", va="center", transform=ax_m.transAxes)
        ax_m.set_axis_off()
    if title:
        fig.suptitle(title)
    return fig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.tools.advise", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides (as for bench.train); batch_sizes=[...] to profile")
    p.add_argument("--profile", default=None, help="directory with profile.csv from bench.tools.profile (else profiled now)")
    p.add_argument("--memory-gb", type=float, default=None, help="memory budget in GiB (2**30 bytes)")
    p.add_argument("--noise-scale", type=float, default=None, help="known B_simple (skips the measurement)")
    p.add_argument("--record", default=None, help="run record with noise_scale_simple_ema in its history")
    p.add_argument("--noise-steps", type=int, default=200, help="training steps before measuring B_simple")
    p.add_argument("--noise-draws", type=int, default=8, help="two-batch estimates averaged")
    p.add_argument("--rule", choices=RULES, default="linear-sqrt", help="LR scaling rule")
    p.add_argument("--saturation", type=float, default=0.9, help="throughput fraction defining saturation")
    p.add_argument("--out", default=None, help="output directory (default outputs/advice/<dataset>-<model>)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import pandas as pd

    from bench.tools import profile as prof

    args = build_parser().parse_args(argv)
    try:
        overrides, sizes = split_overrides(args.overrides)
        cfg = compose_config(overrides)
        budget = args.memory_gb * GIB if args.memory_gb is not None else None
        if args.profile:
            table = pd.read_csv(Path(args.profile) / "profile.csv")
            print(f"profile: {Path(args.profile) / 'profile.csv'} ({len(table)} batch sizes)")
        else:
            print("profiling (bench.tools.profile) ...")
            table, _ = prof.profile(cfg, sizes or DEFAULT_BATCH_SIZES, steps=3, repeats=3,
                                    memory_budget_bytes=budget)
        noise: dict[str, Any]
        if args.noise_scale is not None:
            noise = {"b_simple": args.noise_scale, "source": "--noise-scale"}
        elif args.record:
            noise = {**noise_scale_estimate_from_record(args.record), "source": args.record}
        else:
            print(f"measuring the gradient noise scale after {args.noise_steps} steps at B={cfg.batch_size} ...")
            noise = measure_noise_scale(cfg, train_steps=args.noise_steps, draws=args.noise_draws)
            noise["source"] = "measured"
        rec = recommend(table, noise["b_simple"], budget, cfg.optimizer.lr, cfg.scaling.base_batch_size,
                        saturation=args.saturation, rule=args.rule)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out or f"outputs/advice/{cfg.dataset.name}-{cfg.model.name}")
    out.mkdir(parents=True, exist_ok=True)
    result = {"recommendation": rec.as_dict(), "noise_scale": noise, "overrides": overrides,
              "profile": table.to_dict("records")}
    (out / "advice.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    figure(table, rec, f"{cfg.model.name} on {cfg.dataset.name}").savefig(out / "advice.png", dpi=120)
    print(rec.explanation)
    if noise.get("interval"):
        lo, hi = noise.get("b_simple_interval") or (None, None)
        shown = "unknown" if lo is None or hi is None or math.isnan(lo) else f"[{lo:.4g}, {hi:.4g}]"
        print(f"B_simple = {noise['b_simple']:.4g}, interval {shown} ({noise['interval']})")
    print("train with: python -m bench.train " + " ".join(
        [*overrides, f"batch_size={rec.batch_size}", f"optimizer.lr={rec.lr:.4g}", "scaling=none"]
        + ([f"schedule.warmup_epochs={rec.warmup_epochs:g}"] if rec.warmup_epochs else [])))
    print(f"wrote {out / 'advice.json'}, {out / 'advice.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
