"""Memory and throughput of the training step vs batch size: ``python -m bench.tools.profile``.

    python -m bench.tools.profile                                   # default CNN on MNIST-1D, B = 32..1024
    python -m bench.tools.profile model=resnet dataset=cifar10 batch_sizes=[32,64,128,256,512,1024,2048,4096] \\
        --memory-gb 16 --out outputs/profile/cifar10-resnet

Positional arguments are Hydra overrides composed with ``conf/`` exactly as for
``python -m bench.train`` (``model=...``, ``accumulate=8``, ``model.batch_norm=true``, ...), plus
``batch_sizes=[...]`` (the list to profile; a B above the training-set size is replaced by the
full batch N). Options: ``--memory-gb`` (budget, GiB = 2**30 bytes), ``--out`` (output dir),
``--steps`` (fused steps per timed call), ``--warmup`` and ``--repeats`` (timed calls),
``--saturation`` (throughput fraction, default 0.9).

For each B the program builds the job's own training call through :class:`bench.core.job.Job`
(same model, optimizer, sharding and ``lax.scan``-fused steps as training; no second step
implementation), compiles it ahead of time and measures

- ``peak_memory_bytes`` from XLA's memory analysis of the compiled call
  (``compiled.memory_analysis()``): ``argument_size + output_size - alias_size + temp_size``.
  Arguments (train state, the device-resident training set, batch indices) and outputs are
  live at once during the call, except outputs that reuse a donated argument's buffer (the
  train state is donated: ``alias_size``); ``temp_size`` is XLA's buffer assignment for every
  intermediate (activations kept for the backward pass, gradients, optimizer temporaries), which
  is what grows with B. The generated code size is left out (not data). The backend's own
  ``peak_memory_in_bytes`` is stored as ``xla_peak_memory_bytes`` for reference only: on the CPU
  backend it leaves out the temporaries. The fixed terms (parameters, optimizer state and the
  dataset) make the intercept ``a`` of ``memory = a + b * B``.
- ``step_seconds``: the median over ``repeats`` timed calls (after ``warmup`` untimed calls) of
  the call's wall time, ending with ``jax.block_until_ready``, divided by the steps per call;
  ``examples_per_second = B / step_seconds``.

Fits (least squares, with R^2): ``memory = a + b * B`` and ``time = c + d * B``. Derived:
the largest profiled B whose peak memory fits the budget (and the fit's ``(budget - a) / b``),
and the throughput saturation batch size, defined as the smallest profiled B whose
examples/s reaches ``saturation`` (0.9) x the largest measured examples/s (the time fit's
counterpart: B/(c + d B) reaches 0.9 of its asymptote 1/d at B = 9 c / d).

Writes ``profile.csv`` (batch_size, peak_memory_bytes, step_seconds, examples_per_second, then
extra columns), ``profile.json`` (fits and derived numbers) and ``profile.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from bench.config import Config, ConfigError
from bench.hydra_conf import compose_config
COLUMNS = ("batch_size", "peak_memory_bytes", "step_seconds", "examples_per_second")
DEFAULT_BATCH_SIZES = (32, 64, 128, 256, 512, 1024)
GIB = 2**30


# ---------------------------------------------------------------------------- config


def parse_batch_sizes(text: str) -> list[int]:
    """'[32,64,128]' or '32,64,128' -> [32, 64, 128]."""
    text = text.strip().strip("[]")
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"batch_sizes={text!r} must be a list of integers, like [32,64,128]") from None
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"batch_sizes={text!r} must be a non-empty list of integers >= 1")
    return sizes


def profiling_config(cfg: Config, batch_size: int) -> Config:
    """The job config for one profiled B: constant B, a budget long enough for any schedule."""
    from bench.rules.batch_schedules import BATCH_SCHEDULES

    return dataclasses.replace(cfg, batch_size=int(batch_size), budget="1000000000steps",
                               batch_schedule=BATCH_SCHEDULES.create("constant"), progress=False)


def effective_batch_sizes(batch_sizes: Iterable[int], num_train: int) -> list[int]:
    """Sorted, unique; a B above the training-set size becomes the full batch N."""
    return sorted({min(int(b), num_train) for b in batch_sizes})


# ---------------------------------------------------------------------------- measurement


def memory_stats(compiled: Any) -> dict[str, int]:
    """Byte counts from ``compiled.memory_analysis()``; ``peak_memory_bytes`` as documented above."""
    m = compiled.memory_analysis()
    out = {"argument_bytes": int(m.argument_size_in_bytes), "output_bytes": int(m.output_size_in_bytes),
           "alias_bytes": int(m.alias_size_in_bytes), "temp_bytes": int(m.temp_size_in_bytes),
           "xla_peak_memory_bytes": int(getattr(m, "peak_memory_in_bytes", -1))}
    out["peak_memory_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
                                + out["temp_bytes"])
    return out


def _prepare(cfg: Config, batch_size: int, data, steps: int):
    from bench.core.job import Job

    job = Job(profiling_config(cfg, batch_size), data)
    state = job.init_state()
    idx, _ = job.source.train_inputs(0, steps)
    compiled = job.compile(("profile", batch_size, steps), job.train_call,
                           state, job.source.train_data(), idx)
    return job, state, idx, compiled


def compiled_memory(cfg: Config, batch_size: int, data=None, steps: int = 1) -> dict[str, int]:
    """Memory analysis of the job's compiled training call at batch size B (nothing is run)."""
    _, _, _, compiled = _prepare(cfg, batch_size, data, steps)
    return memory_stats(compiled)


