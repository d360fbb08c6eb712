"""What a reproduction runs: the plans read from a finding's presets.

Every grid, seed list, budget and evaluation cadence lives in the finding's presets
(``conf/experiment/<preset>.yaml``: its keys and its ``hydra.sweeper.params``); a plan is
read from them, so ``python -m bench.train -m +experiment=<preset>`` and the reproduction run
the same jobs. Which presets a finding has, and what is not a training setting (its arms'
roles, a verdict tolerance), is its module's (``analysis.findings``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Sequence

from bench.config import Config, from_hydra, validate
from bench.hydra_conf import CONF_DIR, compose, group_options

from analysis.findings import Finding, Preset, get


@dataclass(frozen=True)
class JobSpec:
    """One bench.core.loop job: a batch size (and LR-scaling rule), all LRs x seeds as replicas."""
    name: str                       # records/<name>/
    batch_size: int
    budget: str
    overrides: tuple[str, ...]      # Hydra overrides after +experiment=<preset>
    preset: str = ""                # the job's preset ("": the plan's)
    after: str = ""                 # the job whose checkpoints this one branches from (runs first)


@dataclass(frozen=True)
class Plan:
    finding: str
    preset: str
    batch_sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    lrs: tuple[float, ...]          # base learning rates (before the preset's scaling rule)
    rules: tuple[str, ...]          # LR-scaling rules swept by the preset (goyal compares three)
    budget_scale: float
    jobs: tuple[JobSpec, ...]
    options: dict[str, Any] = field(default_factory=dict)  # the finding's verdict and figure options
    presets: tuple[str, ...] = ()                           # every offline preset (arm) of the plan


def read_preset(preset: str, overrides: Sequence[str] = ()) -> tuple[Config, dict[str, list[str]]]:
    """(the preset's config, {swept key: values of its hydra.sweeper.params})."""
    cfg, params = _read_preset(preset, tuple(overrides))
    return cfg, {k: list(v) for k, v in params.items()}


@cache  # a plan reads each preset several times; composing one takes a good part of a second
def _read_preset(preset: str, overrides: tuple[str, ...]) -> tuple[Config, dict[str, tuple[str, ...]]]:
    composed = compose([f"+experiment={preset}", *overrides], return_hydra_config=True)
    params = {str(k): tuple(v.strip() for v in str(v).split(","))
              for k, v in (composed.hydra.sweeper.params or {}).items()}
    return validate(from_hydra(composed)), params  # from_hydra leaves out the hydra node


def preset_meta(preset: str) -> dict[str, Any]:
    """The preset's ``reproduce:`` node (analysis options of a reproduction, e.g. the data sizes
    of a CBS study); not a training setting, so records do not carry it."""
    from omegaconf import OmegaConf

    node = compose([f"+experiment={preset}"]).get("reproduce")
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


def load_preset(preset: str) -> Preset:
    cfg, params = read_preset(preset)
    return Preset(preset, cfg, params, preset_meta(preset))


def finding_options(finding: Finding, presets: Sequence[str]) -> dict[str, Any]:
    """The finding's verdict and figure options, read from ``presets`` (its arms)."""
    return finding.options([load_preset(p) for p in presets])


def scaled_budget(budget: str, scale: float) -> str:
    """'60epochs' x 0.5 -> '30epochs'; steps/examples stay integers >= 1."""
    from bench.rules.plan import parse_budget

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


def _epoch_overrides(cfg: Config, scale: float) -> list[str]:
    """Smoke runs of a budget not in epochs: the epoch-valued schedule keys shrink with it (a
    warmup or a batch-size boundary would otherwise lie beyond the shortened run)."""
    from bench.rules.plan import parse_budget

    if scale == 1 or parse_budget(cfg.budget)[1] == "epochs":
        return []
    out = []
    for key, section in (("schedule", cfg.schedule), ("batch_schedule", cfg.batch_schedule)):
        if getattr(section, "warmup_epochs", 0):
            out.append(f"{key}.warmup_epochs={section.warmup_epochs * scale:g}")
    if getattr(cfg.schedule, "decay_epochs", None) and cfg.batch_schedule.name == "increase":
        out.append(f"schedule.decay_epochs={_list([e * scale for e in cfg.schedule.decay_epochs])}")
    return out


RECORDS = "{records}"  # in a branch job's init_from: the reproduction's records directory


def _branch_points(meta: dict[str, Any], parent: Config, scale: float) -> tuple[list[int], int, int]:
    """(checkpoint steps, tokens per parent step, Delta tokens) of a staged preset; a smoke run
    (``scale`` != 1) scales the steps onto the parent's scaled checkpoint cadence."""
    spec = meta["branch_from"]
    every = parent.checkpoint.every_steps
    if not every:
        raise ValueError(f"{spec['preset']} saves no checkpoints (checkpoint.every_steps) to branch from")
    scaled = _cadence(every, scale)
    steps = sorted({max(int(round(s * scale / scaled)) * scaled, scaled) for s in spec["steps"]}) \
        if scale != 1 else [int(s) for s in spec["steps"]]
    per_step = parent.batch_size * int(getattr(parent.dataset, "context", 1) or 1)
    return steps, per_step, max(int(round(int(spec["delta_tokens"]) * scale)), 1)


def _branch_jobs(preset: str, meta: dict[str, Any], sizes: Sequence[int], seed_list: tuple[int, ...],
                 budget_scale: float, prefix: str) -> list[JobSpec]:
    """A staged arm: from each checkpoint step s of the parent arm's job, one job per swept B
    trained for Delta tokens (budget = the parent's tokens at s + Delta: counters continue)."""
    spec = meta["branch_from"]
    parent, params = read_preset(spec["preset"])
    if len(params.get("batch_size", [parent.batch_size])) != 1:
        raise ValueError(f"{spec['preset']}: a branched-from arm trains one batch size")
    parent_job = (f"{spec['preset']}-" if prefix else "") + f"B{parent.batch_size}"
    steps, per_step, delta = _branch_points(meta, parent, budget_scale)
    jobs = []
    for s in steps:
        for b in sizes:
            budget = f"{s * per_step + delta}tokens"
            ov = [f"batch_size={b}", f"replicas.seeds={_list(seed_list)}", "progress=false",
                  f"init_from={RECORDS}/{parent_job}", f"init_from_step={s}",
                  f"init_from_optimizer={spec.get('init_from_optimizer', 'keep')}", f"budget={budget}"]
            jobs.append(JobSpec(f"{prefix}s{s}-B{b}", b, budget, tuple(ov), preset, parent_job))
    return jobs


def _preset_jobs(preset: str, name: str, seed_list: tuple[int, ...], budget_scale: float,
                 batch_sizes: Sequence[int] | None, prefix: str) -> tuple[Config, list[JobSpec], tuple[int, ...], tuple[str, ...]]:
    """(config, jobs, batch sizes, rules) of one offline preset: a job per swept B (and rule)."""
    cfg, params = read_preset(preset)
    sizes = tuple(int(b) for b in params.get("batch_size", [cfg.batch_size]))
    rules = tuple(params.get("scaling", [cfg.scaling.name]))
    if batch_sizes is not None:
        sizes = tuple(b for b in sizes if b in set(batch_sizes))
    meta = preset_meta(preset)
    if "branch_from" in meta:
        return cfg, _branch_jobs(preset, meta, sizes, seed_list, budget_scale, prefix), sizes, rules
    jobs = []
    for b in sizes:
        for rule in rules:
            budget = scaled_budget(cfg.budget, budget_scale)
            ov = [f"batch_size={b}", f"replicas.seeds={_list(seed_list)}", "progress=false"]
            if len(rules) > 1:
                ov.append(f"scaling={rule}")
            if budget_scale != 1:  # smoke runs: shorter budgets, denser evaluations
                ov += [f"budget={budget}",
                       f"eval.every_steps={_cadence(cfg.eval.cadence(b), budget_scale)}",
                       "eval.every_steps_at=null", *_epoch_overrides(cfg, budget_scale)]
                if cfg.metrics.every:
                    ov.append(f"metrics.every={_cadence(cfg.metrics.every, budget_scale)}")
                if cfg.checkpoint.every_steps:
                    ov.append(f"checkpoint.every_steps={_cadence(cfg.checkpoint.every_steps, budget_scale)}")
                if cfg.metrics.dense_every:
                    ov += [f"metrics.dense_every={_cadence(cfg.metrics.dense_every, budget_scale)}",
                           f"metrics.dense_until={int(round(cfg.metrics.dense_until * budget_scale))}"]
            name_b = prefix + f"B{b}" + (f"-{rule}" if len(rules) > 1 else "")
            jobs.append(JobSpec(name_b, b, budget, tuple(ov), preset))
    return cfg, jobs, sizes, rules


def offline_plan(name: str, *, seeds: int | None = None, budget_scale: float = 1.0,
                 batch_sizes: Sequence[int] | None = None) -> Plan:
    """The scaled-down reproduction of finding ``name``, read from its offline preset(s).

    ``seeds``: number of seeds (0 .. n-1; default: the preset's); ``batch_sizes``: a subset of
    the preset's swept batch sizes (smoke tests); ``budget_scale``: multiplies budgets and
    evaluation / measurement cadences (quick smoke runs; not the reproduction unless 1).
    A finding with arms runs every arm's sweep; its jobs are named ``<preset>-B<b>``.
    """
    spec = get(name)
    if not budget_scale > 0:
        raise ValueError(f"budget_scale={budget_scale} must be > 0")
    presets = spec.offline_presets
    cfg, params = read_preset(presets[0])
    seed_list = tuple(range(int(seeds))) if seeds is not None else tuple(cfg.replicas.seeds or (cfg.seed,))
    if not seed_list:
        raise ValueError(f"seeds={seeds} must be >= 1")
    lrs = tuple(cfg.replicas.lr or (cfg.optimizer.lr,))
    swept = sorted({int(b) for p in presets
                    for b in read_preset(p)[1].get("batch_size", [read_preset(p)[0].batch_size])})
    if batch_sizes is not None:
        unknown = sorted(set(batch_sizes) - set(swept))
        if unknown:
            allowed = swept if len(presets) > 1 else [int(b) for b in params.get("batch_size", [cfg.batch_size])]
            raise ValueError(f"batch sizes {unknown} are not in the {name} plan {allowed}")
    jobs: list[JobSpec] = []
    sizes: tuple[int, ...] = ()
    rules: tuple[str, ...] = ()
    for preset in presets:
        prefix = f"{preset}-" if len(presets) > 1 else ""
        _, preset_jobs, preset_sizes, preset_rules = _preset_jobs(
            preset, name, seed_list, budget_scale, batch_sizes, prefix)
        jobs += preset_jobs
        sizes = tuple(sorted(set(sizes) | set(preset_sizes)))
        rules = rules or preset_rules
    if len(presets) == 1:  # one preset: the sweep's order
        sizes = tuple(j.batch_size for j in jobs[::len(rules)])
    return Plan(name, presets[0], sizes, seed_list, lrs, rules, float(budget_scale), tuple(jobs),
                finding_options(spec, presets), presets)


def launchers() -> tuple[str, ...]:
    """``basic`` (Hydra's default, sequential, this machine) + the presets in conf/hydra/launcher."""
    return ("basic", *group_options("hydra/launcher"))


def paper_commands(name: str, *, launcher: str = "slurm_gpu", out: Path | str | None = None,
                   seeds: int | None = None, overrides: Sequence[str] = (),
                   python: str = "python") -> list[list[str]]:
    """The Hydra multirun command of every paper preset of finding ``name`` (the sweep is the
    preset's own ``hydra.sweeper.params``)."""
    spec = get(name)
    if launcher not in launchers():
        raise ValueError(f"unknown launcher {launcher!r}; choose from {', '.join(launchers())}")
    out = Path(out) if out is not None else Path("results") / f"{name}-paper"
    cmds = []
    for preset in spec.paper_presets:
        cmd = [python, "-m", "bench.train", "-m", f"+experiment={preset}", f"logger.finding={name}"]
        if launcher != "basic":
            cmd.append(f"hydra/launcher={launcher}")
        if seeds is not None:
            cmd.append(f"replicas.seeds={_list(tuple(range(int(seeds))))}")
        meta = preset_meta(preset)
        if "branch_from" not in meta:
            cmds.append([*cmd, f"hydra.sweep.dir={out / preset}", *overrides])
            continue
        # a staged arm: one sweep per checkpoint of the parent's (single) job, Hydra's subdir 0
        parent = meta["branch_from"]["preset"]
        steps, per_step, delta = _branch_points(meta, read_preset(parent)[0], 1.0)
        for s in steps:
            cmds.append([*cmd, f"init_from={out / parent / '0'}", f"init_from_step={s}",
                         f"init_from_optimizer={meta['branch_from'].get('init_from_optimizer', 'keep')}",
                         f"budget={s * per_step + delta}tokens", f"hydra.sweep.dir={out / preset / f's{s}'}",
                         *overrides])
    return cmds


__all__ = ["CONF_DIR", "RECORDS", "JobSpec", "Plan", "finding_options", "launchers", "offline_plan",
           "paper_commands", "preset_meta", "read_preset", "scaled_budget"]
