"""Which examples each step sees: per-replica epoch permutations, drop-last batches, and
batch-size schedules.

A :class:`BatchPlan` is pure, host-side and deterministic: given the replicas' seeds, the
training-set size N and a list of *stages* ``(start_epoch, batch_size)``, it says for every
step t

- ``batch_size(t)``: the batch size B_t of step t;
- ``examples(t)``: examples seen before step t (the cumulative sum of B over steps < t);
- ``epoch(t)`` = ``examples(t) / N`` (the x-axis of every record);
- ``indices(start, count)``: the int32 ``[count, K, B]`` example indices of those steps.

Data order: data epoch e of replica k is ``epoch_permutation(seed_k, e, N)``; batches are
consecutive slices of it. A batch never straddles two data epochs: when the rest of an epoch
is shorter than the next batch it is dropped (drop-last), so every step sees exactly B_t
distinct examples. Stage boundaries are in *data-epoch progress* ``e + position / N``: the
batch size of a step is that of the stage its first example falls in, so with integer stage
epochs B changes exactly at the start of that data epoch. With one stage the plan is the
classic constant-B loader (:class:`BatchIndexer`).

Schedules built from the config (:meth:`BatchPlan.from_config`, ``cfg.batch_schedule``):

- ``constant``: B = ``batch_size`` throughout.
- ``increase`` (Smith et al. 2018, "Don't decay the learning rate, increase the batch size"):
  at each ``schedule.decay_epochs`` boundary of the step LR schedule B is multiplied by
  ``factor`` (default 1 / ``schedule.decay_factor``) instead of dividing the LR. B never exceeds
  ``max_batch_size`` (default N rounded down to a valid size); where B cannot grow by the full
  factor, the LR takes the rest. The invariant is the SGD noise scale g ~ lr * N / B: at every
  boundary lr / B is multiplied by ``decay_factor`` exactly as the step schedule would, so the
  LR multiplier there is ``decay_factor * B_new / B_old`` (1 while B grows by the full factor).
- ``warmup``: B grows from ``start_batch_size`` by ``growth`` (e.g. doubling) in equal-length
  stages over ``warmup_epochs``, then stays at ``batch_size``; the LR schedule is unchanged.

:func:`plan_lr_shape` gives the LR multiplier per step for a plan (the schedule's epoch
boundaries mapped through the plan's own step count, with the ``increase`` adjustment).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from bench.config import Config

STREAM_DATA = 2  # the data-order stream folded from each replica's root seed


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The data order of one epoch of one replica: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, STREAM_DATA, epoch]).permutation(n).astype(np.int32)


@dataclass(frozen=True)
class Run:
    """``count`` consecutive steps of batch size ``batch_size`` inside one data epoch."""

    step: int          # first step of the run
    count: int
    batch_size: int
    epoch: int         # data epoch
    offset: int        # position of the run's first example in the epoch permutation
    examples: int      # examples seen before ``step``


def _fraction(x: float | int | Fraction) -> Fraction:
    return Fraction(x).limit_denominator(10**9)


class BatchPlan:
    """Per-step batch sizes and example indices for K replicas; see the module docstring.

    ``stages``: an int (constant B) or ``[(start_epoch, batch_size), ...]`` with the first
    start at 0 and increasing starts. ``lr_factors``: ``[(epoch, multiplier), ...]`` LR
    multipliers the schedule applies at those epochs instead of its own decay (``increase``).
    """

    def __init__(self, seeds: Sequence[int], num_train: int,
                 stages: int | Sequence[tuple[float, int]], *, total_steps: int | None = None,
                 lr_factors: Sequence[tuple[float, float]] = (), name: str = "constant"):
        if isinstance(stages, (int, np.integer)):
            stages = [(0, int(stages))]
        stages = [(_fraction(e), int(b)) for e, b in stages]
        if not stages or stages[0][0] != 0:
            raise ValueError(f"the first stage must start at epoch 0, got {stages}")
        if any(b2[0] <= b1[0] for b1, b2 in zip(stages, stages[1:])):
            raise ValueError(f"stage start epochs must increase, got {[float(e) for e, _ in stages]}")
        for _, b in stages:
            if not 1 <= b <= num_train:
                raise ValueError(f"batch size {b} must be in [1, {num_train}] (the training-set size)")
        self.seeds = [int(s) for s in seeds]
        self.n = int(num_train)
        self.stages = stages
        self.name = name
        self.lr_factors = [(float(e), float(f)) for e, f in lr_factors]
        # Every data epoch from `stable_epoch` on lies in the last stage: one run of N // B steps.
        self.stable_epoch = int(math.ceil(stages[-1][0]))
        self.tail_batch = stages[-1][1]
        self.tail_spe = self.n // self.tail_batch
        self.runs: list[Run] = []
        self._epoch_first_run: list[int] = []
        step = examples = 0
        for e in range(self.stable_epoch):
            self._epoch_first_run.append(len(self.runs))
            for offset, count, b in self._epoch_layout(e):
                self.runs.append(Run(step, count, b, e, offset, examples))
                step += count
                examples += count * b
        self._epoch_first_run.append(len(self.runs))
        self.explicit_steps, self.explicit_examples = step, examples
        self._run_steps = [r.step for r in self.runs]
        self._perm_cache: dict[int, np.ndarray] = {}
        self.total_steps = total_steps

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(cls, cfg: "Config", num_train: int, num_devices: int = 1,
                    seeds: Sequence[int] | None = None) -> "BatchPlan":
        """The plan of ``cfg.batch_schedule`` (validated config) for one job."""
        from bench.config import total_steps

        if seeds is None:
            seeds = cfg.replicas.seeds if cfg.replicas.seeds is not None else (cfg.seed,)
        bs = cfg.batch_schedule
        q = batch_quantum(cfg, num_devices)
        lr_factors: list[tuple[float, float]] = []
        if bs.name == "constant":
            plan = cls(seeds, num_train, cfg.batch_size, name="constant")
            plan.total_steps = total_steps(cfg, num_train)
            return plan
        if bs.name == "increase":
            stages, lr_factors = increase_stages(
                cfg.batch_size, cfg.schedule.decay_epochs, cfg.schedule.decay_factor,
                factor=bs.factor, cap=bs.max_batch_size or (num_train // q) * q, quantum=q)
        elif bs.name == "warmup":
            stages = warmup_stages(bs.start_batch_size, cfg.batch_size, bs.warmup_epochs,
                                   growth=bs.growth, quantum=q)
        else:
            raise ValueError(f"unknown batch schedule {bs.name!r}")
        plan = cls(seeds, num_train, stages, lr_factors=lr_factors, name=bs.name)
        plan.total_steps = plan.steps_for_budget(cfg.budget)
        return plan

    def _stage_start(self, i: int, epoch: int) -> int | None:
        """First position in data epoch ``epoch`` where stage i is active (None: never)."""
        if i >= len(self.stages):
            return None
        return max(math.ceil((self.stages[i][0] - epoch) * self.n), 0)

    def _epoch_layout(self, epoch: int) -> list[tuple[int, int, int]]:
        """[(offset, count, B)] of the batches of one data epoch, drop-last."""
        out, p, i = [], 0, 0
        while True:
            while (nxt := self._stage_start(i + 1, epoch)) is not None and nxt <= p:
                i += 1
            b = self.stages[i][1]
            if p + b > self.n:
                return out
            k = (self.n - p) // b
            if nxt is not None:
                k = min(k, -(-(nxt - p) // b))
            out.append((p, k, b))
            p += k * b

    # ------------------------------------------------------------------ queries

    def _locate(self, t: int) -> tuple[int, int, int, int, int]:
        """(data epoch, offset, B, examples before t, first step after t's run) of step t."""
        if t < 0:
            raise ValueError(f"step {t} < 0")
        if t < self.explicit_steps:
            r = self.runs[bisect.bisect_right(self._run_steps, t) - 1]
            j = t - r.step
            return r.epoch, r.offset + j * r.batch_size, r.batch_size, r.examples + j * r.batch_size, r.step + r.count
        u = t - self.explicit_steps
        e, pos = divmod(u, self.tail_spe)
        return (self.stable_epoch + e, pos * self.tail_batch, self.tail_batch,
                self.explicit_examples + u * self.tail_batch, t - pos + self.tail_spe)

    @property
    def constant(self) -> bool:
        return len(self.stages) == 1 and not self.lr_factors

    @property
    def b(self) -> int:
        """The batch size of step 0 (the constant B of a one-stage plan)."""
        return self.stages[0][1]

    @property
    def spe(self) -> int:
        """Steps in data epoch 0."""
        return self.steps_before_epoch(1)

    def batch_size(self, t: int) -> int:
        return self._locate(t)[2]

    def batch_sizes(self, start: int, stop: int) -> np.ndarray:
        """B of each step in [start, stop)."""
        out = np.empty(max(stop - start, 0), np.int64)
        for s, count, b in self.segments(start, stop):
            out[s - start:s - start + count] = b
        return out

    def examples(self, t: int) -> int:
        """Examples seen before step t (sum of B over steps 0..t-1); t may be total_steps."""
        return self._locate(t)[3]

    def epoch(self, t: int) -> float:
        """Epochs completed before step t, as examples(t) / N."""
        return self.examples(t) / self.n

    def data_epoch(self, t: int) -> tuple[int, int]:
        """(data epoch, offset in its permutation) of step t's first example."""
        e, off, *_ = self._locate(t)
        return e, off

    def next_change(self, t: int) -> int | None:
        """The first step after t with a different batch size (None: never)."""
        b = self.batch_size(t)
        if t >= self.explicit_steps:
            return None
        k = self._run_index(t)
        while k < len(self.runs) and self.runs[k].batch_size == b:
            k += 1
        if k < len(self.runs):
            return self.runs[k].step
        return None if b == self.tail_batch else self.explicit_steps

    def _run_index(self, t: int) -> int:
        return bisect.bisect_right(self._run_steps, t) - 1

    def segments(self, start: int, stop: int) -> list[tuple[int, int, int]]:
        """Steps [start, stop) as ``[(first step, count, B)]`` runs of constant B."""
        out, t = [], start
        while t < stop:
            b = self.batch_size(t)
            nxt = self.next_change(t)
            end = stop if nxt is None else min(nxt, stop)
            out.append((t, end - t, b))
            t = end
        return out

    def sizes(self, stop: int | None = None) -> list[int]:
        """Distinct batch sizes of steps [0, stop) (default: total_steps), in order of use."""
        stop = self.total_steps if stop is None else stop
        if stop is None:
            raise ValueError("sizes() needs stop when the plan has no total_steps")
        out: list[int] = []
        for _, _, b in self.segments(0, stop):
            if b not in out:
                out.append(b)
        return out

    def steps_before_epoch(self, e: int) -> int:
        """Steps taken before data epoch e starts."""
        if e < len(self._epoch_first_run):
            k = self._epoch_first_run[e]
            return self.runs[k].step if k < len(self.runs) else self.explicit_steps
        return self.explicit_steps + (e - self.stable_epoch) * self.tail_spe

    def steps_to_epoch(self, epochs: float) -> int:
        """Steps whose first example lies before data-epoch progress ``epochs`` (a step count)."""
        x = _fraction(epochs)
        e = math.floor(x)
        cut = math.ceil((x - e) * self.n)
        steps = self.steps_before_epoch(e)
        if cut == 0:
            return steps
        layout = ([(r.offset, r.count, r.batch_size) for r in self.runs[self._epoch_first_run[e]:
                                                                         self._epoch_first_run[e + 1]]]
                  if e < self.stable_epoch else [(0, self.tail_spe, self.tail_batch)])
        for offset, count, b in layout:
            steps += min(count, max(0, -(-(cut - offset) // b)))
        return steps

    def steps_for_budget(self, budget: str) -> int:
        """Training length of a ``'<n>steps' | '<n>epochs' | '<n>examples'`` budget (>= 1)."""
        from bench.config import parse_budget

        value, unit = parse_budget(budget)
        if unit == "steps":
            return int(value)
        if unit == "epochs":
            if self.constant:  # identical to bench.config.total_steps
                return max(int(round(value * self.spe)), 1)
            return max(self.steps_to_epoch(value), 1)
        # examples: the steps that fit entirely within the budget
        lo, hi = 0, 1
        while self.examples(hi) <= value:
            lo, hi = hi, hi * 2
        while hi - lo > 1:  # examples(lo) <= value < examples(hi)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.examples(mid) <= value else (lo, mid)
        return max(lo, 1)

    # ------------------------------------------------------------------ indices

    def _perms(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            if len(self._perm_cache) >= 2:
                self._perm_cache.pop(min(self._perm_cache))
            self._perm_cache[epoch] = np.stack([epoch_permutation(s, epoch, self.n) for s in self.seeds])
        return self._perm_cache[epoch]

    def indices(self, start: int, count: int) -> np.ndarray:
        """Example indices int32 ``[count, K, B]`` of steps [start, start + count) (one B)."""
        segs = self.segments(start, start + count)
        if len(segs) > 1:
            raise ValueError(f"steps [{start}, {start + count}) mix batch sizes {[s[2] for s in segs]};"
                             f" split the call with segments()")
        b = self.batch_size(start)
        out = np.empty((count, len(self.seeds), b), np.int32)
        for j in range(count):
            epoch, offset = self.data_epoch(start + j)
            out[j] = self._perms(epoch)[:, offset:offset + b]
        return out

    # ------------------------------------------------------------------ LR adjustment

    def lr_factor_steps(self) -> list[tuple[int, float]]:
        """[(step, LR multiplier)] for the ``increase`` schedule's boundaries."""
        return [(self.steps_to_epoch(e), f) for e, f in self.lr_factors]

    def describe(self) -> list[dict]:
        """Every boundary (B change or LR factor) as plain dicts, for records and logs."""
        factors = dict(self.lr_factors)
        sizes = {float(e): b for e, b in self.stages}
        b, out = self.b, []
        for e in sorted(set(sizes) | set(factors)):
            b = sizes.get(e, b)
            out.append({"epoch": e, "step": self.steps_to_epoch(e), "batch_size": b,
                        "lr_factor": factors.get(e, 1.0)})
        return out


class BatchIndexer(BatchPlan):
    """Global batch indices [n, K, B] for steps [start, start + n), constant B, drop-last."""

    def __init__(self, seeds: list[int], num_train: int, batch_size: int):
        super().__init__(seeds, num_train, int(batch_size))


# ---------------------------------------------------------------------------- schedules


def batch_quantum(cfg: "Config", num_devices: int = 1) -> int:
    """Every batch size must be a multiple of this: accumulate * lcm(devices, ghost batch)."""
    ghost = cfg.model.ghost_batch_size or 1
    return cfg.accumulate * math.lcm(num_devices, ghost)


def round_batch(b: float, quantum: int) -> int:
    """The nearest positive multiple of ``quantum``."""
    return max(int(round(b / quantum)) * quantum, quantum)


def increase_stages(batch_size: int, decay_epochs: Sequence[float], decay_factor: float, *,
                    factor: float | None, cap: int, quantum: int = 1
                    ) -> tuple[list[tuple[float, int]], list[tuple[float, float]]]:
    """Smith et al. 2018: (stages, LR factors) replacing a step LR schedule's decays.

    At each boundary B <- min(round(B * factor), cap) and the LR is multiplied by
    ``decay_factor * B_new / B_old``, so lr / B follows the step schedule exactly
    (LR unchanged while B grows by the full 1 / decay_factor).
    """
    factor = 1.0 / decay_factor if factor is None else float(factor)
    cap = (cap // quantum) * quantum
    stages: list[tuple[float, int]] = [(0, batch_size)]
    lr_factors: list[tuple[float, float]] = []
    b = batch_size
    for e in sorted(decay_epochs):
        new = min(round_batch(b * factor, quantum), max(cap, b))
        lr_factors.append((float(e), decay_factor * new / b))
        if new != b:
            stages.append((e, new))
        b = new
    return stages, lr_factors


def warmup_stages(start: int, batch_size: int, warmup_epochs: float, *, growth: float = 2.0,
                  quantum: int = 1) -> list[tuple[float, int]]:
    """B = start, start * growth, ... (< batch_size) in equal stages over ``warmup_epochs``."""
    sizes = []
    b = float(start)
    while round_batch(b, quantum) < batch_size:
        size = round_batch(b, quantum)
        if not sizes or size > sizes[-1]:
            sizes.append(size)
        b *= growth
    if not sizes:
        return [(0, batch_size)]
    length = _fraction(warmup_epochs) / len(sizes)
    return [(i * length, s) for i, s in enumerate(sizes)] + [(_fraction(warmup_epochs), batch_size)]


def plan_lr_shape(cfg: "Config", plan: BatchPlan, peak_over_base: float = 1.0) -> Callable:
    """LR multiplier of the peak LR per step, for a plan (see :func:`bench.optim.lr_shape`).

    A constant plan gets exactly ``bench.optim.lr_shape``. Otherwise the same warmup /
    constant / cosine / step shapes, with every epoch mapped to steps through the plan
    (steps per epoch change with B) and, for ``increase``, the step schedule's decays replaced
    by the plan's LR factors (1 while B absorbs the decay).
    """
    import optax

    from bench.optim import lr_shape

    if plan.constant:
        return lr_shape(cfg, plan.n, peak_over_base)
    s = cfg.schedule
    steps = plan.total_steps if plan.total_steps is not None else plan.steps_for_budget(cfg.budget)
    warm = (plan.steps_to_epoch(s.warmup_epochs) if s.warmup_epochs else int(s.warmup_steps))
    if s.name == "constant":
        after = optax.constant_schedule(1.0)
    elif s.name == "cosine":
        after = optax.cosine_decay_schedule(1.0, max(steps - warm, 1), alpha=s.final_fraction)
    elif s.name == "step":
        pairs = (plan.lr_factor_steps() if plan.lr_factors else
                 [(plan.steps_to_epoch(e), s.decay_factor) for e in s.decay_epochs])
        boundaries: dict[int, float] = {}
        for step, f in pairs:
            key = max(step - warm, 0)
            boundaries[key] = boundaries.get(key, 1.0) * f
        after = optax.piecewise_constant_schedule(1.0, boundaries)
    else:
        raise ValueError(f"unknown schedule {s.name!r}")
    if warm == 0:
        return after
    start = (1.0 / peak_over_base) if s.warmup_from == "base" else 0.0
    return optax.join_schedules([optax.linear_schedule(start, 1.0, warm), after], [warm])
