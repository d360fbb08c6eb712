"""Run a reproduction: train its jobs here, interpolate, plot, report (see bench.reproduce).

Jobs whose directory already holds finished records of the same configuration are skipped
(bench.reuse), so an interrupted reproduction resumes where it stopped (delete ``--out`` to
start over); a changed preset never silently reuses old records.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from bench.hydra_conf import CONF_DIR, compose_config
from bench.reproduce.plan import (LM_FINDINGS, Plan, finding as finding_spec, offline_plan, paper_commands,
                                  report_options)

REPO = CONF_DIR.parent
ALPHAS = tuple(round(-1.0 + 0.1 * i, 10) for i in range(31))  # Keskar Fig. 3: [-1, 2]


def _log(msg: str) -> None:
    print(f"[reproduce {datetime.now():%H:%M:%S}] {msg}", flush=True)


def run_jobs(plan: Plan, records_dir: Path, extra: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Train every job of the plan in this process (skipping finished ones); returns timings."""
    from bench.data import load_dataset
    from bench.loop import run
    from bench.reuse import check_reuse

    data_cache: dict[str, Any] = {}
    done = []
    for i, job in enumerate(plan.jobs, 1):
        cfg = compose_config([f"+experiment={job.preset or plan.preset}", *job.overrides, *extra])
        job_dir = records_dir / job.name
        if check_reuse(job_dir, cfg) == "finished":
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
    "name", "batch_size", "scaling", "base_lr", "peak_lr", "adam_b2", "seed", "status", "total_steps",
    "final_step", "final_train_loss", "final_train_accuracy", "final_test_loss",
    "final_test_accuracy", "final_gap_accuracy", "steps_to_target",
    "curvature_hessian_top_eigenvalue", "curvature_hessian_trace",
    "curvature_sharpness_full_eps1e-03", "curvature_sharpness_full_eps5e-04",
    "curvature_sharpness_subspace_eps1e-03", "curvature_sharpness_subspace_eps5e-04",
    "final_tokens", "final_test_bits_per_byte", "target_test_loss", "steps_to_test_loss",
    "tokens_to_test_loss", "train_seconds")


def summary_table(records_dir: Path):
    """One row per run (the columns of SUMMARY_COLUMNS that exist), sorted."""
    from analysis.load import load_records

    runs = load_records(records_dir)
    cols = [c for c in SUMMARY_COLUMNS if c in runs.columns]
    keys = [c for c in ("name", "batch_size", "scaling", "base_lr", "seed") if c in runs.columns]
    return runs[cols].sort_values(keys, kind="stable", ignore_index=True)


