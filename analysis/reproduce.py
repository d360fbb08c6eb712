"""Reproduce a published batch-size finding end to end: train, interpolate, plot, report.

    python -m analysis.reproduce keskar|goyal|shallue|edge_of_stability --scale offline|paper
        [--out DIR] [--seeds N] [--budget-scale S] [--batch-sizes B ...] [--override KEY=VALUE ...]
        [--launcher basic|local|slurm_cpu|slurm_gpu] [--dry-run] [--publish DIR]

``--scale offline`` runs a scaled-down version here, in this process, on MNIST-1D (the
``*_offline`` presets in ``conf/experiment/``): one ``bench.loop.run`` job per batch size (per
batch size and LR-scaling rule for goyal), the learning rates and seeds of a job trained at once as
vmapped replicas. Then, into ``--out`` (default ``results/<finding>``):

* ``records/<job>/record_r<k>.json`` (+ ``params_r<k>.npz`` where the preset saves them);
* keskar only: ``interpolation.csv`` (``bench.interpolate.interpolation_curve`` between the SB
  and LB solutions of seed 0, alpha in [-1, 2], BatchNorm statistics interpolated) and
  ``interpolation_bn_recomputed.csv`` (the same with the statistics recomputed per alpha);
* ``figures/<name>.png`` (``analysis.figures.make_figures``; PNG only);
* ``summary.csv`` (one row per run: batch size, LR, seed, status, final metrics, curvature);
* ``report.md``: how it was produced (command, plan, wall time) followed by
  ``analysis.report.build_report`` (published numbers, ours, verdicts as computed);
* ``reproduce.json``: the plan and the measured wall time of every job.

Jobs whose directory already holds finished records are skipped, so an interrupted reproduction
resumes where it stopped (delete ``--out`` to start over). ``--publish DIR`` copies the small
artifacts (report, figures, CSVs; never records or parameters) to DIR, e.g. ``docs/results/keskar``.

``--scale paper`` launches the paper-scale sweep through Hydra, one command per paper preset
(``python -m bench.train -m +experiment=<preset> hydra/launcher=<launcher> hydra.sweep.dir=...``;
the presets' ``hydra.sweeper.params`` hold the batch sizes), then writes figures and a report per
preset. It needs the TFDS data and (for ``slurm_*``) a cluster: ``--dry-run`` only prints the
commands.

The offline plans are pure functions (:func:`offline_plan`): batch sizes, seeds, learning-rate
grid, budgets and Hydra overrides of every job, so tests check them without training.
``--budget-scale`` multiplies every budget (and evaluation / measurement cadence) for quick
smoke runs; results at a scale other than 1 are not the reproduction.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"
FINDINGS = ("keskar", "goyal", "shallue", "edge_of_stability")
OFFLINE_PRESET = {"keskar": "keskar_offline", "goyal": "goyal_offline",
                  "shallue": "shallue_offline", "edge_of_stability": "eos_offline"}
PAPER_PRESETS = {
    "keskar": ("keskar_f1", "keskar_c1", "keskar_c2", "keskar_c3", "keskar_c4"),
    "goyal": ("goyal_linear",),
    "shallue": ("shallue_steps_to_result",),
    "edge_of_stability": ("cohen_eos",),
}
# extra sweep overrides of the paper commands (Goyal: compare the rules, as the paper does)
PAPER_SWEEP = {"goyal": ("scaling=linear,none,sqrt",)}
# analysis.report options of the paper presets (the offline ones are in the plans)
PAPER_REPORT = {
    "keskar_f1": {"sb": 256, "lb": 6000}, "keskar_c1": {"sb": 256, "lb": 5000},
    "keskar_c2": {"sb": 256, "lb": 5000}, "keskar_c3": {"sb": 256, "lb": 5000},
    "keskar_c4": {"sb": 256, "lb": 5000}, "goyal_linear": {"tolerance": 0.01},
    "shallue_steps_to_result": {"goal_error": 0.01}, "cohen_eos": {},
}
DEFAULT_SEEDS = {"keskar": 5, "goyal": 3, "shallue": 3, "edge_of_stability": 3}
ALPHAS = tuple(round(-1.0 + 0.1 * i, 10) for i in range(31))  # Keskar Fig. 3: [-1, 2]


# ------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class JobSpec:
    """One bench.loop job: a batch size (and LR-scaling rule), all LRs x seeds as replicas."""
    name: str                       # records/<name>/
    batch_size: int
    budget: str
    overrides: tuple[str, ...]      # Hydra overrides after +experiment=<preset>


@dataclass(frozen=True)
class Plan:
    finding: str
    preset: str
    batch_sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    lrs: tuple[float, ...]          # base learning rates (before the preset's scaling rule)
    rules: tuple[str, ...]          # LR-scaling rules (goyal compares three)
    budget_scale: float
    jobs: tuple[JobSpec, ...]
    report: dict[str, Any] = field(default_factory=dict)   # analysis.report.build_report options
    figures: dict[str, Any] = field(default_factory=dict)  # analysis.figures.make_figures options
    interpolation: tuple[int, int] | None = None           # (SB, LB) batch sizes (keskar)


def _scaled_budget(budget: str, scale: float) -> str:
    """'60epochs' x 0.5 -> '30epochs'; steps/examples stay integers >= 1."""
    from bench.config import parse_budget

    value, unit = parse_budget(budget)
    if scale == 1:
        return budget
    if unit == "epochs":
        return f"{max(value * scale, 1e-3):g}epochs"
    return f"{max(int(round(value * scale)), 1)}{unit}"


def _cadence(every: int, scale: float) -> int:
    return max(int(round(every * scale)), 1)


def _list(values: Sequence[Any]) -> str:
    return "[" + ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values) + "]"


def offline_plan(finding: str, *, seeds: int | None = None, budget_scale: float = 1.0,
                 batch_sizes: Sequence[int] | None = None) -> Plan:
    """The scaled-down reproduction of ``finding`` (pure: no files read, nothing run).

    ``seeds``: number of seeds (0 .. n-1; default per finding); ``batch_sizes``: a subset of
    the plan's batch sizes (smoke tests); ``budget_scale``: multiplies budgets and cadences.
    """
    if finding not in FINDINGS:
        raise ValueError(f"unknown finding {finding!r}; choose from {', '.join(FINDINGS)}")
    if not budget_scale > 0:
        raise ValueError(f"budget_scale={budget_scale} must be > 0")
    n_seeds = DEFAULT_SEEDS[finding] if seeds is None else int(seeds)
    if n_seeds < 1:
        raise ValueError(f"seeds={seeds} must be >= 1")
    seed_list = tuple(range(n_seeds))
    s = budget_scale
    rules: tuple[str, ...] = ("none",)
    report: dict[str, Any] = {}
    figures: dict[str, Any] = {}
    interpolation = None
    if finding == "keskar":
        # F1-like MLP + BN on MNIST-1D; SB = 32, LB = 400 = 10% of 4,000; Adam 1e-3; 60 epochs.
        bs, lrs = (32, 64, 128, 400), (0.001,)
        budget = {b: "60epochs" for b in bs}
        every = {b: 250 for b in bs}
        report = {"sb": 32, "lb": 400}
        interpolation = (32, 400)
    elif finding == "shallue":
        # Greydanus CNN on MNIST-1D, goal 85% test accuracy, LR grid tuned per B (the best LR
        # must be inside the grid: 0.5 fails at every B); the same 100,000 examples (25 epochs)
        # at every B, so final accuracies compare at equal epochs; evaluations every ~4-6% of the
        # steps-to-result, for its resolution.
        bs, lrs = (8, 16, 32, 64, 128, 256, 512), (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
        budget = {b: "100000examples" for b in bs}
        every = {8: 80, 16: 50, 32: 25, 64: 15, 128: 10, 256: 8, 512: 6}
        report = {"target_accuracy": 0.85}
        figures = {"target_accuracy": 0.85}
    elif finding == "goyal":
        # Greydanus CNN, momentum SGD, B0 = 32, warmup 1 epoch + step decay, 20 epochs, 3 rules.
        bs, lrs = (32, 64, 128, 256, 512, 1024), (0.01, 0.03)
        rules = ("linear", "none", "sqrt")
        budget = {b: "20epochs" for b in bs}
        every = {b: 100 for b in bs}
        report = {"tolerance": 0.01}
    else:  # edge_of_stability: full-batch GD on 1,000 examples, Lanczos every 25 steps
        bs, lrs = (1000,), (0.05, 0.1, 0.2, 0.3, 0.4)  # 2/lr = 40 .. 5: above and below the
        # sharpness progressive sharpening reaches by itself (~11 here)
        budget = {1000: "3000steps"}
        every = {1000: 25}
        report = {"tol": 0.2}
    if batch_sizes is not None:
        unknown = sorted(set(batch_sizes) - set(bs))
        if unknown:
            raise ValueError(f"batch sizes {unknown} are not in the {finding} plan {list(bs)}")
        bs = tuple(b for b in bs if b in set(batch_sizes))
    jobs = []
    for b in bs:
        for rule in rules:
            ov = [f"batch_size={b}", f"budget={_scaled_budget(budget[b], s)}",
                  f"replicas.lr={_list(lrs)}", f"replicas.seeds={_list(seed_list)}",
                  f"eval.every_steps={_cadence(every[b], s)}", "progress=false",
                  "logger=none"]
            if finding == "goyal":
                ov.append(f"scaling={rule}")
            if finding == "edge_of_stability":
                ov.append(f"metrics.every={_cadence(every[b], s)}")
            name = f"B{b}" + (f"-{rule}" if len(rules) > 1 else "")
            jobs.append(JobSpec(name, b, _scaled_budget(budget[b], s), tuple(ov)))
    return Plan(finding, OFFLINE_PRESET[finding], tuple(bs), seed_list, tuple(lrs), rules,
                float(budget_scale), tuple(jobs), report, figures, interpolation)


# --------------------------------------------------------------------------- paper scale
def launchers() -> tuple[str, ...]:
    """``basic`` (Hydra's default, sequential, this machine) + the presets in conf/hydra/launcher."""
    return ("basic", *sorted(p.stem for p in (CONF_DIR / "hydra" / "launcher").glob("*.yaml")))


def paper_commands(finding: str, *, launcher: str = "slurm_gpu", out: Path | str | None = None,
                   seeds: int | None = None, overrides: Sequence[str] = (),
                   python: str = "python") -> list[list[str]]:
    """The Hydra multirun command of every paper preset of ``finding`` (pure)."""
    if finding not in FINDINGS:
        raise ValueError(f"unknown finding {finding!r}; choose from {', '.join(FINDINGS)}")
    if launcher not in launchers():
        raise ValueError(f"unknown launcher {launcher!r}; choose from {', '.join(launchers())}")
    out = Path(out) if out is not None else Path("results") / f"{finding}-paper"
    cmds = []
    for preset in PAPER_PRESETS[finding]:
        cmd = [python, "-m", "bench.train", "-m", f"+experiment={preset}"]
        if launcher != "basic":
            cmd.append(f"hydra/launcher={launcher}")
        cmd.append(f"hydra.sweep.dir={out / preset}")
        if seeds is not None:
            cmd.append(f"replicas.seeds={_list(tuple(range(int(seeds))))}")
        cmd += [*PAPER_SWEEP.get(finding, ()), *overrides]
        cmds.append(cmd)
    return cmds


# ---------------------------------------------------------------------------- running
def compose_config(preset: str, overrides: Sequence[str]):
    """The validated Config of ``+experiment=<preset>`` plus ``overrides`` (Hydra compose)."""
    from hydra import compose, initialize_config_dir

    from bench.config import from_hydra, validate

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"+experiment={preset}", *overrides])
    return validate(from_hydra(cfg))


