"""Constructed records for every finding (no training): ``RECORDS[finding](root)`` writes a
results directory whose runs carry the finding's arm names (the presets' ``name``), so the
finding's verdicts, summary and comparison rows can be computed from them. The answers are
known by construction (see each writer); the golden capture of the findings
(tests/golden/findings) is computed from these directories.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from lm_record_factory import lm_record, lm_rows, write_lm
from record_factory import eval_rows, make_record, synthetic_sweep, write_records


def _diverged(b: int, seed: int, index: int) -> dict:
    rows = eval_rows([0, 50], batch_size=b, lr=0.1, test_final=0.2, train_final=0.2, tau=10)
    rec = make_record(batch_size=b, history=rows, seed=seed, status="diverged", replica_index=index)
    rec["error"] = "non-finite loss at step 50"
    return rec


def keskar(root: Path) -> None:
    """SB = 32 .. LB = 400 (the preset's ends): accuracy falls and every sharpness key grows."""
    synthetic_sweep(root, batch_sizes=(32, 64, 128, 400), rules=("none",), seeds=(0, 1, 2))
    write_records(root / "extra", [_diverged(400, 7, 9)])


def goyal(root: Path) -> None:
    """Three rules, B0 = 32 .. 32 x B0; the linear rule stays within 1 pp up to 4 x B0."""
    synthetic_sweep(root, batch_sizes=(32, 64, 128, 256, 512, 1024), accuracy_drop_per_doubling=0.004)


def shallue(root: Path) -> None:
    """McCandlish steps-to-target (B_noise = 256) to test accuracy 0.85, the preset's target."""
    synthetic_sweep(root, rules=("linear", "none"), target=0.85)


def _hover(lr: float, factor: float, steps=range(0, 3000, 50)) -> list[dict]:
    """Sharpness rises to ``factor`` x 2/lr by step 300, hovers while the loss falls, then declines."""
    rows = eval_rows(steps, batch_size=4000, lr=lr, test_final=.9, train_final=1.0, tau=300)
    for row in rows:
        t = row["step"]
        row["train_loss"] = 2.3 * math.exp(-t / 400)
        ratio = min(t / 300, 1.0) if t < 1000 else max(0.2, 1.0 - (t - 1000) / 500)
        row["hessian_top_eigenvalue"], row["two_over_lr"] = factor * ratio * 2 / lr, 2 / lr
    return rows


def _eos_records(arms: dict[str, dict[float, float]], adam: bool = False) -> list[dict]:
    """Full-batch runs, {arm name: {lr: sharpness factor}}, seeds 0 and 1 (seed 1: +2%)."""
    recs, i = [], 0
    for name, lrs in arms.items():
        for lr, factor in lrs.items():
            for seed in (0, 1):
                rows = _hover(lr, factor * (1 + 0.02 * seed))
                if adam:
                    for row in rows:
                        row["preconditioned_top_eigenvalue"] = row["hessian_top_eigenvalue"] / (2 / lr) * 38 / lr
                        row["preconditioned_stability_threshold"] = 38 / lr
                        row["hessian_top_eigenvalue"] = 3.0
                    rows[0].pop("preconditioned_top_eigenvalue")
                rec = make_record(batch_size=4000, history=rows, seed=seed, peak_lr=lr, base_lr=lr,
                                  num_train=4000, replica_index=i, optimizer="adam" if adam else "sgd")
                rec["config"]["name"] = name
                rec["run_id"] = f"{name}-lr{lr:g}-s{seed}-r{i}"   # arms share settings: name them apart
                recs.append(rec)
                i += 1
    return recs


def edge_of_stability(root: Path) -> None:
    """lr 0.1 hovers at 2/lr, 0.2 sits 40% above it, 0.02 never reaches it."""
    write_records(root, _eos_records({"eos_offline": {0.02: 0.5, 0.1: 1.0, 0.2: 1.4}}))


def edge_of_stability_cohen(root: Path) -> None:
    """Two arms judged alone: every run of one hovers, the other sits 30% above 2/lr."""
    write_records(root, _eos_records({"eos_offline_cohen": {0.05: 1.0, 0.1: 1.02},
                                      "eos_offline_relu": {0.05: 1.3}}))


def adaptive_edge_of_stability(root: Path) -> None:
    """Adam: the preconditioned sharpness hovers at 38/lr (lambda_max itself stays at 3)."""
    write_records(root, _eos_records({"aeos_offline": {0.001: 1.0, 0.002: 1.05}}, adam=True))


def _final_loss(value: float) -> Callable[[float, int], float]:
    return lambda tokens, step: 5.5 if step == 0 else value


def marek(root: Path) -> None:
    """Half-life arm best at lr 3e-3 with loss 2 + 0.1 log2(B) / 8; beta2 fixed 0.2 worse at B = 1
    (best LR 1e-3 there); SGD 0.02 worse at B = 1, 0.3 at B = 16; B = 16 accumulated 4 x 4 ends at
    2.06. Seeds differ by +-0.005."""
    hl, fx, sgd, acc = "marek_offline_halflife", "marek_offline_beta2", "marek_offline_sgd", "marek_offline_accum"
    recs = []
    for name, sizes in ((hl, (1, 4, 16, 64)), (fx, (1, 4, 16, 64)), (sgd, (1, 16)), (acc, (16,))):
        lrs = (0.1, 0.3) if name == sgd else (1e-3, 3e-3, 1e-2)
        for b in sizes:
            for lr in lrs:
                for seed in (0, 1, 2):
                    base = 2.0 + 0.1 * math.log2(b) / 8 + (seed - 1) * 0.005
                    if name == sgd:
                        loss = base + (0.02 if b == 1 else 0.3) + (0.0 if lr == 0.1 else 0.1)
                    elif name == acc:
                        loss = 2.06 + (seed - 1) * 0.005 + (0.0 if lr == 3e-3 else 0.1)
                    else:
                        off = {1e-3: 0.05, 3e-3: 0.0, 1e-2: 0.08 * (1 + math.log2(b))}[lr]
                        if name == fx and b == 1:
                            off = {1e-3: 0.0, 3e-3: 0.1, 1e-2: 0.3}[lr] + 0.2
                        loss = base + off
                    rec = lm_record(name=name, batch_size=b, base_lr=lr, seed=seed, index=seed,
                                    rows=lm_rows([0, 10], batch_size=b, lr=lr, loss=_final_loss(loss)))
                    rec["experiment"]["accumulate"] = 4 if name == acc else 1
                    recs.append(rec)
    write_lm(root, recs)


def zhang_cbs(root: Path) -> None:
    """Two models; tokens to any loss grow as (1 + B / 16) (CBS ~4.3 at every D); n2's loss falls
    10% faster. B_simple (EMA) grows with the tokens seen."""
    recs = []
    for name, params, speed in (("zhang_offline_n1", 3e4, 1.0), ("zhang_offline_n2", 1e5, 1.1)):
        for b in (1, 2, 4, 8):
            for lr in (1e-3, 3e-3):
                for seed in (0, 1):
                    scale = 20000.0 / speed * (1 + 0.01 * seed) * (1.0 if lr == 3e-3 else 1.3)
                    rows = lm_rows(range(0, 200000 // (32 * b) + 1, 64 // b), batch_size=b,
                                   loss=lambda t, s, b=b, sc=scale: 1.5 + 3.0 * math.exp(-t / (1 + b / 16) / sc))
                    for r in rows:
                        r["noise_scale_simple_ema"] = 2.0 + r["tokens"] / 65536
                    recs.append(lm_record(name=name, batch_size=b, base_lr=lr, seed=seed, index=seed,
                                          rows=rows, num_params=int(params)))
    write_lm(root, recs)


def shallue_lm(root: Path) -> None:
    """Steps to test loss 2.6 follow 50 (1 + 8 / B); final losses equal at every B."""
    recs = []
    for b in (1, 2, 4, 8, 16, 32, 64):
        for seed in (0, 1):
            s_t = 50.0 * (1 + 8.0 / b) * (1 + 0.01 * seed)
            steps = sorted({*range(0, int(2 * s_t), max(int(s_t) // 40, 1)), int(round(s_t))})
            recs.append(lm_record(name="shallue_lm_offline", batch_size=b, base_lr=0.1, seed=seed, index=seed,
                                  rows=lm_rows(steps, batch_size=b, loss=lambda t, s, st=s_t: 3.5 - 0.9 * min(s / st, 1.2))))
    write_lm(root, recs)


def batch_warmup(root: Path) -> None:
    """Small B = 16 (768 steps, loss 2.10), large B = 64 (2.30); the Merrill ramp ends at 2.105 in
    432 steps, the linear ramp at 2.2 in 400 steps (worse than the small control)."""
    arms = {"warmup_offline_small": (16, 768, 2.10), "warmup_offline_large": (64, 192, 2.30),
            "warmup_offline_merrill": (lambda s: 16 if s < 216 else 32, 432, 2.105),
            "warmup_offline_ramp": (lambda s: 16 if s < 200 else 48, 400, 2.2)}
    recs = []
    for name, (b, steps, final) in arms.items():
        for lr in (1e-3, 3e-3):
            for seed in (0, 1, 2):
                f = final + 0.004 * (seed - 1) + (0.0 if lr == 3e-3 else 0.05)
                rows = lm_rows(range(0, steps + 1, 16), batch_size=b, lr=lr,
                               loss=lambda t, s, f=f, n=steps: f + 1.5 * (1 - s / n))
                recs.append(lm_record(name=name, batch_size=b if isinstance(b, int) else 16, base_lr=lr,
                                      seed=seed, index=seed, rows=rows))
    write_lm(root, recs)


RECORDS: dict[str, Callable[[Path], None]] = {
    "keskar": keskar, "goyal": goyal, "shallue": shallue, "edge_of_stability": edge_of_stability,
    "edge_of_stability_cohen": edge_of_stability_cohen,
    "adaptive_edge_of_stability": adaptive_edge_of_stability, "marek": marek, "zhang_cbs": zhang_cbs,
    "shallue_lm": shallue_lm, "batch_warmup": batch_warmup}