def analyze(finding: str, records_dir: Path, out: Path, *, report_opts: dict[str, Any],
            figure_opts: dict[str, Any], interpolation_csv: Path | None,
            header: str = "", footer: str = "") -> dict[str, Any]:
    """Figures (PNG), summary.csv and report.md for the records under ``records_dir``."""
    from analysis.figures import make_figures
    from analysis.lm_figures import make_lm_figures
    from analysis.report import build_report

    out.mkdir(parents=True, exist_ok=True)
    if finding in LM_FINDINGS:
        figs = make_lm_figures(records_dir, out / "figures", finding, **figure_opts)
    else:
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
    meta = {"finding": finding, "scale": "offline", "command": command, "plan": asdict(plan),
            "jobs": timings, "train_wall_seconds": train_wall, "cpu_count": os.cpu_count()}
    # the timings first: a failing analysis can be re-run without losing them
    out.mkdir(parents=True, exist_ok=True)
    (out / "reproduce.json").write_text(json.dumps(meta, indent=1, default=str))
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
    source = compose_config([f"+experiment={plan.preset}"]).source
    header = offline_header(plan, command, timings, wall, source)
    figs = analyze(finding, records_dir, out, report_opts=plan.report, figure_opts=plan.figures,
                   interpolation_csv=interp_csv, header=header, footer=footer)
    meta.update(wall_seconds=wall, figures=figs,
                finished_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    (out / "reproduce.json").write_text(json.dumps(meta, indent=1, default=str))
    _log(f"wrote {out / 'report.md'} ({wall / 60:.1f} min)")
    return meta


def reanalyze_offline(finding: str, out: Path, *, command: str = "") -> dict[str, Any]:
    """Figures, summary and report again from the records under ``out`` (nothing trained): for
    analysis code or baselines that changed after the runs. The header keeps the command, plan
    and timings of the run that wrote the records (``reproduce.json``) and says it was re-analysed."""
    from bench.reproduce.plan import JobSpec

    meta = json.loads((out / "reproduce.json").read_text())
    if meta.get("finding") != finding:
        raise ValueError(f"{out / 'reproduce.json'} is a reproduction of {meta.get('finding')!r}, not {finding!r}")
    stored = dict(meta["plan"])
    stored["jobs"] = tuple(JobSpec(**{**j, "overrides": tuple(j["overrides"])}) for j in stored["jobs"])
    for key in ("batch_sizes", "seeds", "lrs", "rules", "presets"):
        stored[key] = tuple(stored.get(key) or ())
    current = offline_plan(finding)  # analysis options come from the presets, as in a full run
    plan = Plan(**{**stored, "report": current.report, "figures": current.figures})
    interp = out / "interpolation.csv"
    footer = (_bn_recomputed_section(out / "interpolation_bn_recomputed.csv", out / "figures")
              if (out / "interpolation_bn_recomputed.csv").is_file() else "")
    source = compose_config([f"+experiment={plan.preset}"]).source
    header = offline_header(plan, meta.get("command", ""), meta["jobs"], meta.get("wall_seconds") or
                            meta.get("train_wall_seconds", 0.0), source)
    note = (f"- analysis re-run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from the records "
            f"(nothing retrained): `{command}`\n")
    header = header.replace("\nJobs (each trains", f"\n{note}\nJobs (each trains", 1)
    figs = analyze(finding, out / "records", out, report_opts=plan.report, figure_opts=plan.figures,
                   interpolation_csv=interp if interp.is_file() else None, header=header, footer=footer)
    meta.update(figures=figs, reanalyzed_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    (out / "reproduce.json").write_text(json.dumps(meta, indent=1, default=str))
    _log(f"wrote {out / 'report.md'} (re-analysed)")
    return meta


def reproduce_paper(finding: str, out: Path, *, launcher: str, seeds: int | None,
                    overrides: Sequence[str], dry_run: bool) -> int:
    cmds = paper_commands(finding, launcher=launcher, out=out, seeds=seeds, overrides=overrides,
                          python=sys.executable if not dry_run else "python")
    if dry_run:
        for cmd in cmds:
            print(shlex.join(cmd))
        return 0
    for cmd, preset in zip(cmds, finding_spec(finding).paper):
        _log("running: " + shlex.join(cmd))
        proc = subprocess.run(cmd, cwd=REPO)
        if proc.returncode != 0:
            _log(f"{preset}: exit code {proc.returncode}; stopping (re-run the same command to resume)")
            return proc.returncode
        if finding in LM_FINDINGS:  # arms: one report over every preset's sweep, below
            continue
        sweep = out / preset
        interp = None
        opts, fig_opts = report_options(preset, finding)
        if finding_spec(finding).interpolation:
            try:
                interp = interpolation(sweep, *_paper_sb_lb_dirs(sweep, opts["sb"], opts["lb"]),
                                       sweep / "interpolation.csv")
            except (FileNotFoundError, ValueError) as err:
                _log(f"{preset}: no interpolation curve ({err})")
        analyze(finding, sweep, sweep, report_opts=opts, figure_opts=fig_opts, interpolation_csv=interp,
                header=f"# Reproduction: {finding} / {preset} (paper scale)\n\n- command: `{shlex.join(cmd)}`\n\n---\n\n")
    if finding in LM_FINDINGS:
        paper = finding_spec(finding).paper
        opts, fig_opts = report_options(paper[0], finding, paper)
        analyze(finding, out, out, report_opts=opts, figure_opts=fig_opts, interpolation_csv=None,
                header=f"# Reproduction: {finding} (paper scale)\n\n- commands:\n"
                       + "".join(f"  - `{shlex.join(c)}`\n" for c in cmds) + "\n---\n\n")
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