def _log(msg: str) -> None:
    print(f"[reproduce {datetime.now():%H:%M:%S}] {msg}", flush=True)


def run_jobs(plan: Plan, records_dir: Path, extra: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Train every job of the plan in this process (skipping finished ones); returns timings."""
    from bench.data import load_dataset
    from bench.loop import run
    from bench.status import is_finished

    data_cache: dict[str, Any] = {}
    done = []
    for i, job in enumerate(plan.jobs, 1):
        cfg = compose_config(plan.preset, [*job.overrides, *extra])
        job_dir = records_dir / job.name
        if is_finished(job_dir):
            _log(f"[{i}/{len(plan.jobs)}] {job.name}: finished records exist, skipped")
            done.append({"job": job.name, "batch_size": job.batch_size, "skipped": True})
            continue
        key = repr(cfg.dataset)
        if key not in data_cache:
            data_cache[key] = load_dataset(cfg.dataset)
        _log(f"[{i}/{len(plan.jobs)}] {job.name}: B={cfg.batch_size} budget={cfg.budget} "
             f"replicas={len(cfg.replicas.lr or (0,)) * len(cfg.replicas.seeds or (0,))}")
        t = time.perf_counter()
        records = run(cfg, job_dir, data=data_cache[key])
        wall = time.perf_counter() - t
        statuses = [r["status"] for r in records]
        _log(f"    done in {wall:.0f} s; total steps {records[0]['experiment']['total_steps']}; "
             f"statuses {dict((s, statuses.count(s)) for s in sorted(set(statuses)))}")
        done.append({"job": job.name, "batch_size": job.batch_size, "skipped": False,
                     "wall_seconds": wall, "total_steps": records[0]["experiment"]["total_steps"],
                     **{k: records[0]["timings"].get(k) for k in
                        ("compile_seconds", "train_seconds", "eval_seconds", "metrics_seconds")}})
    return done


def _seed0_record(job_dir: Path) -> Path:
    """The record of the first LR and seed 0 of a job (replicas are LR-major x seeds)."""
    from bench.record import find_records, read_record

    best = None
    for path in find_records(job_dir):
        r = read_record(path)["replica"]
        key = (r.get("index", 0) if r.get("seed") == 0 else math.inf)
        if best is None or key < best[0]:
            best = (key, path)
    if best is None:
        raise FileNotFoundError(f"no records in {job_dir}")
    return best[1]


def interpolation(records_dir: Path, sb_dir: Path, lb_dir: Path, out_csv: Path,
                  bn_stats: str = "interpolate") -> Path:
    from bench.interpolate import interpolation_curve

    sb_dir, lb_dir = records_dir / sb_dir, records_dir / lb_dir
    df = interpolation_curve(_seed0_record(sb_dir), _seed0_record(lb_dir), ALPHAS, bn_stats=bn_stats)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_csv, index=False)
    return out_csv


SUMMARY_COLUMNS = (
    "name", "batch_size", "scaling", "base_lr", "peak_lr", "seed", "status", "total_steps",
    "final_step", "final_train_loss", "final_train_accuracy", "final_test_loss",
    "final_test_accuracy", "final_gap_accuracy", "steps_to_target",
    "curvature_hessian_top_eigenvalue", "curvature_hessian_trace",
    "curvature_sharpness_full_eps1e-03", "curvature_sharpness_full_eps5e-04",
    "curvature_sharpness_subspace_eps1e-03", "curvature_sharpness_subspace_eps5e-04",
    "train_seconds")


def summary_table(records_dir: Path):
    """One row per run (the columns of SUMMARY_COLUMNS that exist), sorted."""
    from analysis.load import load_records

    runs = load_records(records_dir)
    cols = [c for c in SUMMARY_COLUMNS if c in runs.columns]
    keys = [c for c in ("batch_size", "scaling", "base_lr", "seed") if c in runs.columns]
    return runs[cols].sort_values(keys, kind="stable", ignore_index=True)


def analyze(finding: str, records_dir: Path, out: Path, *, report_opts: dict[str, Any],
            figure_opts: dict[str, Any], interpolation_csv: Path | None,
            header: str = "", footer: str = "") -> dict[str, Any]:
    """Figures (PNG), summary.csv and report.md for the records under ``records_dir``."""
    from analysis.figures import make_figures
    from analysis.report import build_report

    out.mkdir(parents=True, exist_ok=True)
    figs = make_figures(records_dir, out / "figures", formats=("png",),
                        interpolation=interpolation_csv, **figure_opts)
    for name, result in figs.items():
        _log(f"figure {name}: {result if isinstance(result, str) else ', '.join(map(str, result))}")
    summary_table(records_dir).to_csv(out / "summary.csv", index=False)
    body = build_report(records_dir, [finding], out=out / "report.md", figures_dir=out / "figures",
                        **report_opts)
    (out / "report.md").write_text(header + body + ("\n" + footer if footer else ""))
    return {name: (r if isinstance(r, str) else [str(p) for p in r]) for name, r in figs.items()}


def _job_table(timings: list[dict[str, Any]]) -> str:
    lines = ["| job | B | steps | wall (s) | compile (s) | train (s) | eval (s) | curvature (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for t in timings:
        if t.get("skipped"):
            lines.append(f"| {t['job']} | {t['batch_size']} | (skipped: finished records existed) ||||||")
            continue
        f = lambda k: f"{t[k]:.0f}" if t.get(k) is not None else "—"
        lines.append(f"| {t['job']}{' (earlier run)' if t.get('reused') else ''} | {t['batch_size']} | {t['total_steps']} | {f('wall_seconds')} | "
                     f"{f('compile_seconds')} | {f('train_seconds')} | {f('eval_seconds')} | "
                     f"{f('metrics_seconds')} |")
    if any(t.get("reused") for t in timings):
        lines += ["", "(earlier run): trained by an earlier invocation of the same command into the same "
                  "--out; its finished records were reused, with that run's timings."]
    return "\n".join(lines) + "\n"


def offline_header(plan: Plan, command: str, timings: list[dict[str, Any]], wall: float,
                   source: str | None) -> str:
    scale_note = ("" if plan.budget_scale == 1 else
                  f"\n**Budgets scaled by {plan.budget_scale:g} (smoke run): not the reproduction.**\n")
    return "\n".join([
        f"# Reproduction: {plan.finding} (offline, scaled down)", "",
        f"- command: `{command}`",
        f"- preset: `conf/experiment/{plan.preset}.yaml` — {source or ''}",
        f"- batch sizes: {', '.join(map(str, plan.batch_sizes))}; seeds: {', '.join(map(str, plan.seeds))}; "
        f"base learning rates: {', '.join(f'{x:g}' for x in plan.lrs)}"
        + (f"; LR-scaling rules: {', '.join(plan.rules)}" if len(plan.rules) > 1 else ""),
        f"- budgets: {', '.join(sorted({j.budget for j in plan.jobs}, key=str))} (per job: table below)",
        f"- wall time: {sum(t.get('wall_seconds') or 0 for t in timings) / 60:.1f} min of training jobs "
        f"(sum of the job table), {wall / 60:.1f} min for this invocation (jobs run now + "
        f"interpolation), on {os.cpu_count()} CPU core(s) ({platform.machine()}, shared with other "
        f"work), {datetime.now(timezone.utc):%Y-%m-%d} UTC",
        scale_note, "Jobs (each trains all learning rates x seeds of one batch size as vmapped replicas):", "",
        _job_table(timings), "", "---", "", ""])


def _previous_jobs(path: Path) -> dict[str, dict[str, Any]]:
    """Timings of the jobs an earlier invocation trained (kept when a re-run skips them)."""
    if not path.is_file():
        return {}
    try:
        jobs = json.loads(path.read_text()).get("jobs", [])
    except (OSError, ValueError):
        return {}
    return {j["job"]: {**j, "reused": True} for j in jobs if not j.get("skipped")}


def _bn_recomputed_section(csv: Path, figures_dir: Path) -> str:
    """Keskar Fig. 3 again with BatchNorm statistics recomputed at every alpha (a check on the
    interpolated-statistics curve: negative interpolated variances are clipped at 0 there)."""
    import pandas as pd

    from analysis.figures import interpolation_figure
    from analysis.plotting import save_figure

    df = pd.read_csv(csv)
    fig = interpolation_figure(df)
    fig.axes[0].set_title("SB -> LB with BatchNorm statistics recomputed per α", fontsize=10)
    save_figure(fig, figures_dir, "keskar_interpolation_bn_recomputed", ("png",))
    at = df.set_index("alpha")
    rows = ["| α | train loss | test loss | train acc. | test acc. |", "|---|---|---|---|---|"]
    for a in (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0):
        if a in at.index:
            r = at.loc[a]
            rows.append(f"| {a:g} | {r['train_loss']:.4g} | {r['test_loss']:.4g} | "
                        f"{r['train_accuracy']:.4f} | {r['test_accuracy']:.4f} |")
    return "\n".join([
        "## Interpolation with BatchNorm statistics recomputed", "",
        "`interpolation.csv` (figure `keskar_interpolation` above) interpolates the BatchNorm running "
        "statistics with the parameters; outside [0, 1] interpolated variances can turn negative and "
        "are clipped at 0, which by itself inflates the loss there. `interpolation_bn_recomputed.csv` "
        "recomputes the statistics of every α on the training data instead (bench.interpolate, "
        "bn_stats='recompute'; same SB and LB runs, seed 0):", "",
        *rows, "", "![keskar_interpolation_bn_recomputed](figures/keskar_interpolation_bn_recomputed.png)", ""])


def reproduce_offline(finding: str, out: Path, *, seeds: int | None = None, budget_scale: float = 1.0,
                      batch_sizes: Sequence[int] | None = None, overrides: Sequence[str] = (),
                      command: str = "") -> dict[str, Any]:
    plan = offline_plan(finding, seeds=seeds, budget_scale=budget_scale, batch_sizes=batch_sizes)
    records_dir = out / "records"
    previous = _previous_jobs(out / "reproduce.json")
    _log(f"{finding}: {len(plan.jobs)} jobs of preset {plan.preset} -> {out}")
    t0 = time.perf_counter()
    timings = [previous.get(t["job"], t) if t.get("skipped") else t
               for t in run_jobs(plan, records_dir, overrides)]
    train_wall = time.perf_counter() - t0
    interp_csv, footer = None, ""
    if plan.interpolation is not None:
        sb, lb = plan.interpolation
        if sb in plan.batch_sizes and lb in plan.batch_sizes:
            t = time.perf_counter()
            interp_csv = interpolation(records_dir, Path(f"B{sb}"), Path(f"B{lb}"), out / "interpolation.csv")
            bn_csv = interpolation(records_dir, Path(f"B{sb}"), Path(f"B{lb}"),
                                   out / "interpolation_bn_recomputed.csv", bn_stats="recompute")
            _log(f"interpolation curves ({len(ALPHAS)} alphas, BN statistics interpolated and "
                 f"recomputed) in {time.perf_counter() - t:.0f} s -> {interp_csv}, {bn_csv}")
            footer = _bn_recomputed_section(bn_csv, out / "figures")
    wall = time.perf_counter() - t0
    source = compose_config(plan.preset, []).source
    header = offline_header(plan, command, timings, wall, source)
    figs = analyze(finding, records_dir, out, report_opts=plan.report, figure_opts=plan.figures,
                   interpolation_csv=interp_csv, header=header, footer=footer)
    meta = {"finding": finding, "scale": "offline", "command": command, "plan": asdict(plan),
            "jobs": timings, "train_wall_seconds": train_wall, "wall_seconds": wall,
            "cpu_count": os.cpu_count(), "figures": figs,
            "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (out / "reproduce.json").write_text(json.dumps(meta, indent=1, default=str))
    _log(f"wrote {out / 'report.md'} ({wall / 60:.1f} min)")
    return meta


def reproduce_paper(finding: str, out: Path, *, launcher: str, seeds: int | None,
                    overrides: Sequence[str], dry_run: bool) -> int:
    cmds = paper_commands(finding, launcher=launcher, out=out, seeds=seeds, overrides=overrides,
                          python=sys.executable if not dry_run else "python")
    if dry_run:
        for cmd in cmds:
            print(shlex.join(cmd))
        return 0
    for cmd, preset in zip(cmds, PAPER_PRESETS[finding]):
        _log("running: " + shlex.join(cmd))
        proc = subprocess.run(cmd, cwd=REPO)
        if proc.returncode != 0:
            _log(f"{preset}: exit code {proc.returncode}; stopping (re-run the same command to resume)")
            return proc.returncode
        sweep = out / preset
        interp = None
        opts = PAPER_REPORT[preset]
        if finding == "keskar":
            try:
                interp = interpolation(sweep, *_paper_sb_lb_dirs(sweep, opts["sb"], opts["lb"]),
                                       sweep / "interpolation.csv")
            except (FileNotFoundError, ValueError) as err:
                _log(f"{preset}: no interpolation curve ({err})")
        fig_opts = {k: v for k, v in opts.items() if k in ("goal_error", "target_accuracy")}
        analyze(finding, sweep, sweep, report_opts=opts, figure_opts=fig_opts, interpolation_csv=interp,
                header=f"# Reproduction: {finding} / {preset} (paper scale)\n\n- command: `{shlex.join(cmd)}`\n\n---\n\n")
    return 0


def _paper_sb_lb_dirs(sweep: Path, sb: int, lb: int) -> tuple[Path, Path]:
    """The Hydra job dirs (relative to ``sweep``) holding the SB and LB records."""
    from bench.record import find_records, read_record

    found: dict[int, Path] = {}
    for path in find_records(sweep):
        b = read_record(path)["experiment"].get("batch_size")
        if b in (sb, lb) and b not in found:
            found[b] = path.parent.relative_to(sweep)
    if sb not in found or lb not in found:
        raise FileNotFoundError(f"records for B={sb} and B={lb} not both under {sweep}")
    return found[sb], found[lb]


def publish(out: Path, dest: Path) -> list[Path]:
    """Copy report.md, the CSVs and figures/*.png (never records or parameters) to ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in ("report.md", "summary.csv", "interpolation.csv", "interpolation_bn_recomputed.csv"):
        if (out / name).is_file():
            copied.append(Path(shutil.copy2(out / name, dest / name)))
    if (out / "figures").is_dir():
        (dest / "figures").mkdir(exist_ok=True)
        for png in sorted((out / "figures").glob("*.png")):
            copied.append(Path(shutil.copy2(png, dest / "figures" / png.name)))
    return copied


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.reproduce", description=__doc__.split("\n")[0])
    ap.add_argument("finding", choices=FINDINGS)
    ap.add_argument("--scale", choices=("offline", "paper"), required=True)
    ap.add_argument("--out", type=Path, default=None,
                    help="output dir (default results/<finding> offline, results/<finding>-paper paper)")
    ap.add_argument("--seeds", type=int, default=None,
                    help=f"number of seeds 0..N-1 (default offline: {DEFAULT_SEEDS}; paper: the preset's)")
    ap.add_argument("--budget-scale", type=float, default=1.0,
                    help="offline: multiply every budget and cadence (smoke runs; 1 = the reproduction)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                    help="offline: run only these batch sizes of the plan")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="extra Hydra override for every job (repeatable)")
    ap.add_argument("--launcher", choices=launchers(), default="slurm_gpu",
                    help="paper: Hydra launcher preset (basic = Hydra's sequential local launcher)")
    ap.add_argument("--dry-run", action="store_true", help="paper: print the commands, run nothing")
    ap.add_argument("--publish", type=Path, default=None,
                    help="copy report.md, CSVs and PNG figures (no records) to this dir")
    args = ap.parse_args(argv)
    if args.scale == "offline":
        if args.dry_run:
            plan = offline_plan(args.finding, seeds=args.seeds, budget_scale=args.budget_scale,
                                batch_sizes=args.batch_sizes)
            for job in plan.jobs:
                print(job.name, shlex.join([f"+experiment={plan.preset}", *job.overrides, *args.override]))
            return 0
        out = args.out or Path("results") / args.finding
        command = "python -m analysis.reproduce " + shlex.join(
            list(argv) if argv is not None else sys.argv[1:])
        reproduce_offline(args.finding, out, seeds=args.seeds, budget_scale=args.budget_scale,
                          batch_sizes=args.batch_sizes, overrides=args.override, command=command)
        if args.publish:
            for p in publish(out, args.publish):
                _log(f"published {p}")
        return 0
    if args.budget_scale != 1.0 or args.batch_sizes:
        ap.error("--budget-scale and --batch-sizes apply to --scale offline only (use --override)")
    out = args.out or Path("results") / f"{args.finding}-paper"
    return reproduce_paper(args.finding, out, launcher=args.launcher, seeds=args.seeds,
                           overrides=args.override, dry_run=args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
