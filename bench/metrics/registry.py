"""What a curvature metric is: its ``metrics.*`` keys, its typed record keys, its measure function.

A :class:`Metric` is one registry entry (``bench.metrics.suite.METRICS`` lists them in
measurement order):

- ``keys``: a frozen dataclass of ``bench.schema.param`` fields, this metric's keys under
  ``metrics.`` (``MetricsConfig`` is the union of every metric's keys, so a key is declared
  once, typed and range-checked like every other);
- ``record``: the keys it writes into a measured history row, each with its type; ``{eps}`` in
  a key stands for each value of ``metrics.sharpness_eps`` (``expand``);
- ``measure(cfg, m)``: the values of those keys at one point of training, from the whole
  ``MetricsConfig`` ``cfg`` (keys may be shared: density runs ``lanczos_iters`` steps) and the
  :class:`Measurement` ``m``;
- ``enabled(cfg)``: whether it runs; ``cost(cfg, m)``: its work in HVP and gradient example
  passes, for the cost estimate printed before training.

Each metric draws its randomness from ``m.key(fold)`` with its own fold constants
(``folds``, unique across the registry), so each reproduces alone and adding one changes no
other metric's numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

PyTree = Any
Batch = dict[str, jax.Array]

# The record type of a float that may be non-finite (stored as None: records are strict JSON).
Float = float | None


class Cost(NamedTuple):
    """Work of one measurement: examples passed through an HVP, and through a gradient."""

    hvp_examples: float = 0.0
    grad_examples: float = 0.0

    def __add__(self, other: tuple) -> "Cost":  # type: ignore[override]
        return Cost(self.hvp_examples + other[0], self.grad_examples + other[1])


@dataclasses.dataclass
class Measurement:
    """One point of training a metric measures at (host-side orchestration, not traced).

    ``subset``: the fixed curvature subset; ``data``: all training data the probe holds;
    ``state``: per-metric state carried between measurements of this replica (metric name ->
    value; a metric reads its previous value and stores the new one). ``step``: the training
    step (None outside training: 0 for metrics that fold it into their keys).
    """

    loss_fn: Callable
    params: PyTree
    subset: Batch
    data: Batch
    root_key: jax.Array
    chunk_size: int | None
    rolled: bool | None = None
    step: int | None = None
    lr: float | None = None
    preconditioner: PyTree | None = None
    batch_size: int | None = None
    state: dict[str, Any] = dataclasses.field(default_factory=dict)
    # where in training this is, per unit ("steps", and "examples" / "tokens" when known)
    positions: Mapping[str, float] = dataclasses.field(default_factory=dict)
    # work computed once per measurement and read by several metrics (``once``)
    shared: dict[str, Any] = dataclasses.field(default_factory=dict)

    def once(self, name: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` at the first call with ``name`` in this measurement; its result after
        (e.g. the SLQ Lanczos runs that give both the density and the top eigenvalues)."""
        if name not in self.shared:
            self.shared[name] = compute()
        return self.shared[name]

    def key(self, fold: int) -> jax.Array:
        return jax.random.fold_in(self.root_key, fold)

    def position(self, unit: str) -> float:
        if unit == "steps":
            return float(self.step or 0)
        if unit not in self.positions:
            raise ValueError(f"the training position in {unit} is not known to this measurement "
                             f"(known: steps{''.join(', ' + u for u in self.positions)})")
        return float(self.positions[unit])

    @property
    def num_params(self) -> int:
        return sum(int(np.prod(np.shape(a))) for a in jax.tree.leaves(self.params))


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    keys: type
    record: Mapping[str, Any]
    measure: Callable[[Any, Measurement], dict[str, Any]]
    enabled: Callable[[Any], bool]
    cost: Callable[[Any, Measurement], Cost]
    folds: tuple[int, ...] = ()
    summary: tuple[str, ...] = ()  # record keys that belong in per-run summary tables


def expand(keys: Sequence[str], cfg: Any) -> list[str]:
    """Record keys with ``{eps}`` replaced by each ``cfg.sharpness_eps`` value's tag."""
    out = []
    for key in keys:
        out += [key.format(eps=eps_tag(float(e))) for e in cfg.sharpness_eps] if "{eps}" in key else [key]
    return out


def eps_tag(eps: float) -> str:
    """Shortest exact scientific form: 1e-3 -> '1e-03', 2.5e-4 -> '2.5e-04'."""
    for digits in range(8):
        tag = f"{eps:.{digits}e}"
        if float(tag) == eps:
            return tag
    return repr(eps)


def check_registry(metrics: Sequence[Metric]) -> None:
    """Names, fold constants, config keys and record keys each unique across the registry."""
    for what, items in (("name", [m.name for m in metrics]),
                        ("fold constant", [f for m in metrics for f in m.folds]),
                        ("config key", [f.name for m in metrics for f in dataclasses.fields(m.keys)]),
                        ("record key", [k for m in metrics for k in m.record])):
        dup = sorted({x for x in items if items.count(x) > 1})
        if dup:
            raise ValueError(f"curvature metrics: {what} {dup} declared twice")


def num(x: Any) -> float | None:
    """A host float, or None when not finite (keeps records valid JSON)."""
    x = float(x)
    return x if math.isfinite(x) else None


def nums(xs: Any) -> list[float | None]:
    return [num(x) for x in np.asarray(xs).reshape(-1)]
