"""Run a reproduction: train its jobs here, plot, report (see analysis.reproduce).

Jobs whose directory already holds finished records of the same configuration are skipped
(bench.core.reuse), so an interrupted reproduction resumes where it stopped (delete ``--out`` to
start over); a changed preset never silently reuses old records.
"""

from __future__ import annotations

import json
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

from analysis.findings import Finding, get
from bench.metrics.suite import summary_columns
from analysis.wandb_report import maybe_log_report
from analysis.load import load_records, load_tables
from analysis.plotting import save_figures
from analysis.report import build_report
from analysis.reproduce.plan import RECORDS, JobSpec, Plan, finding_options, offline_plan, paper_commands

REPO = CONF_DIR.parent


def _log(msg: str) -> None:
    print(f"[reproduce {datetime.now():%H:%M:%S}] {msg}", flush=True)


def run_jobs(plan: Plan, records_dir: Path, extra: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Train every job of the plan in this process (skipping finished ones); returns timings."""
    from bench.data import load_dataset
    from bench.core.loop import run
    from bench.core.reuse import check_reuse

    data_cache: dict[str, Any] = {}
    done = []
    for i, job in enumerate(plan.jobs, 1):
        overrides = [o.replace(RECORDS, str(records_dir.resolve())) for o in job.overrides]
        cfg = compose_config([f"+experiment={job.preset or plan.preset}", *overrides,
                              f"logger.finding={plan.finding}", *extra])
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


SUMMARY_COLUMNS = (
    "name", "batch_size", "scaling", "base_lr", "peak_lr", "adam_b2", "seed", "status", "total_steps",
    "final_step", "final_train_loss", "final_train_accuracy", "final_test_loss",
    "final_test_accuracy", "final_gap_accuracy", "steps_to_target",
    *summary_columns(),  # the curvature metrics' own columns (their registry)
    "final_tokens", "final_test_bits_per_byte", "target_test_loss", "steps_to_test_loss",
    "tokens_to_test_loss", "train_seconds")


def summary_table(records_dir: Path):
    """One row per run (the columns of SUMMARY_COLUMNS that exist), sorted."""
    runs = load_records(records_dir)
    cols = [c for c in SUMMARY_COLUMNS if c in runs.columns]
    keys = [c for c in ("name", "batch_size", "scaling", "base_lr", "seed") if c in runs.columns]
    return runs[cols].sort_values(keys, kind="stable", ignore_index=True)


def analyze(finding: Finding, records_dir: Path, out: Path, *, options: dict[str, Any],
            header: str = "", footer: str = "") -> dict[str, Any]:
    """Figures (PNG), summary.csv and report.md for the records under ``records_dir``."""
    out.mkdir(parents=True, exist_ok=True)
    runs, history = load_tables(records_dir)
    figs = save_figures(finding.figures(runs, history, out, **options), out / "figures", ("png",))
    for name, result in figs.items():
        _log(f"figure {name}: {result if isinstance(result, str) else ', '.join(map(str, result))}")
    summary_table(records_dir).to_csv(out / "summary.csv", index=False)
    body = build_report(records_dir, [finding.name], out=out / "report.md", figures_dir=out / "figures",
                        **options)
    (out / "report.md").write_text(header + body + ("\n" + footer if footer else ""))
    if (run_dir := maybe_log_report(out)) is not None:  # only when the jobs logged to W&B
        _log(f"W&B report run: {run_dir}")
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


def _after_training(finding: Finding, records: Path, out: Path, options: dict[str, Any], **kw: Any) -> str:
    """The finding's outputs from the trained records (timed), then its report footer."""
    t = time.perf_counter()
    finding.after_training(records, out, options, **kw)
    if (took := time.perf_counter() - t) >= 1:
        _log(f"{finding.name}: outputs from the trained records in {took:.0f} s")
    return finding.footer(out)


def reproduce_offline(name: str, out: Path, *, seeds: int | None = None, budget_scale: float = 1.0,
                      batch_sizes: Sequence[int] | None = None, overrides: Sequence[str] = (),
                      command: str = "") -> dict[str, Any]:
    finding = get(name)
    plan = offline_plan(name, seeds=seeds, budget_scale=budget_scale, batch_sizes=batch_sizes)
    records_dir = out / "records"
    previous = _previous_jobs(out / "reproduce.json")
    _log(f"{name}: {len(plan.jobs)} jobs of preset {plan.preset} -> {out}")
    t0 = time.perf_counter()
    timings = [previous.get(t["job"], t) if t.get("skipped") else t
               for t in run_jobs(plan, records_dir, overrides)]
    train_wall = time.perf_counter() - t0
    meta = {"finding": name, "scale": "offline", "command": command, "plan": asdict(plan),
            "jobs": timings, "train_wall_seconds": train_wall, "cpu_count": os.cpu_count()}
    # the timings first: a failing analysis can be re-run without losing them
    out.mkdir(parents=True, exist_ok=True)
    (out / "reproduce.json").write_text(json.dumps(meta, indent=1, default=str))
    footer = _after_training(finding, records_dir, out, plan.options, batch_sizes=plan.batch_sizes)
    wall = time.perf_counter() - t0
    source = compose_config([f"+experiment={plan.preset}"]).source
    header = offline_header(plan, command, timings, wall, source)
    figs = analyze(finding, records_dir, out, options=plan.options, header=header, footer=footer)
    meta.update(wall_seconds=wall, figures=figs,
                finished_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    (out / "reproduce.json").write_text(json.dumps(meta, indent=1, default=str))
    _log(f"wrote {out / 'report.md'} ({wall / 60:.1f} min)")
    return meta


def _stored_plan(stored: dict[str, Any], options: dict[str, Any]) -> Plan:
    """The plan of ``reproduce.json`` with the current analysis options (keys of older plans
    that are no longer plan fields are left out)."""
    fields = set(Plan.__dataclass_fields__)
    plan = {k: v for k, v in stored.items() if k in fields}
    plan["jobs"] = tuple(JobSpec(**{**j, "overrides": tuple(j["overrides"])}) for j in plan["jobs"])
    for key in ("batch_sizes", "seeds", "lrs", "rules", "presets"):
        plan[key] = tuple(plan.get(key) or ())
    return Plan(**{**plan, "options": options})


def reanalyze_offline(name: str, out: Path, *, command: str = "") -> dict[str, Any]:
    """Figures, summary and report again from the records under ``out`` (nothing trained): for
    analysis code or baselines that changed after the runs. The header keeps the command, plan
    and timings of the run that wrote the records (``reproduce.json``) and says it was re-analysed."""
    finding = get(name)
    meta = json.loads((out / "reproduce.json").read_text())
    if meta.get("finding") != name:
        raise ValueError(f"{out / 'reproduce.json'} is a reproduction of {meta.get('finding')!r}, not {name!r}")
    # analysis options come from the presets, as in a full run
    plan = _stored_plan(meta["plan"], finding_options(finding, finding.offline_presets))
    source = compose_config([f"+experiment={plan.preset}"]).source
    header = offline_header(plan, meta.get("command", ""), meta["jobs"], meta.get("wall_seconds") or
                            meta.get("train_wall_seconds", 0.0), source)
    note = (f"- analysis re-run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from the records "
            f"(nothing retrained): `{command}`\n")
    header = header.replace("\nJobs (each trains", f"\n{note}\nJobs (each trains", 1)
    figs = analyze(finding, out / "records", out, options=plan.options, header=header, footer=finding.footer(out))
    meta.update(figures=figs, reanalyzed_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    (out / "reproduce.json").write_text(json.dumps(meta, indent=1, default=str))
    _log(f"wrote {out / 'report.md'} (re-analysed)")
    return meta


def reproduce_paper(name: str, out: Path, *, launcher: str, seeds: int | None,
                    overrides: Sequence[str], dry_run: bool) -> int:
    """Each paper preset's Hydra sweep, then a report per preset (or one over all the arms)."""
    finding = get(name)
    cmds = paper_commands(name, launcher=launcher, out=out, seeds=seeds, overrides=overrides,
                          python=sys.executable if not dry_run else "python")
    if dry_run:
        for cmd in cmds:
            print(shlex.join(cmd))
        return 0
    for cmd in cmds:  # a staged arm has one command per checkpoint, after its parent's
        preset = next(c.split("=", 1)[1] for c in cmd if c.startswith("+experiment="))
        _log("running: " + shlex.join(cmd))
        proc = subprocess.run(cmd, cwd=REPO)
        if proc.returncode != 0:
            _log(f"{preset}: exit code {proc.returncode}; stopping (re-run the same command to resume)")
            return proc.returncode
        if finding.one_paper_report:  # arms: one report over every preset's sweep, below
            continue
        sweep = out / preset
        opts = finding_options(finding, [preset])
        footer = _after_training(finding, sweep, sweep, opts, paper=True)
        analyze(finding, sweep, sweep, options=opts, footer=footer,
                header=f"# Reproduction: {name} / {preset} (paper scale)\n\n- command: `{shlex.join(cmd)}`\n\n---\n\n")
    if finding.one_paper_report:
        opts = finding_options(finding, finding.paper_presets)
        analyze(finding, out, out, options=opts,
                header=f"# Reproduction: {name} (paper scale)\n\n- commands:\n"
                       + "".join(f"  - `{shlex.join(c)}`\n" for c in cmds) + "\n---\n\n")
    return 0


def publish(out: Path, dest: Path) -> list[Path]:
    """Copy report.md, the CSVs (summary.csv and a finding's own) and figures/*.png to ``dest``
    (never records or parameters)."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in [out / "report.md", *sorted(out.glob("*.csv"))]:
        if path.is_file():
            copied.append(Path(shutil.copy2(path, dest / path.name)))
    if (out / "figures").is_dir():
        (dest / "figures").mkdir(exist_ok=True)
        for png in sorted((out / "figures").glob("*.png")):
            copied.append(Path(shutil.copy2(png, dest / "figures" / png.name)))
    return copied