def measure(cfg: Config, batch_size: int, data=None, *, steps: int = 5, warmup: int = 1,
            repeats: int = 5) -> dict[str, Any]:
    """One profile row: compiled memory and median step time of the job's training call."""
    import jax

    job, state, idx, compiled = _prepare(cfg, batch_size, data, steps)
    times = []
    for i in range(warmup + repeats):
        t = time.perf_counter()
        state, metrics = compiled(state, job.source.train_data(), idx)
        jax.block_until_ready((state, metrics))
        if i >= warmup:
            times.append(time.perf_counter() - t)
    step_seconds = statistics.median(times) / steps
    row = {"batch_size": int(batch_size), **memory_stats(compiled), "step_seconds": step_seconds,
           "examples_per_second": batch_size / step_seconds, "accumulate": cfg.accumulate,
           "step_seconds_min": min(times) / steps, "step_seconds_max": max(times) / steps,
           "steps_per_call": steps, "repeats": repeats, "compile_seconds": job.timings.compile_seconds,
           "num_params": job.num_params}
    return {k: row[k] for k in COLUMNS} | {k: v for k, v in row.items() if k not in COLUMNS}


# ---------------------------------------------------------------------------- analysis (pure)


def fit_line(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Least squares y = intercept + slope * x, with R^2 (1 when y is constant and fit exactly)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2:
        return {"intercept": float(y[0]) if len(y) else math.nan, "slope": 0.0, "r2": math.nan}
    design = np.stack([np.ones_like(x), x], 1)
    (intercept, slope), *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - (intercept + slope * x)
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residual**2)) / total if total > 0 else 1.0
    return {"intercept": float(intercept), "slope": float(slope), "r2": r2}


def saturation_batch_size(batch_sizes: Sequence[int], examples_per_second: Sequence[float],
                          fraction: float = 0.9) -> int:
    """The smallest B whose examples/s reaches ``fraction`` x the largest measured examples/s."""
    b, eps = np.asarray(batch_sizes), np.asarray(examples_per_second, float)
    order = np.argsort(b)
    b, eps = b[order], eps[order]
    return int(b[np.argmax(eps >= fraction * eps.max())])


