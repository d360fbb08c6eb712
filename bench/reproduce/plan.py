"""What a reproduction runs: the finding table and the plans read from the presets.

Every grid, seed list, budget and evaluation cadence lives in the finding's presets
(``conf/experiment/<preset>.yaml``: its keys and its ``hydra.sweeper.params``); a plan is
read from them, so ``python -m bench.train -m +experiment=<preset>`` and the reproduction run
the same jobs. What is not a training setting (which verdict tolerance, whether to draw the
interpolation curve) is in :data:`FINDINGS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from bench.config import Config, from_hydra, validate
from bench.hydra_conf import CONF_DIR, compose, group_options


LM_FINDINGS = ("marek", "zhang_cbs", "shallue_lm", "batch_warmup")


@dataclass(frozen=True)
class Finding:
    offline: str                          # the preset of the offline reproduction
    paper: tuple[str, ...]                # the paper-scale presets
    verdict: dict[str, Any] = field(default_factory=dict)  # analysis.report verdict options
    interpolation: bool = False           # Keskar Fig. 3: SB -> LB parameter interpolation
    arms: tuple[str, ...] = ()            # further offline presets compared with `offline` (one
                                          # sweep each; jobs are named <preset>-B<b>)

    @property
    def offline_presets(self) -> tuple[str, ...]:
        return (self.offline, *self.arms)


FINDINGS: dict[str, Finding] = {
    "keskar": Finding("keskar_offline", ("keskar_f1", "keskar_c1", "keskar_c2", "keskar_c3",
                                         "keskar_c4"), interpolation=True),
    "goyal": Finding("goyal_offline", ("goyal_linear",), {"tolerance": 0.01}),
    "shallue": Finding("shallue_offline", ("shallue_steps_to_result",)),
    "edge_of_stability": Finding("eos_offline", ("cohen_eos",), {"tol": 0.2}),
    # Cohen et al. 2021 in their own setup (fc-tanh, square loss) and Cohen et al. 2022 (Adam)
    "edge_of_stability_cohen": Finding("eos_offline_cohen", ("cohen_eos",), {"tol": 0.2}),
    "adaptive_edge_of_stability": Finding("aeos_offline", ("cohen_aeos",), {"tol": 0.2}),
    # language models (analysis.lm_*): every arm is a preset; records carry its name
    "marek": Finding("marek_offline_halflife", ("marek_gpt2_halflife", "marek_gpt2_beta2",
                                                "marek_gpt2_sgd"),
                     arms=("marek_offline_beta2", "marek_offline_sgd", "marek_offline_accum")),
    "zhang_cbs": Finding("zhang_offline_n1", ("zhang_cbs_151m", "zhang_cbs_604m"),
                         arms=("zhang_offline_n2",)),
    "shallue_lm": Finding("shallue_lm_offline", ("shallue_lm1b",)),
    "batch_warmup": Finding("warmup_offline_small", ("merrill_small", "merrill_large", "merrill_warmup"),
                            arms=("warmup_offline_large", "warmup_offline_merrill",
                                  "warmup_offline_ramp")),
}


@dataclass(frozen=True)
class JobSpec:
    """One bench.loop job: a batch size (and LR-scaling rule), all LRs x seeds as replicas."""
    name: str                       # records/<name>/
    batch_size: int
    budget: str
    overrides: tuple[str, ...]      # Hydra overrides after +experiment=<preset>
    preset: str = ""                # the job's preset ("": the plan's)


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
    report: dict[str, Any] = field(default_factory=dict)   # analysis.report.build_report options
    figures: dict[str, Any] = field(default_factory=dict)  # analysis.figures.make_figures options
    interpolation: tuple[int, int] | None = None           # (SB, LB) batch sizes (keskar)
    presets: tuple[str, ...] = ()                           # every offline preset (arms) of the plan


def finding(name: str) -> Finding:
    if name not in FINDINGS:
        raise ValueError(f"unknown finding {name!r}; choose from {', '.join(FINDINGS)}")
    return FINDINGS[name]


def read_preset(preset: str, overrides: Sequence[str] = ()) -> tuple[Config, dict[str, list[str]]]:
    """(the preset's config, {swept key: values of its hydra.sweeper.params})."""
    composed = compose([f"+experiment={preset}", *overrides], return_hydra_config=True)
    params = {str(k): [v.strip() for v in str(v).split(",")]
              for k, v in (composed.hydra.sweeper.params or {}).items()}
    return validate(from_hydra(composed)), params  # from_hydra leaves out the hydra node


LM_ROLES = {"marek": ("halflife", "beta2", "sgd", "accum"), "batch_warmup": ("small", "large", "ramp")}


def preset_meta(preset: str) -> dict[str, Any]:
    """The preset's ``reproduce:`` node (analysis options of a reproduction: an arm's role, the
    data sizes of a CBS study); not a training setting, so records do not carry it."""
    from omegaconf import OmegaConf

    node = compose([f"+experiment={preset}"]).get("reproduce")
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


def lm_options(name: str, presets: Sequence[str]) -> dict[str, Any]:
    """Arms and targets of a language-model finding, from its presets: each preset's ``name``
    is the arm label in the records and its ``reproduce.role`` says what it is."""
    opts: dict[str, Any] = {}
    for preset in presets:
        cfg, _ = read_preset(preset)
        meta = preset_meta(preset)
        role = meta.get("role")
        if name in LM_ROLES and role not in LM_ROLES[name]:
            raise ValueError(f"preset {preset}: reproduce.role={role!r}; {name} arms are {LM_ROLES[name]}")
        if role == "ramp":
            opts.setdefault("ramps", []).append(cfg.name)
        elif role:
            opts[role] = cfg.name
        for key in ("data_sizes", "overhead", "model_factor"):
            if key in meta:
                opts[key] = meta[key]
        if name == "shallue_lm":
            opts["target_loss"] = cfg.target.test_loss
    return opts


def report_options(preset: str, name: str, presets: Sequence[str] | None = None
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """analysis.report and analysis.figures options of a preset (or of a finding's arm presets),
    from the presets themselves."""
    cfg, params = read_preset(preset)
    report = dict(finding(name).verdict)
    figures: dict[str, Any] = {}
    if name in LM_FINDINGS:
        opts = lm_options(name, presets or finding(name).offline_presets)
        return {**report, **opts}, dict(opts)
    if name == "keskar" and "batch_size" in params:
        sizes = [int(b) for b in params["batch_size"]]
        report.update(sb=min(sizes), lb=max(sizes))   # SB and LB are the sweep's ends
    if name == "shallue":
        report["target_accuracy"] = figures["target_accuracy"] = cfg.target.test_accuracy
    return report, figures


def scaled_budget(budget: str, scale: float) -> str:
    """'60epochs' x 0.5 -> '30epochs'; steps/examples stay integers >= 1."""
    from bench.data.plan import parse_budget

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
    from bench.data.plan import parse_budget

    if scale == 1 or parse_budget(cfg.budget)[1] == "epochs":
        return []
    out = []
    for key, section in (("schedule", cfg.schedule), ("batch_schedule", cfg.batch_schedule)):
        if getattr(section, "warmup_epochs", 0):
            out.append(f"{key}.warmup_epochs={section.warmup_epochs * scale:g}")
    if getattr(cfg.schedule, "decay_epochs", None) and cfg.batch_schedule.name == "increase":
        out.append(f"schedule.decay_epochs={_list([e * scale for e in cfg.schedule.decay_epochs])}")
    return out


def _preset_jobs(preset: str, name: str, seed_list: tuple[int, ...], budget_scale: float,
                 batch_sizes: Sequence[int] | None, prefix: str) -> tuple[Config, list[JobSpec], tuple[int, ...], tuple[str, ...]]:
    """(config, jobs, batch sizes, rules) of one offline preset: a job per swept B (and rule)."""
    cfg, params = read_preset(preset)
    sizes = tuple(int(b) for b in params.get("batch_size", [cfg.batch_size]))
    rules = tuple(params.get("scaling", [cfg.scaling.name]))
    if batch_sizes is not None:
        sizes = tuple(b for b in sizes if b in set(batch_sizes))
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
    spec = finding(name)
    if not budget_scale > 0:
        raise ValueError(f"budget_scale={budget_scale} must be > 0")
    cfg, params = read_preset(spec.offline)
    seed_list = tuple(range(int(seeds))) if seeds is not None else tuple(cfg.replicas.seeds or (cfg.seed,))
    if not seed_list:
        raise ValueError(f"seeds={seeds} must be >= 1")
    lrs = tuple(cfg.replicas.lr or (cfg.optimizer.lr,))
    presets = spec.offline_presets
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
    report, figures = report_options(spec.offline, name)
    interpolation = (report["sb"], report["lb"]) if spec.interpolation else None
    return Plan(name, spec.offline, sizes, seed_list, lrs, rules, float(budget_scale), tuple(jobs),
                report, figures, interpolation, presets)


def launchers() -> tuple[str, ...]:
    """``basic`` (Hydra's default, sequential, this machine) + the presets in conf/hydra/launcher."""
    return ("basic", *group_options("hydra/launcher"))


def paper_commands(name: str, *, launcher: str = "slurm_gpu", out: Path | str | None = None,
                   seeds: int | None = None, overrides: Sequence[str] = (),
                   python: str = "python") -> list[list[str]]:
    """The Hydra multirun command of every paper preset of finding ``name`` (the sweep is the
    preset's own ``hydra.sweeper.params``)."""
    spec = finding(name)
    if launcher not in launchers():
        raise ValueError(f"unknown launcher {launcher!r}; choose from {', '.join(launchers())}")
    out = Path(out) if out is not None else Path("results") / f"{name}-paper"
    cmds = []
    for preset in spec.paper:
        cmd = [python, "-m", "bench.train", "-m", f"+experiment={preset}"]
        if launcher != "basic":
            cmd.append(f"hydra/launcher={launcher}")
        cmd.append(f"hydra.sweep.dir={out / preset}")
        if seeds is not None:
            cmd.append(f"replicas.seeds={_list(tuple(range(int(seeds))))}")
        cmds.append([*cmd, *overrides])
    return cmds


__all__ = ["CONF_DIR", "FINDINGS", "Finding", "JobSpec", "Plan", "launchers", "offline_plan",
           "paper_commands", "read_preset", "report_options", "scaled_budget"]
