"""Report sections of the language-model findings (``analysis.report`` dispatches here).

Each finding's arms are presets; the reproduction passes their roles (read from the presets'
``reproduce:`` node by ``bench.reproduce.plan.report_options``): marek ``halflife`` / ``beta2`` /
``sgd``; zhang_cbs ``data_sizes`` (tokens D) and the model arms; shallue_lm ``target_loss``;
batch_warmup ``small`` / ``large`` / ``ramps``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from analysis.critical_batch import cbs_cell, zhang_verdicts
from analysis.lm_verdicts import marek_verdicts, shallue_lm_verdicts, warmup_verdicts
from analysis.steps_to_result import Goal
from analysis.verdicts import Verdict

LM_FINDINGS = ("marek", "zhang_cbs", "shallue_lm", "batch_warmup")
TITLES = {
    "marek": "Marek et al. 2025: small batches (down to 1) with Adam's beta2 half-life fixed in tokens",
    "zhang_cbs": "Zhang et al. 2024: the critical batch size grows with data size, not model size",
    "shallue_lm": "Shallue et al. 2019 (LM1B transformer): steps-to-result regimes on a language model",
    "batch_warmup": "Merrill et al. 2025: batch-size warmup saves steps at equal loss",
}
SOURCES = {"marek": ("marek2025",), "zhang_cbs": ("zhang2024", "mccandlish2018", "kaplan2020"),
           "shallue_lm": ("shallue2019", "mccandlish2018"),
           "batch_warmup": ("merrill2025", "malladi2022")}
FIGURES = {"marek": ("marek_loss_vs_batch", "marek_loss_vs_tokens"),
           "zhang_cbs": ("zhang_steps_to_target",),
           "shallue_lm": ("steps_to_result", "lm_loss_vs_tokens"),
           "batch_warmup": ("warmup_loss_vs_steps",)}


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, float) and math.isinf(x):
        return "∞"
    return f"{x:.{digits}g}" if isinstance(x, (int, float)) else str(x)


# ------------------------------------------------------------------------- Zhang cells
def zhang_cells(runs: pd.DataFrame, history: pd.DataFrame, *, data_sizes: Sequence[float],
                overhead: float = 0.2) -> pd.DataFrame:
    """One row per (model arm, data size D): the target loss (the smallest batch size's seed-mean
    test loss at D tokens, best LR at D), the CBS with its seed range and grid bracket, and the
    McCandlish B_simple measured on the same runs (EMA, the smallest B's best-LR runs at the
    evaluation nearest D; median over seeds)."""
    rows = []
    if history.empty or "name" not in history:
        return pd.DataFrame(rows)
    for arm, h in history.groupby("name", sort=True):
        b0 = float(h["batch_size"].min())
        ref = h[h["batch_size"] == b0]
        n_params = runs.loc[runs["name"] == arm, "num_params"]
        for d in data_sizes:
            at = ref[ref["tokens"] == d]
            if at.empty:
                rows.append({"model": arm, "tokens": d, "cbs": math.nan, "reason": f"no evaluation at {d:g} tokens"})
                continue
            by_lr = at.groupby("base_lr")["test_loss"].mean()
            lr, target = float(by_lr.idxmin()), float(by_lr.min())
            cell = cbs_cell(h, Goal(target, "test_loss", higher_is_better=False), overhead)
            b_simple = math.nan
            if "noise_scale_simple_ema" in ref:
                ns = ref[(ref["base_lr"] == lr) & ref["noise_scale_simple_ema"].notna()]
                if len(ns):
                    near = ns.assign(_d=(ns["tokens"] - d).abs()).sort_values("_d")
                    b_simple = float(near.groupby("seed").head(1)["noise_scale_simple_ema"].median())
            rows.append({"model": arm, "num_params": float(n_params.iloc[0]) if len(n_params) else math.nan,
                         "tokens": d, "target_loss": target, "reference_batch": b0, "reference_lr": lr,
                         "cbs": cell["cbs"], "seed_min": cell.get("seed_min", math.nan),
                         "seed_max": cell.get("seed_max", math.nan),
                         "bracket_low": cell.get("bracket", (math.nan,))[0],
                         "bracket_high": cell.get("bracket", (math.nan, math.nan))[1],
                         "upper_bound_only": cell.get("upper_bound_only", False),
                         "b_simple": b_simple, "reason": cell.get("reason", "")})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- verdicts
def compute_lm_verdicts(finding: str, runs: pd.DataFrame, history: pd.DataFrame, *, k: float = 1.0,
                        tol: float = 0.2, **opts: Any) -> list[Verdict]:
    if finding == "marek":
        return marek_verdicts(runs, halflife=opts.get("halflife", ""), beta2=opts.get("beta2"),
                              sgd=opts.get("sgd"), accum=opts.get("accum"), k=k)
    if finding == "zhang_cbs":
        sizes = opts.get("data_sizes") or ()
        cells = zhang_cells(runs, history, data_sizes=sizes, overhead=opts.get("overhead", 0.2))
        if cells.empty or "cbs" not in cells:
            return [Verdict("zhang_cbs", "the critical batch size grows with data size", "inconclusive", "",
                            (), details="no data sizes given or no records")]
        seeds = tuple(sorted(int(x) for x in history["seed"].dropna().unique())) if "seed" in history else ()
        out = zhang_verdicts(cells, model_factor=opts.get("model_factor", 2.0), seeds=seeds)
        # the cells (targets, CBS with seed range and bracket, B_simple) under the first verdict;
        # its per-model ratios are in its numbers
        out[0].table = cells.drop(columns=[c for c in ("reason",) if c in cells and not cells[c].any()])
        return out
    if finding == "shallue_lm":
        target = opts.get("target_loss")
        if target is None:
            return [Verdict("shallue_lm", "steps-to-result regimes", "inconclusive", "", (),
                            details="no target test loss (target.test_loss of the preset)")]
        return shallue_lm_verdicts(history, runs, target_loss=target, tol=tol, k=k)
    if finding == "batch_warmup":
        return warmup_verdicts(runs, history, small=opts.get("small", ""), large=opts.get("large", ""),
                               ramps=opts.get("ramps", ()), k=k)
    raise ValueError(f"unknown language-model finding {finding!r}")


# ---------------------------------------------------------------------------- published
def published_extra(finding: str, bl: pd.DataFrame) -> list[str]:
    """Tables of published numbers beyond the claim / recipe lines."""
    if finding != "batch_warmup":
        return []
    r = bl[(bl["source"] == "merrill2025") & (bl["kind"] == "result")]
    if r.empty:
        return []
    tab = pd.DataFrame({"arm": r["setting_arm"], "metric": r["metric"], "stage": r.get("setting_stage"),
                        "value": r["value"], "units": r["units"], "confidence": r["confidence"]})
    lines = ["Merrill et al. Table 1 (OLMo 1B; confidence as marked):", "",
             "| arm | metric | stage | value | units | confidence |", "|---|---|---|---|---|---|"]
    lines += [f"| {a} | {m} | {s if isinstance(s, str) else '—'} | {v:g} | {u} | {c} |"
              for a, m, s, v, u, c in tab.itertuples(index=False)]
    return [*lines, ""]


def comparison_rows(finding: str, verdicts: list[Verdict]) -> list[dict[str, str]]:
    """Rows ``quantity, ours, published, source`` for the ours-beside-published table."""
    rows: list[dict[str, str]] = []
    by_claim = {v.claim: v.numbers for v in verdicts}

    def first(prefix: str) -> dict[str, Any]:
        return next((n for c, n in by_claim.items() if c.startswith(prefix) or prefix in c), {})

    if finding == "marek":
        n = first("at equal tokens")
        if n:
            rows.append({"quantity": "smallest B vs best larger B, final test loss (nats/token)",
                         "ours": f"B={_fmt(n['small_batch'])}: {_fmt(n['small_loss'])} vs B={_fmt(n['best_larger_batch'])}: "
                                 f"{_fmt(n['best_larger_loss'])} ({n['best_larger_arm']})",
                         "published": "B = 1 equal or better per FLOP (GPT-2 124M .. 1.3B)", "source": "marek2025 (claim)"})
        n = first("with beta2 fixed at")
        if n:
            rows.append({"quantity": "B = smallest: beta2 fixed 0.95 minus half-life rule (nats/token)",
                         "ours": _fmt(n["beta2_fixed_minus_halflife"]),
                         "published": "worse with beta2 fixed (GPT-2 B = 1)", "source": "marek2025 (claim)"})
            rows.append({"quantity": "best LR at the smallest B: half-life rule / beta2 fixed",
                         "ours": f"{_fmt(n['halflife_best_lr'])} / {_fmt(n['beta2_fixed_best_lr'])}",
                         "published": "2.4e-3 / 1.5e-4 (GPT-2 B = 1: 16x smaller with beta2 fixed)",
                         "source": "marek2025 (authors' run scripts)"})
        n = first("plain SGD")
        if n:
            rows.append({"quantity": "SGD minus Adam at the smallest B (nats/token)", "ours": _fmt(n["sgd_minus_adam"]),
                         "published": "SGD almost as fast as AdamW at small B; the gap shrinks with B",
                         "source": "marek2025 (claim)"})
    elif finding == "zhang_cbs":
        t = verdicts[0].table if verdicts and verdicts[0].table is not None else pd.DataFrame()
        for r in t.to_dict("records"):
            rows.append({"quantity": f"CBS, {r['model']}, D = {_fmt(r['tokens'])} tokens (target {_fmt(r.get('target_loss'))})",
                         "ours": f"{_fmt(r['cbs'], 3)} [seeds {_fmt(r.get('seed_min'), 3)}-{_fmt(r.get('seed_max'), 3)}]; "
                                 f"B_simple {_fmt(r.get('b_simple'), 3)}",
                         "published": "grows with D; ~constant in N (85M-1.2B, C4)", "source": "zhang2024 (claim)"})
    elif finding == "shallue_lm":
        n = verdicts[0].numbers if verdicts else {}
        rows.append({"quantity": "perfect scaling up to B", "ours": _fmt(n.get("perfect_scaling_up_to")),
                     "published": "perfect scaling, then diminishing returns, then maximal data parallelism "
                                  "(every workload, LM1B transformers included)", "source": "shallue2019 (claim)"})
        rows.append({"quantity": "B_crit (McCandlish fit)", "ours": _fmt(n.get("b_crit_fit")),
                     "published": "S = S_min (1 + B_crit / B)", "source": "mccandlish2018 (definition)"})
    elif finding == "batch_warmup":
        for v in verdicts:
            n = v.numbers
            if "steps_saved_equal_tokens" in n:
                rows.append({"quantity": f"{v.claim.split(':')[0]}: steps saved vs small control (equal tokens / equal loss)",
                             "ours": f"{n['steps_saved_equal_tokens']:.0%} / {_fmt(n['steps_saved_equal_loss'], 2)}; "
                                     f"loss {_fmt(n['ramp_loss'])} vs {_fmt(n['small_loss'])}",
                             "published": "43% fewer steps, slightly better loss (2.5433 vs 2.5486 after mid-training)",
                             "source": "merrill2025 (abstract; Table 1 recalled)"})
    return rows