def max_batch_under_budget(batch_sizes: Sequence[int], peak_bytes: Sequence[float],
                           budget_bytes: float | None) -> int | None:
    """The largest profiled B whose peak memory is within the budget (None: none fits)."""
    if budget_bytes is None:
        return int(max(batch_sizes))
    fits = [int(b) for b, m in zip(batch_sizes, peak_bytes) if m <= budget_bytes]
    return max(fits) if fits else None


def summarize(table, memory_budget_bytes: float | None = None, saturation: float = 0.9) -> dict[str, Any]:
    """Fits and derived numbers of a profile table (a DataFrame or a list of row dicts)."""
    rows = table.to_dict("records") if hasattr(table, "to_dict") else list(table)
    b = [r["batch_size"] for r in rows]
    mem, sec, eps = ([r[k] for r in rows] for k in ("peak_memory_bytes", "step_seconds", "examples_per_second"))
    mfit, tfit = fit_line(b, mem), fit_line(b, sec)
    out: dict[str, Any] = {
        "memory_fit": {"formula": "peak_memory_bytes = a + b * B", "a_bytes": mfit["intercept"],
                       "b_bytes_per_example": mfit["slope"], "r2": mfit["r2"]},
        "time_fit": {"formula": "step_seconds = c + d * B", "c_seconds": tfit["intercept"],
                     "d_seconds_per_example": tfit["slope"], "r2": tfit["r2"]},
        "memory_budget_bytes": memory_budget_bytes,
        "max_batch_size_under_budget": max_batch_under_budget(b, mem, memory_budget_bytes),
        "max_batch_size_under_budget_fit": (
            int(math.floor((memory_budget_bytes - mfit["intercept"]) / mfit["slope"] + 1e-6))
            if memory_budget_bytes is not None and mfit["slope"] > 0 else None),
        "saturation": {
            "definition": f"smallest profiled B with examples/s >= {saturation} x max examples/s",
            "fraction": saturation, "batch_size": saturation_batch_size(b, eps, saturation),
            "max_examples_per_second": float(max(eps)),
            "batch_size_at_max": int(b[int(np.argmax(eps))]),
            "batch_size_fit": (saturation / (1 - saturation) * tfit["intercept"] / tfit["slope"]
                               if tfit["slope"] > 0 and tfit["intercept"] > 0 else None)},
        "peak_memory_fields": "argument_size + output_size - alias_size + temp_size "
                              "(compiled.memory_analysis() of the training call)",
    }
    return out


# ---------------------------------------------------------------------------- outputs


def figure(table, summary: dict[str, Any], title: str = ""):
    from matplotlib.figure import Figure

    rows = table.to_dict("records") if hasattr(table, "to_dict") else list(table)
    b = np.array([r["batch_size"] for r in rows], float)
    grid = np.geomspace(b.min(), b.max(), 100)
    fig = Figure(figsize=(13, 4), constrained_layout=True)
    ax_m, ax_t, ax_e = fig.subplots(1, 3)
    mf, tf = summary["memory_fit"], summary["time_fit"]
    ax_m.plot(b, [r["peak_memory_bytes"] / 2**20 for r in rows], "o", label="compiled peak")
    ax_m.plot(grid, (mf["a_bytes"] + mf["b_bytes_per_example"] * grid) / 2**20, "-",
              label=f"a + bB (R²={mf['r2']:.3f})")
    if summary.get("memory_budget_bytes"):
        ax_m.axhline(summary["memory_budget_bytes"] / 2**20, color="r", ls="--", label="budget")
    ax_m.set(ylabel="peak memory (MiB)", title="memory")
    ax_t.plot(b, [r["step_seconds"] * 1e3 for r in rows], "o", label="median step time")
    tgrid = (tf["c_seconds"] + tf["d_seconds_per_example"] * grid) * 1e3
    ax_t.plot(grid[tgrid > 0], tgrid[tgrid > 0], "-", label=f"c + dB (R²={tf['r2']:.3f})")
    ax_t.set(ylabel="step time (ms)", title="time per step")
    ax_e.plot(b, [r["examples_per_second"] for r in rows], "o-", label="examples/s")
    sat = summary["saturation"]
    ax_e.axvline(sat["batch_size"], color="g", ls="--",
                 label=f"saturation B={sat['batch_size']} ({sat['fraction']:.0%} of max)")
    ax_e.set(ylabel="examples / s", title="throughput")
    ax_e.set_ylim(bottom=0)
    ax_m.set_yscale("log")
    ax_t.set_yscale("log")
    for ax in (ax_m, ax_t, ax_e):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size B")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def write_outputs(out_dir: Path | str, table, summary: dict[str, Any], title: str = "") -> dict[str, Path]:
    import pandas as pd

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = table if isinstance(table, pd.DataFrame) else pd.DataFrame(table)
    paths = {"csv": out_dir / "profile.csv", "json": out_dir / "profile.json", "png": out_dir / "profile.png"}
    frame.to_csv(paths["csv"], index=False)
    paths["json"].write_text(json.dumps(summary, indent=2, default=float) + "\n")
    figure(frame, summary, title).savefig(paths["png"], dpi=120)
    return paths


