"""The contract of a finding: what one module under ``analysis/findings/`` declares and computes.

A finding is a published batch-size claim that the harness reproduces. Its module defines one
subclass of :class:`Finding` and an instance of it named ``FINDING``; the registry
(``analysis.findings``) finds it by that name, so adding a finding is one module (plus its
presets in ``conf/experiment/`` and a test). Everything generic (loading records, the plan read
from the presets, training, the report layout, publishing) calls only the methods below; no
code outside the finding's module asks which finding it is.

Declared (class attributes):

* ``name`` (the CLI name), ``title`` (the report's heading), ``sources`` (keys of
  ``analysis/baselines/published.yaml``: cited, their claims listed);
* ``offline`` / ``paper``: the arms of the scaled-down and of the paper-scale reproduction, each
  an :class:`Arm` (a preset of ``conf/experiment/`` and its ``role`` in the verdicts). An arm's
  records carry the preset's ``name``; its role is declared here only. The first offline arm is
  the plan's preset (its seeds, LRs and source line head the report);
* ``defaults``: verdict options that are not training settings (a tolerance);
* ``list_roles``: roles that several arms share (their record names form a list);
* ``one_paper_report``: at paper scale, one report over every arm's sweep (else one per preset).

Computed (methods; pure functions of the run and history tables of ``analysis.load`` unless
said otherwise):

* :meth:`options`: the analysis options from the arms' presets (roles -> record names, plus
  what a subclass reads from them: a target, the data sizes of a study);
* :meth:`verdicts`: the list of ``analysis.verdicts.Verdict``, one per claim, never raising on
  missing data (an "inconclusive" verdict says what is missing);
* :meth:`figures`: ``{figure name: builder}``; a builder returns a matplotlib Figure or raises
  ``analysis.plotting.NoData`` (the figure is skipped and the reason logged). The report links
  the figures written;
* :meth:`comparison`: our numbers beside the published ones (:class:`Comparison` rows, each
  naming the published.yaml entries it compares with, so the report can mark the rows whose
  published number is not confirmed as provisional);
* :meth:`published_tables`: markdown lines of published numbers beyond the claim lines;
* :meth:`after_training` / :meth:`footer`: outputs computed from the trained records before the
  analysis (may use the models; e.g. a parameter interpolation) and the report section on them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
from matplotlib.figure import Figure

from analysis.verdicts import Verdict

FigureBuilders = dict[str, Callable[[], Figure]]


@dataclass(frozen=True)
class Arm:
    """One preset of a finding and what it is in the verdicts (``""``: the only arm)."""
    preset: str
    role: str = ""


@dataclass(frozen=True)
class Preset:
    """A composed preset: its validated config (``bench.config.Config``), the values of its
    ``hydra.sweeper.params`` and its ``reproduce:`` node (analysis options, not training)."""
    name: str
    config: Any
    params: Mapping[str, list[str]] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Comparison:
    """A row of "ours beside published": ``entries`` are published.yaml ids (or id prefixes
    ending in ``/``) behind the published side."""
    quantity: str
    ours: str
    published: str
    source: str
    entries: tuple[str, ...] = ()


class Finding:
    """Base class of a finding (see the module docstring for the contract)."""

    name: ClassVar[str]
    title: ClassVar[str]
    sources: ClassVar[tuple[str, ...]]
    offline: ClassVar[tuple[Arm, ...]]
    paper: ClassVar[tuple[Arm, ...]]
    defaults: ClassVar[Mapping[str, Any]] = {}
    list_roles: ClassVar[tuple[str, ...]] = ()
    #: preset ``reproduce:`` keys passed on as options (e.g. the data sizes a preset states)
    meta_options: ClassVar[tuple[str, ...]] = ()
    one_paper_report: ClassVar[bool] = False

    def options(self, presets: Sequence[Preset]) -> dict[str, Any]:
        """Verdict and figure options: ``defaults``, then ``{role: the arm's record name}`` for
        the arms among ``presets`` (list roles collect a list), then the presets' ``meta_options``."""
        roles = {arm.preset: arm.role for arm in (*self.offline, *self.paper)}
        opts: dict[str, Any] = dict(self.defaults)
        for preset in presets:
            role = roles.get(preset.name, "")
            if role in self.list_roles:
                opts.setdefault(role, []).append(preset.config.name)
            elif role:
                opts[role] = preset.config.name
            opts.update({key: preset.meta[key] for key in self.meta_options if key in preset.meta})
        return opts

    def verdicts(self, runs: pd.DataFrame, history: pd.DataFrame, **options: Any) -> list[Verdict]:
        raise NotImplementedError

    def figures(self, runs: pd.DataFrame, history: pd.DataFrame, out: Path, **options: Any) -> FigureBuilders:
        """``out``: the reproduction's output directory (where extra inputs such as an
        interpolation curve were written)."""
        raise NotImplementedError

    def comparison(self, verdicts: list[Verdict], bl: pd.DataFrame) -> list[Comparison]:
        return []

    def published_tables(self, bl: pd.DataFrame) -> list[str]:
        return []

    def after_training(self, records: Path, out: Path, options: Mapping[str, Any], *,
                       batch_sizes: Sequence[int] | None = None, paper: bool = False) -> None:
        """Outputs from the trained records under ``records`` into ``out`` (default: none).
        ``batch_sizes``: the batch sizes trained (offline); ``paper``: a Hydra sweep directory."""

    def footer(self, out: Path) -> str:
        """A report section on the outputs of :meth:`after_training` found in ``out``."""
        return ""

    @property
    def offline_presets(self) -> tuple[str, ...]:
        return tuple(arm.preset for arm in self.offline)

    @property
    def paper_presets(self) -> tuple[str, ...]:
        return tuple(arm.preset for arm in self.paper)
