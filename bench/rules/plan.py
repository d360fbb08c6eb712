"""Which examples each step sees, and every step count of a run: the :class:`BatchPlan`.

The plan is the one owner of "which examples, how many, which epoch, how many steps". It is
pure, host-side and deterministic: given the replicas' seeds, the training-set size N, a list
of *stages* ``(start_epoch, batch_size)``, the budget and the warmup length, it says

- ``total_steps``, ``warmup_steps``, ``steps_per_epoch`` (steps in data epoch 0) and
  ``step_at_epoch(e)``, the step count at epoch e that LR-schedule boundaries use;
- for every step t: ``batch_size(t)``, ``examples(t)`` (examples seen before step t, the
  cumulative sum of B), ``epoch(t) = examples(t) / N`` (the x-axis of every record) and
  ``indices(start, count)``, the int32 ``[count, K, B]`` example indices of those steps.

Data order: data epoch e of replica k is ``epoch_permutation(seed_k, e, N)``; batches are
consecutive slices of it. A batch never straddles two data epochs: when the rest of an epoch
is shorter than the next batch it is dropped (drop-last), so every step sees exactly B_t
distinct examples. Stage boundaries are in *data-epoch progress* ``e + position / N``: the
batch size of a step is that of the stage its first example falls in, so with integer stage
epochs B changes exactly at the start of that data epoch.

Epochs to steps (``step_at_epoch``): with one batch size, ``round(e * steps_per_epoch)`` (the
classic convention); with stages, the steps whose first example lies before epoch progress e
(exact at stage boundaries, where the steps per epoch change). The two agree at whole epochs.

Stages come from ``batch_schedule`` (bench.rules.batch_schedules); ``lr_factors`` are LR
multipliers a batch schedule applies at epochs instead of the LR schedule's own decay
(Smith et al.'s ``increase``).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np

from bench.schema import ConfigError
from bench.rng import RngStream

BUDGET_UNITS = ("steps", "epochs", "examples", "tokens")


def parse_budget(budget: str) -> tuple[float, str]:
    """'3000steps' -> (3000.0, 'steps'); also '40epochs', '1000000examples' (big_vision style)."""
    text = str(budget).strip().replace("_", "")
    for unit in BUDGET_UNITS:
        if text.endswith(unit):
            try:
                value = float(text[: -len(unit)])
            except ValueError:
                break
            if value > 0 and math.isfinite(value) and (unit == "epochs" or value == int(value)):
                return value, unit
            break
    raise ConfigError(f"budget={budget!r} must be a positive number followed by a unit, like "
                      f"'3000steps', '40epochs', '1000000examples' or '20000000tokens'")


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The data order of one epoch of one replica: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, int(RngStream.DATA), epoch]).permutation(n).astype(np.int32)


@dataclass(frozen=True)
class StepBlock:
    """``count`` consecutive steps of batch size ``batch_size`` inside one data epoch."""

    step: int          # first step of the block
    count: int
    batch_size: int
    epoch: int         # data epoch
    offset: int        # position of the block's first example in the epoch permutation
    examples: int      # examples seen before ``step``


def _fraction(x: float | int | Fraction) -> Fraction:
    return Fraction(x).limit_denominator(10**9)


class BatchPlan:
    """Per-step batch sizes, example indices and step counts for K replicas (module docstring).

    ``stages``: an int (constant B) or ``[(start_epoch, batch_size), ...]`` with the first start
    at 0 and increasing starts. ``budget``: ``(value, unit)`` with unit in ``BUDGET_UNITS``
    (default: 1 epoch). ``warmup_epochs`` (if > 0) or ``warmup_steps``: the LR warmup length.
    ``lr_factors``: ``[(epoch, multiplier), ...]`` applied instead of the LR schedule's decays.
    """

    def __init__(self, seeds: Sequence[int], num_train: int,
                 stages: int | Sequence[tuple[float, int]], *,
                 budget: tuple[float, str] = (1.0, "epochs"), warmup_epochs: float = 0.0,
                 warmup_steps: int = 0, lr_factors: Sequence[tuple[float, float]] = (),
                 name: str = "constant", tokens_per_example: int | None = None):
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
        self.tokens_per_example = tokens_per_example  # T of language data (None: classifiers)
        self._layout_explicit_epochs()
        self._perm_cache: dict[int, np.ndarray] = {}
        self.total_steps = self.steps_for_budget(*budget)
        self.warmup_steps = self.step_at_epoch(warmup_epochs) if warmup_epochs else int(warmup_steps)

    def _layout_explicit_epochs(self) -> None:
        """Blocks of every data epoch before the last stage's; from ``stable_epoch`` on every
        epoch is one block of N // B steps of the last stage's B."""
        self.stable_epoch = int(math.ceil(self.stages[-1][0]))
        self.tail_batch = self.stages[-1][1]
        self.tail_steps_per_epoch = self.n // self.tail_batch
        self.blocks: list[StepBlock] = []
        self._epoch_first_block: list[int] = []
        step = examples = 0
        for e in range(self.stable_epoch):
            self._epoch_first_block.append(len(self.blocks))
            for offset, count, b in self._epoch_layout(e):
                self.blocks.append(StepBlock(step, count, b, e, offset, examples))
                step += count
                examples += count * b
        self._epoch_first_block.append(len(self.blocks))
        self.explicit_steps, self.explicit_examples = step, examples
        self._block_steps = [r.step for r in self.blocks]

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
            if nxt is not None:  # a stage starts later in this epoch: stop at its first step
                k = min(k, -(-(nxt - p) // b))
            out.append((p, k, b))
            p += k * b

    # ------------------------------------------------------------------ step counts

    @property
    def constant(self) -> bool:
        """One batch size and no batch-schedule LR factors."""
        return len(self.stages) == 1 and not self.lr_factors

    @property
    def first_batch_size(self) -> int:
        """The batch size of step 0 (the B of a constant plan)."""
        return self.stages[0][1]

    @property
    def steps_per_epoch(self) -> int:
        """Steps in data epoch 0 (N // B for a constant plan)."""
        return self.steps_before_epoch(1)

    def step_at_epoch(self, epochs: float) -> int:
        """The step count at ``epochs`` used by LR-schedule boundaries (module docstring)."""
        if self.constant:
            return int(round(epochs * self.steps_per_epoch))
        return self.steps_to_epoch(epochs)

    def steps_for_budget(self, value: float, unit: str) -> int:
        """Training length (>= 1) of a budget of ``value`` steps, epochs or examples."""
        if unit == "steps":
            return int(value)
        if unit == "epochs":
            return max(self.step_at_epoch(value), 1)
        if unit == "tokens":
            if self.tokens_per_example is None:
                raise ConfigError(f"a budget in tokens needs a language dataset (sequences of "
                                  f"tokens); use steps, epochs or examples")
            value, unit = value / self.tokens_per_example, "examples"
        if unit != "examples":
            raise ValueError(f"budget unit {unit!r} not in {BUDGET_UNITS}")
        lo, hi = 0, 1  # the steps that fit entirely within the budget: examples(lo) <= value
        while self.examples(hi) <= value:
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.examples(mid) <= value else (lo, mid)
        return max(lo, 1)

    def steps_before_epoch(self, e: int) -> int:
        """Steps taken before data epoch e starts."""
        if e < len(self._epoch_first_block):
            k = self._epoch_first_block[e]
            return self.blocks[k].step if k < len(self.blocks) else self.explicit_steps
        return self.explicit_steps + (e - self.stable_epoch) * self.tail_steps_per_epoch

    def steps_to_epoch(self, epochs: float) -> int:
        """Steps whose first example lies before data-epoch progress ``epochs``."""
        x = _fraction(epochs)
        e = math.floor(x)
        cut = math.ceil((x - e) * self.n)
        steps = self.steps_before_epoch(e)
        if cut == 0:
            return steps
        layout = ([(r.offset, r.count, r.batch_size) for r in
                   self.blocks[self._epoch_first_block[e]:self._epoch_first_block[e + 1]]]
                  if e < self.stable_epoch else [(0, self.tail_steps_per_epoch, self.tail_batch)])
        for offset, count, b in layout:
            steps += min(count, max(0, -(-(cut - offset) // b)))
        return steps

    # ------------------------------------------------------------------ per step

    def _locate(self, t: int) -> tuple[int, int, int, int, int]:
        """(data epoch, offset, B, examples before t, first step after t's block) of step t."""
        if t < 0:
            raise ValueError(f"step {t} < 0")
        if t < self.explicit_steps:
            r = self.blocks[bisect.bisect_right(self._block_steps, t) - 1]
            j = t - r.step
            return (r.epoch, r.offset + j * r.batch_size, r.batch_size,
                    r.examples + j * r.batch_size, r.step + r.count)
        u = t - self.explicit_steps
        e, pos = divmod(u, self.tail_steps_per_epoch)
        return (self.stable_epoch + e, pos * self.tail_batch, self.tail_batch,
                self.explicit_examples + u * self.tail_batch, t - pos + self.tail_steps_per_epoch)

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

    def tokens(self, t: int) -> int | None:
        """Tokens seen before step t (language data; None for classifiers)."""
        return None if self.tokens_per_example is None else self.examples(t) * self.tokens_per_example

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
        k = bisect.bisect_right(self._block_steps, t) - 1
        while k < len(self.blocks) and self.blocks[k].batch_size == b:
            k += 1
        if k < len(self.blocks):
            return self.blocks[k].step
        return None if b == self.tail_batch else self.explicit_steps

    def segments(self, start: int, stop: int) -> list[tuple[int, int, int]]:
        """Steps [start, stop) as ``[(first step, count, B)]`` stretches of one batch size."""
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
        out: list[int] = []
        for _, _, b in self.segments(0, stop):
            if b not in out:
                out.append(b)
        return out

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

    # ------------------------------------------------------------------ boundaries

    def lr_factor_steps(self) -> list[tuple[int, float]]:
        """[(step, LR multiplier)] of the batch schedule's LR factors."""
        return [(self.steps_to_epoch(e), f) for e, f in self.lr_factors]

    def describe(self) -> list[dict]:
        """Every boundary (B change or LR factor) as plain dicts, for records and logs."""
        factors = dict(self.lr_factors)
        sizes = {float(e): b for e, b in self.stages}
        b, out = self.first_batch_size, []
        for e in sorted(set(sizes) | set(factors)):
            b = sizes.get(e, b)
            out.append({"epoch": e, "step": self.steps_to_epoch(e), "batch_size": b,
                        "lr_factor": factors.get(e, 1.0)})
        return out