def profile(cfg: Config, batch_sizes: Iterable[int], *, data=None, steps: int = 5, warmup: int = 1,
            repeats: int = 5, memory_budget_bytes: float | None = None, saturation: float = 0.9,
            log=print):
    """Measure every B; returns (DataFrame with COLUMNS first, summary dict)."""
    import jax
    import pandas as pd

    from bench.data import load_dataset

    data = data if data is not None else load_dataset(cfg.dataset)
    rows = []
    for b in effective_batch_sizes(batch_sizes, data.num_train):
        try:
            row = measure(cfg, b, data, steps=steps, warmup=warmup, repeats=repeats)
        except ConfigError as err:
            log(f"skip B={b}: {err}")
            continue
        rows.append(row)
        log(f"B={b:>6}  peak {row['peak_memory_bytes'] / 2**20:9.2f} MiB  "
            f"step {row['step_seconds'] * 1e3:9.3f} ms  {row['examples_per_second']:12.0f} examples/s")
    if not rows:
        raise ConfigError("no batch size could be profiled")
    table = pd.DataFrame(rows)
    summary = summarize(table, memory_budget_bytes, saturation)
    summary["memory_model"] = memory_model(summary, cfg, data, rows[0]["num_params"])
    summary["setup"] = {"dataset": cfg.dataset.name, "model": cfg.model.name,
                        "optimizer": cfg.optimizer.name, "accumulate": cfg.accumulate,
                        "num_train": data.num_train, "steps_per_call": steps, "warmup_calls": warmup,
                        "timed_calls": repeats, "devices": [str(d) for d in jax.devices()],
                        "backend": jax.default_backend()}
    return table, summary


def memory_model(summary: dict[str, Any], cfg: Config, data, num_params: int) -> dict[str, Any]:
    """The memory fit read as O(P + B x I): bytes per parameter (a / P, parameters plus optimizer
    state plus the device-resident data) and, for the transformer, bytes per unit of
    B x T x d x L (the activations kept for the backward pass grow with sequence length T,
    width d and depth L)."""
    m = summary["memory_fit"]
    out: dict[str, Any] = {"num_params": num_params}
    if cfg.model.name == "transformer":
        arch = cfg.model.architecture()
        t, d, layers = data.tokens_per_example, arch["d_model"], arch["num_layers"]
        out.update(formula="peak = alpha P + beta B T d L", tokens_per_example=t, d_model=d,
                   num_layers=layers, alpha_bytes_per_param=m["a_bytes"] / num_params,
                   beta_bytes_per_token_width_layer=m["b_bytes_per_example"] / (t * d * layers))
    else:
        out.update(formula="peak = alpha P + beta B", alpha_bytes_per_param=m["a_bytes"] / num_params,
                   beta_bytes_per_example=m["b_bytes_per_example"])
    return out


def format_summary(s: dict[str, Any]) -> str:
    m, t, sat = s["memory_fit"], s["time_fit"], s["saturation"]
    mm = s.get("memory_model", {})
    lines = [
        f"memory fit: peak = {m['a_bytes'] / 2**20:.3f} MiB + {m['b_bytes_per_example'] / 2**10:.3f} KiB x B"
        f"   (R^2 = {m['r2']:.4f})",
        f"time fit:   step = {t['c_seconds'] * 1e3:.3f} ms + {t['d_seconds_per_example'] * 1e6:.3f} us x B"
        f"   (R^2 = {t['r2']:.4f})",
        f"throughput saturates at B = {sat['batch_size']} (first B with >= {sat['fraction']:.0%} of the max"
        f" {sat['max_examples_per_second']:.0f} examples/s, reached at B = {sat['batch_size_at_max']})"
        + (f"; time fit: 9c/d = {sat['batch_size_fit']:.0f}" if sat.get("batch_size_fit") else ""),
    ]
    if "beta_bytes_per_token_width_layer" in mm:
        lines.append(f"memory model: peak = {mm['alpha_bytes_per_param']:.1f} bytes x P (P = {mm['num_params']:,})"
                     f" + {mm['beta_bytes_per_token_width_layer']:.2f} bytes x B T d L"
                     f" (T = {mm['tokens_per_example']}, d = {mm['d_model']}, L = {mm['num_layers']})")
    elif mm:
        lines.append(f"memory model: peak = {mm['alpha_bytes_per_param']:.1f} bytes x P (P = {mm['num_params']:,})"
                     f" + {mm['beta_bytes_per_example'] / 2**10:.3f} KiB x B")
    if s.get("memory_budget_bytes") is not None:
        lines.append(f"memory budget {s['memory_budget_bytes'] / GIB:.3f} GiB: largest profiled B that fits ="
                     f" {s['max_batch_size_under_budget']}; fit predicts B <= {s['max_batch_size_under_budget_fit']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- CLI


def build_parser(prog: str = "python -m bench.tools.profile") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides (as for bench.train) and batch_sizes=[...]")
    p.add_argument("--memory-gb", type=float, default=None, help="memory budget in GiB (2**30 bytes)")
    p.add_argument("--out", default=None, help="output directory (default outputs/profile/<dataset>-<model>)")
    p.add_argument("--steps", type=int, default=5, help="training steps fused per timed call")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    p.add_argument("--repeats", type=int, default=5, help="timed calls (the median is reported)")
    p.add_argument("--saturation", type=float, default=0.9, help="throughput fraction defining saturation")
    return p


def split_overrides(tokens: Sequence[str]) -> tuple[list[str], list[int] | None]:
    """(Hydra overrides, batch sizes from a ``batch_sizes=[...]`` token if any)."""
    overrides, sizes = [], None
    for tok in tokens:
        if tok.startswith("batch_sizes="):
            sizes = parse_batch_sizes(tok.split("=", 1)[1])
        else:
            overrides.append(tok)
    return overrides, sizes


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        overrides, sizes = split_overrides(args.overrides)
        cfg = compose_config(overrides)
        if args.steps < 1 or args.repeats < 1 or args.warmup < 0 or not 0 < args.saturation <= 1:
            raise ConfigError("--steps and --repeats must be >= 1, --warmup >= 0, --saturation in (0, 1]")
        budget = args.memory_gb * GIB if args.memory_gb is not None else None
        table, summary = profile(cfg, sizes or DEFAULT_BATCH_SIZES, steps=args.steps, warmup=args.warmup,
                                 repeats=args.repeats, memory_budget_bytes=budget,
                                 saturation=args.saturation)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary["overrides"] = overrides
    out = Path(args.out or f"outputs/profile/{cfg.dataset.name}-{cfg.model.name}")
    paths = write_outputs(out, table, summary, title=f"{cfg.model.name} on {cfg.dataset.name}")
    print(format_summary(summary))
    print(f"wrote {paths['csv']}, {paths['json']}, {paths['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
